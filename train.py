#!/usr/bin/env python
"""Learn a new prompt token from a folder of images (Textual Inversion), with the model frozen.

    python train.py --data chestxr/ --vectors 64 --init "chest x-ray"
    python sample.py --prompt "<chestxr>"          # picks up embeddings/ by default
"""
import argparse
import re
from pathlib import Path

import torch

import mini_ldm
from mini_ldm import cli
from mini_ldm.errors import UserError
from ti.data import DataError, cached_latents, find_images
from ti.templates import BUILTIN_TEMPLATES, TemplateError, load_templates
from ti.trainer import TrainConfig, Trainer, check_resumable, check_vectors

DEMO_DIR = Path("demo-output")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Textual Inversion: learn the vectors of a new prompt token from ~100 images; the Stable "
                    "Diffusion weights stay frozen and the result is a small .safetensors file. Defaults follow "
                    "the paper (de Wilde et al. 2024): 64 vectors, AdamW at lr 0.005, batch 1.")
    p.add_argument("--data", type=Path, help="folder of training images, searched recursively (png, jpg, jpeg, "
                   "bmp, tif/tiff, webp; 8- or 16-bit grayscale, RGB(A), palette; 16-bit images are scaled by their "
                   "own min/max; 2-D DICOM through its window, one image per frame, with requirements-medical.txt; "
                   "3-D volumes: run prepare.py first); a .txt beside an image is its caption for --template filewords")
    p.add_argument("--token", help="the new prompt word (default: <data-folder-name>)")
    p.add_argument("--vectors", type=int, default=64, help="vectors per token (default: 64, the paper's best)")
    p.add_argument("--init", default=None, help="initialise the vectors from this text's token embeddings "
                   "(vector i from token i*len/vectors); default: small random vectors")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint file or diffusers folder (default: the one checkpoint in weights/)")
    p.add_argument("--prediction", default="auto", choices=("auto", "epsilon", "v"),
                   help="what a single-file model predicts (default: auto, as in sample.py)")
    p.add_argument("--steps", type=int, default=10_000,
                   help="optimisation steps in total (default: 10000; the paper trained 50k-100k)")
    p.add_argument("--lr", type=float, default=0.005, help="AdamW learning rate (default: 0.005, the paper's)")
    p.add_argument("--batch", type=int, default=1, help="images per step (default: 1)")
    p.add_argument("--grad-accum", type=int, default=1, help="batches whose gradients add up to one step (default: 1)")
    p.add_argument("--resolution", type=int, default=None, help="training size in pixels (default: the model's "
                   "native size); the shorter side is resized to it, then cropped square")
    p.add_argument("--crop", default="center", choices=("center", "random"),
                   help="square crop (default: center; random picks one crop per image, fixed by --seed)")
    p.add_argument("--flip", action="store_true", help="also train on horizontal mirrors (off by default: "
                   "laterality matters in chest X-rays)")
    p.add_argument("--template", default="name", help="prompt templates: " + ", ".join(BUILTIN_TEMPLATES) +
                   " (default: name, the token alone), or a file of lines with [name] and [filewords]")
    p.add_argument("--seed", type=int, default=0, help="seed for every random draw of the run (default: 0)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="model precision (default: bf16 on a CUDA GPU that has it, else fp32); the vectors and "
                        "AdamW state stay fp32; fp16 uses loss scaling")
    p.add_argument("--compile", action="store_true", help="compile the UNet with torch.compile (CUDA; the first "
                   "steps are slow while it compiles)")
    p.add_argument("--save-every", type=int, default=500, help="also save <token>-<step>.safetensors every N "
                   "steps (default: 500; 0: only at the end)")
    p.add_argument("--preview-every", type=int, default=0, help="every N steps, draw a 4-image preview grid of "
                   "the token with a fixed seed, beside the output (default: 0, off)")
    p.add_argument("--preview-prompt", default="[name]", help="prompt of the preview (default: [name])")
    p.add_argument("--output", type=Path, default=None,
                   help="the embedding file (default: embeddings/<token>.safetensors); a loss CSV goes beside it")
    p.add_argument("--resume", nargs="?", const=True, default=None, type=Path, metavar="FILE",
                   help="continue an interrupted run from its last save (default file: --output), with its "
                        "step count, optimiser and random state")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--demo", action="store_true", help="check the install: a tiny random model and synthetic "
                   "phantom images, a few steps, in about a minute on a CPU (writes demo-output/)")
    return p.parse_args(argv)


def default_precision(device: str) -> str:
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def file_name(token: str) -> str:
    """A token as a file name on every OS: '<chest xr>' -> 'chest_xr'."""
    return re.sub(r"[<>:\"/\\|?*\s]+", "_", token).strip("_.") or "embedding"


def model_stamp(path) -> str:
    """What identifies the VAE weights for the latent cache key: file names, sizes and modification times
    (not os.stat() as a whole: its access time changes on reads, which would miss the cache for nothing)."""
    if path is None:
        return "demo"
    path = Path(path).resolve()
    files = sorted((path / "vae").glob("diffusion_pytorch_model.*")) if path.is_dir() else [path]
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files or [path])


def main(argv=None):
    args = parse_args(argv)
    device = args.device or mini_ldm.loading.default_device()
    precision = args.precision or default_precision(device)
    # Checks that need no model come first: a typo should not cost loading gigabytes and encoding every image.
    for flag, value in (("--steps", args.steps), ("--batch", args.batch), ("--grad-accum", args.grad_accum)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    if not args.lr > 0:  # AdamW refuses <= 0 (with a traceback); nan fails this test too
        raise UserError(f"--lr {args.lr}: must be a positive number, e.g. 0.005")
    check_vectors(args.vectors)
    try:
        templates = load_templates(args.template)
    except TemplateError as e:
        raise UserError(f"--template: {e}") from None
    if args.token is not None and (not args.token or any(c.isspace() for c in args.token)):
        raise UserError(f"--token {args.token!r}: must be one word, without spaces (e.g. <chest-xray>)")
    if args.demo:
        from mini_ldm.demo import tiny_model
        from ti.phantoms import write_phantoms
        sd, model_name = tiny_model(device), "tiny random demo model"
        args.data = args.data or write_phantoms(DEMO_DIR / "phantoms")
        args.token = args.token or "<phantom>"
        args.vectors, args.steps, args.lr = min(args.vectors, 4), min(args.steps, 60), 0.02
        args.output = args.output or DEMO_DIR / f"{file_name(args.token)}.safetensors"
        args.preview_every, args.save_every, preview_steps = args.steps, 0, 8
        print("demo: a tiny random model and synthetic phantoms; this checks the install, it does not learn "
              "anything useful (real runs need a real checkpoint in weights/, see README)")
    elif args.data is None:
        raise UserError("--data: give the folder of training images (or --demo to check the install)")
    try:
        find_images(args.data, warn=lambda message: None)  # no images: say so now (warnings come with the encoding)
    except DataError as e:
        raise UserError(str(e)) from None
    # the folder name is the default token; a prompt word cannot hold spaces, so "chest xr/" gives <chest_xr>
    token = args.token or "<" + re.sub(r"\s+", "_", args.data.resolve().name) + ">"
    output = args.output or Path("embeddings") / f"{file_name(token)}.safetensors"
    resume_from = None if args.resume is None else output if args.resume is True else args.resume
    if resume_from is not None:
        check_resumable(resume_from)
    if not args.demo:
        model_path = args.model or cli.find_default_model()
        sd = mini_ldm.load(model_path, device=device, dtype=precision, prediction=args.prediction)
        model_name, preview_steps = Path(model_path).name, 20
        print(f"loaded {model_path} ({sd.family}, {sd.prediction} prediction: {sd.checkpoint.prediction_reason}) "
              f"on {device} in {precision}")

    resolution = sd.native_size if args.resolution is None else args.resolution
    multiple = sd.vae.downscale
    if resolution < multiple or resolution % multiple:
        raise UserError(f"--resolution {resolution}: must be a positive multiple of {multiple}")

    def encode(images):  # CPU float32 in [-1, 1] -> the VAE's latent distribution, on the CPU
        with torch.no_grad():
            mean, logvar = sd.vae.encode(images.to(sd.device, sd.dtype))
        return mean.float().cpu(), logvar.float().cpu()

    model_id = f"{model_name}:{model_stamp(sd.checkpoint.path)}:{precision}"
    try:
        cache = cached_latents(args.data, encode, model_id, output.parent / ".latent-cache", resolution,
                               crop=args.crop, flip=args.flip, seed=args.seed)
    except DataError as e:
        raise UserError(str(e)) from None
    print(f"{len(cache)} training images{' (cached latents)' if cache.reused else ''}; token {token}, "
          f"{args.vectors} vectors, {args.steps} steps -> {output}")

    if args.compile:
        sd.unet = torch.compile(sd.unet)
    cfg = TrainConfig(token=token, output=output, vectors=args.vectors, init_text=args.init, steps=args.steps,
                      lr=args.lr, batch=args.batch, grad_accum=args.grad_accum, seed=args.seed, precision=precision,
                      save_every=args.save_every, preview_every=args.preview_every,
                      preview_prompt=args.preview_prompt, preview_steps=preview_steps, base_model=model_name)
    trainer = Trainer(sd, cache, templates, cfg)
    if resume_from is not None:
        trainer.resume(resume_from)
        print(f"resuming {resume_from} at step {trainer.step}")
    path = trainer.run()
    print(f"wrote {path} (step {trainer.step}); use it with: python sample.py --embeddings {path} --prompt \"{token}\"")


if __name__ == "__main__":
    cli.run(main)
