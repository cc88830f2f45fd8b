#!/usr/bin/env python
"""Generate images with a Stable Diffusion 1.x/2.x checkpoint.

    python sample.py --prompt "a chest x-ray" --seed 1
    python sample.py --model weights/512-base-ema.safetensors --prompt "..." --n 4 --output outputs/
    python sample.py --prompt "<effusion>:0.5 AND <pneumonia>:0.5" --seed 1            # composed
    python sample.py --interpolate "a healthy chest x-ray" "<effusion>" --alphas 0,0.5,1 --seed 1
    python sample.py --prompt "<effusion>" --init-image xray.png --mask lung.png --strength 0.8
"""
import argparse
import time
from pathlib import Path


import mini_ldm
from mini_ldm import cli, samplers
from mini_ldm.errors import UserError
from mini_ldm.images import grid
from mini_ldm.pipeline import INTERPOLATE_MODES
from mini_ldm.png import parameters_text, save_png
from ti.embeddings import EmbeddingError, check_width, load_embeddings

DEFAULT_EMBEDDINGS = Path("embeddings")
DEFAULT_OUTPUT = Path("outputs")
DEMO_DIR = Path("demo-output")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Text-to-image with a Stable Diffusion 1.x/2.x checkpoint. Defaults follow the paper "
                    "(de Wilde et al. 2024): Euler ancestral sampling at a low CFG scale.")
    p.add_argument("--model", type=Path, default=None,
                   help="a .safetensors/.ckpt single file or a diffusers folder (default: the one checkpoint in weights/)")
    p.add_argument("--prompt", default=None,
                   help="what to draw (required unless --interpolate); \"A:0.7 AND B:0.3\" composes prompts, "
                        "each its own guidance term; any length (past 75 tokens it takes several windows)")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (the unconditional side of CFG; default: empty)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, always printed)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default: 30; the paper used 25-100)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default: 3; the paper used 2-3); 1 or less turns guidance off")
    p.add_argument("--scheduler", default="euler_a", choices=samplers.SCHEDULERS,
                   help="sampler (default: euler_a, Euler ancestral, as in the paper)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's native size)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's native size)")
    p.add_argument("--n", type=int, default=1, help="images to draw in one batch from the seed (default: 1)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help="a .png file, or a folder where numbered PNGs are written (default: outputs/)")
    p.add_argument("--no-grid", action="store_true", help="with --n > 1, do not also save the images as one grid PNG")
    p.add_argument("--init-image", type=Path, default=None,
                   help="img2img: start from this image instead of noise (the output takes its size, rounded "
                        "down to a multiple the model accepts, unless --height/--width say otherwise)")
    p.add_argument("--strength", type=float, default=0.75,
                   help="with --init-image: the fraction of the schedule re-run, 0 (the image back) to 1 (all of it); "
                        "default 0.75")
    p.add_argument("--mask", type=Path, default=None,
                   help="inpainting, with --init-image: white = repaint, black = keep; resized to the image if needed")
    p.add_argument("--mask-blur", type=int, default=4,
                   help="with --mask: feather the mask edge over this many pixels (default: 4); beyond it the "
                        "init image's pixels are kept exactly")
    p.add_argument("--interpolate", nargs=2, metavar=("A", "B"), default=None,
                   help="draw a strip from A to B with one seed: prompts, or learned tokens with --interpolate-mode vectors")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1",
                   help="with --interpolate: comma-separated blend factors, 0 = A, 1 = B (default: 0,0.25,0.5,0.75,1)")
    p.add_argument("--interpolate-mode", default="prompt", choices=INTERPOLATE_MODES,
                   help="prompt: draw \"A:1-a AND B:a\" (the paper's way, default); vectors: blend two learned "
                        "tokens' vectors (same vector count needed) inside --prompt, or alone")
    p.add_argument("--prediction", default="auto", choices=("auto", "epsilon", "v"),
                   help="what a single-file model predicts; auto = epsilon unless the file name says v "
                        "(768-v, v-pred, SD2 768); diffusers folders say it themselves")
    p.add_argument("--embeddings", type=Path, nargs="+", default=None,
                   help="Textual Inversion files or folders (ours, diffusers, AUTOMATIC1111 .pt, kohya); each token "
                        "is used where it stands as a word in the prompt (default: the embeddings/ folder if present)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                   help="weights and activations precision (default: fp16 on CUDA, fp32 elsewhere)")
    p.add_argument("--demo", action="store_true", help="check the install: a tiny random model made on the spot "
                   "(with the embedding of `train.py --demo` if present), writing to demo-output/")
    return p.parse_args(argv)


def output_paths(output: Path, n: int, seed: int) -> list:
    """A .png path names the file (numbered when n > 1); anything else is a folder of numbered files."""
    if output.suffix.lower() == ".png":
        return [output] if n == 1 else [output.with_name(f"{output.stem}-{i}.png") for i in range(n)]
    output.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[:5]) for p in output.glob("*.png") if p.name[:5].isdigit()]
    start = max(taken, default=-1) + 1
    return [output / f"{start + i:05d}-{seed}.png" for i in range(n)]


def sheet_path(output: Path, first: Path, kind: str) -> Path:
    """Where a grid or strip goes: name-grid.png beside name.png, or grid-00012-seed.png in a folder
    (named after the batch's first image; not starting with digits, so numbering ignores it)."""
    if output.suffix.lower() == ".png":
        return output.with_name(f"{output.stem}-{kind}.png")
    return first.with_name(f"{kind}-{first.name}")


def parse_alphas(text: str) -> list:
    try:
        alphas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--alphas {text}: give comma-separated numbers, e.g. 0,0.25,0.5,0.75,1") from None
    if not alphas:
        raise UserError(f"--alphas {text}: give at least one number")
    return alphas


def load_learned_tokens(sd, paths):
    """Register every embedding found in `paths` (default: ./embeddings/ if it exists) with the model."""
    if paths is None:
        paths = [DEFAULT_EMBEDDINGS] if DEFAULT_EMBEDDINGS.is_dir() else []
    try:
        found = load_embeddings(paths)
        for emb in found.values():
            check_width(emb, sd.width, sd.family)
    except EmbeddingError as e:
        raise UserError(str(e)) from None
    for token, emb in found.items():
        sd.add_learned_token(token, emb.vectors)
    if found:
        print("learned tokens: " + ", ".join(f"{t} ({e.num_vectors} vectors)" for t, e in found.items()))


def demo_defaults(args):
    """--demo: the tiny random model, and the embedding `train.py --demo` left in demo-output/, if any."""
    print("demo: a tiny random model; this checks the install, its images are noise (real images need a real "
          "checkpoint in weights/, see README)")
    trained = DEMO_DIR / "phantom.safetensors"
    if args.embeddings is None:
        args.embeddings = [trained] if trained.is_file() else []
    if args.prompt is None and args.interpolate is None:
        args.prompt = "<phantom>, a chest x-ray" if trained.is_file() else "a chest x-ray"
    if args.output == DEFAULT_OUTPUT:
        args.output = DEMO_DIR


def main(argv=None):
    args = parse_args(argv)
    if args.demo:
        demo_defaults(args)
    if args.prompt is None and args.interpolate is None:
        raise UserError("--prompt is required (or --interpolate A B)")
    alphas = parse_alphas(args.alphas) if args.interpolate else None
    device = args.device or mini_ldm.loading.default_device()
    if args.demo:
        from mini_ldm.demo import tiny_model
        sd, model_path = tiny_model(mini_ldm.loading.check_device(device)), Path("tiny-random-demo-model")
    else:
        model_path = args.model or cli.find_default_model()
        t0 = time.time()
        sd = mini_ldm.load(model_path, device=device, dtype=args.dtype, prediction=args.prediction)
        print(f"loaded {model_path} ({sd.family}, {sd.prediction} prediction: {sd.checkpoint.prediction_reason}) "
              f"on {device} as {str(sd.dtype).removeprefix('torch.')} in {time.time() - t0:.1f}s")
    load_learned_tokens(sd, args.embeddings)
    options = dict(seed=args.seed, steps=args.steps, cfg=args.cfg, scheduler=args.scheduler, height=args.height,
                   width=args.width, init_image=args.init_image, strength=args.strength, mask=args.mask,
                   mask_blur=args.mask_blur)
    model_name = Path(model_path).stem
    common = {"Prediction": sd.prediction}
    if args.init_image is not None:
        common["Init image"] = args.init_image.name
    if args.mask is not None:
        common["Mask"] = args.mask.name

    if args.interpolate:
        a, b = args.interpolate
        images, settings = sd.interpolate(a, b, alphas, mode=args.interpolate_mode, prompt=args.prompt,
                                          negative_prompt=args.negative_prompt, n=args.n, **options)
        print(f"seed {settings[0].seed}")
        paths = output_paths(args.output, len(images), settings[0].seed)
        for image, path, s in zip(images, paths, settings):
            save_png(image, path, parameters_text(s, model_name, common))
            print(f"wrote {path}")
        labels = [f"alpha {alpha:g}" for alpha in alphas]
        strip = sheet_path(args.output, paths[0], "strip")
        save_png(grid(images, cols=len(images), labels=labels), strip,
                 parameters_text(settings[0], model_name, {**common, "Alphas": ",".join(f"{alpha:g}" for alpha in alphas)}))
        print(f"wrote {strip}")
        return

    images, settings = sd.sample(args.prompt, args.negative_prompt, n=args.n, **options)
    print(f"seed {settings.seed}")
    paths = output_paths(args.output, args.n, settings.seed)
    for i, (image, path) in enumerate(zip(images, paths)):
        extra = {"Batch size": args.n, "Batch pos": i} if args.n > 1 else {}
        save_png(image, path, parameters_text(settings, model_name, {**extra, **common}))
        print(f"wrote {path}")
    if args.n > 1 and not args.no_grid:
        path = sheet_path(args.output, paths[0], "grid")
        save_png(grid(images), path, parameters_text(settings, model_name, {"Batch size": args.n, **common}))
        print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
