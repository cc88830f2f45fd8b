#!/usr/bin/env python
"""Generate images with a Stable Diffusion 1.x/2.x/XL checkpoint.

    python sample.py --prompt "a chest x-ray" --seed 1
    python sample.py --model weights/512-base-ema.safetensors --prompt "..." --n 4 --output outputs/
    python sample.py --prompt "<effusion>:0.5 AND <pneumonia>:0.5" --seed 1            # composed
    python sample.py --interpolate "a healthy chest x-ray" "<effusion>" --alphas 0,0.5,1 --seed 1
    python sample.py --prompt "<effusion>" --init-image xray.png --mask lung.png --strength 0.8
    python sample.py --prompt "<effusion>" --count 1000 --seed 1 --output effusion/              # a dataset
    python sample.py --prompt "<effusion>" --grid steps=10,20,40 --grid cfg=1,2,3 --seed 1 --output grid/  # X/Y plot
    torchrun --nproc-per-node 2 sample.py --prompts-file prompts.csv --seed 1 --output prostate/  # 2 GPUs
"""
import argparse
import re
import sys
import time
from pathlib import Path

from mini_ldm import cli, demo, xyz_grid
from mini_ldm.dataset.request import DatasetOptions, dataset_request
from mini_ldm.errors import UserError
from mini_ldm.images import grid
from mini_ldm.model_settings import ModelSettings
from mini_ldm.png import parameters_text, save_png
from mini_ldm.sample_settings import INTERPOLATE_MODES, SampleSettings
from mini_ldm.settings import add_flags, check_device_name, from_flags, options

# Everything above is torch-free, so a wrong flag or a missing file answers at once; torch (seconds to import,
# more on a busy machine) comes with the modules imported inside the functions that load and run the model.

DEFAULT_EMBEDDINGS = Path("embeddings")
DEFAULT_OUTPUT = Path("outputs")
DEFAULT_ALPHAS = "0,0.25,0.5,0.75,1"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Text-to-image with a Stable Diffusion 1.x/2.x/XL checkpoint. Defaults follow the paper "
                    "(de Wilde et al. 2024): Euler ancestral sampling at a low CFG scale.")
    add_flags(p, ModelSettings)
    add_flags(p, SampleSettings)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help="a .png file, or a folder where numbered PNGs are written (default: outputs/)")
    add_flags(p, DatasetOptions)
    p.add_argument("--no-grid", action="store_true", help="with --n > 1, do not also save the images as one grid PNG")
    p.add_argument("--compile", action="store_true",
                   help="compile the UNet with torch.compile (inductor): the first batch waits while it compiles "
                        "(minutes on a CPU, which needs a C++ compiler), the later ones run faster; for dataset jobs "
                        "and grids of many images (see docs/sample.md for measured speed-ups)")
    p.add_argument("--interpolate", nargs=2, metavar=("A", "B"), default=None,
                   help="draw a strip from A to B with one seed: prompts, or learned tokens with --interpolate-mode vectors")
    p.add_argument("--alphas", default=None,
                   help="with --interpolate: comma-separated blend factors, 0 = A, 1 = B (default: 0,0.25,0.5,0.75,1)")
    p.add_argument("--interpolate-mode", default=None, choices=INTERPOLATE_MODES,
                   help="prompt: draw \"A:1-a AND B:a\" (the paper's way, default); vectors: blend two learned "
                        "tokens' vectors (same vector count needed) inside --prompt, or alone")
    xyz_grid.add_flags(p)
    p.add_argument("--embeddings", type=Path, nargs="+", default=None,
                   help="Textual Inversion files or folders (ours, diffusers, AUTOMATIC1111 .pt, kohya); each token "
                        "is used where it stands as a word in the prompt (default: the embeddings/ folder if present; "
                        "files there that cannot be read are skipped with a warning)")
    p.add_argument("--no-embeddings", action="store_true", help="do not load the default embeddings/ folder")
    p.add_argument("--demo", action="store_true", help="check the install: the committed phantom model "
                   f"(with the embedding of `train.py --demo` if present), writing to {demo.DEMO_DIR}/")
    demo.add_sdxl_flag(p)
    return cli.parse_args(p, argv)


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


def warn(message: str) -> None:
    print(message, file=sys.stderr)


def register_embeddings(sd, paths, use_default_folder: bool = True):
    """Register every embedding in `paths` with the model. Without paths, the default embeddings/ folder:
    there a file that cannot be used is skipped with a warning, while a file named explicitly is an error."""
    from mini_ldm.embeddings import check_width, load_embeddings

    explicit = paths is not None
    if not explicit:
        paths = [DEFAULT_EMBEDDINGS] if use_default_folder and DEFAULT_EMBEDDINGS.is_dir() else []
    found = load_embeddings(paths, skip_unreadable=None if explicit else warn)
    for token, emb in list(found.items()):
        try:
            check_width(emb, sd.widths, sd.family)
        except UserError as e:
            if explicit:
                raise
            warn(f"warning: skipping {emb.source}: {e}")
            del found[token]
            continue
        if is_ordinary_word(sd.tokenizer, token):
            warn(f"warning: {emb.source}: its token {token!r} is an ordinary word, so every prompt with "
                 f"'{token}' uses these vectors; rename the file (e.g. <{token}>{emb.source.suffix}) to avoid it")
        sd.add_embedding(emb)
    if found:
        where = "" if explicit else f" (the default folder {DEFAULT_EMBEDDINGS}/; --no-embeddings skips it)"
        print("learned tokens: " + ", ".join(f"{t} ({e.num_vectors} vectors) from {e.source}" for t, e in found.items())
              + where)
    return found


def is_ordinary_word(tokenizer, token: str) -> bool:
    """A token made of letters that CLIP's vocabulary holds as one word ("chest"), unlike "<chest>"."""
    return re.fullmatch(r"[A-Za-z]+", token) is not None and len(tokenizer.encode(token)) == 1


def demo_defaults(args):
    """--demo: the phantom model (with --sdxl a tiny random SDXL), and the embedding `train.py --demo` left in
    demo-output/, if any."""
    if args.sdxl:
        print("demo: a tiny random SDXL; this checks the SDXL code paths, its images are noise")
    else:
        print("demo: the phantom model (weights/phantom-sd2.safetensors), 128 px synthetic chest radiographs; "
              "real images need a real checkpoint in weights/, see README")
    trained = demo.sdxl_path(demo.DEMO_EMBEDDING) if args.sdxl else demo.DEMO_EMBEDDING
    if args.embeddings is None:
        args.embeddings = [trained] if trained.is_file() else []
    if not args.prompt and args.interpolate is None and args.prompts_file is None:
        args.prompt = demo.DEMO_TOKEN if trained.is_file() else "chest radiograph, left pleural effusion"
    if args.output == DEFAULT_OUTPUT:
        args.output = demo.DEMO_DIR


def load_model(args, per_rank: bool = False):
    """The model, after every file the run reads is checked to exist (before torch is imported). per_rank: a
    dataset job's process takes the GPU of its rank under torchrun (dataset/ranks.py)."""
    cli.check_exist(("--model", args.model), ("--vae", args.vae), ("--embeddings", args.embeddings))
    from mini_ldm.loading import default_device, load

    device = args.device or default_device()
    if per_rank:
        from mini_ldm.dataset import ranks

        device = ranks.local_device(device)
    if args.compile:
        cli.check_compiler(device)
    model_path = demo.demo_model(args) if args.demo else args.model or cli.find_default_model()
    t0 = time.time()
    sd = load(model_path, device=device, dtype=args.dtype, prediction=args.prediction, vae=args.vae)
    print(f"loaded {model_path} ({sd.family}, {sd.prediction} prediction: {sd.checkpoint.prediction_reason}) "
          f"on {device} as {str(sd.dtype).removeprefix('torch.')} in {time.time() - t0:.1f}s")
    if args.compile:  # the same module, compiled on its first call (attributes reach the original's)
        import torch

        sd.unet = torch.compile(sd.unet)
    return sd


def write_images(images, settings, output: Path, no_grid: bool):
    paths = output_paths(output, settings.n, settings.seed)
    for i, (image, path) in enumerate(zip(images, paths)):
        batch = {"Batch size": settings.n, "Batch pos": i} if settings.n > 1 else {}
        save_png(image, path, parameters_text(settings, extra=batch))
        print(f"wrote {path}")
    if settings.n > 1 and not no_grid:
        path = sheet_path(output, paths[0], "grid")
        save_png(grid(images), path, parameters_text(settings, extra={"Batch size": settings.n}))
        print(f"wrote {path}")


def write_strip(images, settings: list, alphas: list, output: Path):
    paths = output_paths(output, len(images), settings[0].seed)
    for image, path, s in zip(images, paths, settings):
        save_png(image, path, parameters_text(s))
        print(f"wrote {path}")
    strip = sheet_path(output, paths[0], "strip")
    labels = [f"alpha {alpha:g}" for alpha in alphas]
    save_png(grid(images, cols=len(images), labels=labels), strip,
             parameters_text(settings[0], extra={"Alphas": ",".join(f"{alpha:g}" for alpha in alphas)}))
    print(f"wrote {strip}")


def make_dataset(args, settings):
    """--count / --prompts-file: a resumable dataset job (mini_ldm/dataset/job.py); under torchrun, one share of it."""
    if args.interpolate:
        raise UserError("--interpolate: not with --count/--prompts-file (a dataset job draws text-to-image)")
    options = from_flags(DatasetOptions, args)
    request = dataset_request(settings, args.output, options.count, options.prompts_file, options.batch,
                              options.overwrite)  # bad input fails before torch and the model load
    sd = load_model(args, per_rank=True)
    from mini_ldm.dataset.job import run_dataset

    register_embeddings(sd, args.embeddings, use_default_folder=not args.no_embeddings)
    report = run_dataset(sd, request)
    if report.interrupted:
        raise KeyboardInterrupt


def make_grid(args):
    """--grid: a settings grid (mini_ldm/xyz_grid.py); every cell is checked before the model loads."""
    plan = xyz_grid.plan_grid(args, {f.name: getattr(args, f.name) for f in options(SampleSettings)})
    cli.check_writable(args.output, "--output", is_file=False)
    sd = load_model(args)
    register_embeddings(sd, args.embeddings, use_default_folder=not args.no_embeddings)
    xyz_grid.draw_grid(sd, plan)


def refuse_unused_flags(args):
    """A flag that would be silently ignored is an error: the user meant something by it."""
    dataset = args.count is not None or args.prompts_file is not None
    for flag, value in (("--alphas", args.alphas), ("--interpolate-mode", args.interpolate_mode)):
        if value is not None and (args.interpolate is None or dataset):
            raise UserError(f"{flag}: only used with --interpolate A B")
    if args.no_grid and (dataset or args.interpolate or args.n == 1):
        raise UserError("--no-grid: only used with --n > 1 (a batch drawn from one seed, saved with a grid)")


def main(argv=None):
    args = parse_args(argv)
    check_device_name(args.device)
    demo.check_sdxl_flag(args)
    if args.demo:
        demo_defaults(args)
    refuse_unused_flags(args)
    if args.grid is not None or args.max_cells is not None:
        return make_grid(args)
    if args.count is not None or args.prompts_file is not None:
        return make_dataset(args, from_flags(SampleSettings, args))
    for flag, value in (("--batch", args.batch), ("--overwrite", args.overwrite or None)):
        if value is not None:
            raise UserError(f"{flag}: only for a dataset job (--count N or --prompts-file CSV); --n draws a batch")
    if not args.prompt and args.interpolate is None:
        raise UserError("--prompt is required (or --interpolate A B)")
    settings = from_flags(SampleSettings, args)  # checked when made: bad flags fail before a model is loaded
    alphas = parse_alphas(args.alphas or DEFAULT_ALPHAS) if args.interpolate else None
    cli.check_writable(args.output, "--output", is_file=args.output.suffix.lower() == ".png")
    sd = load_model(args)
    register_embeddings(sd, args.embeddings, use_default_folder=not args.no_embeddings)
    if args.interpolate:
        images, used = sd.interpolate(*args.interpolate, alphas, mode=args.interpolate_mode or "prompt",
                                      settings=settings)
        print(f"seed {used[0].seed}")
        write_strip(images, used, alphas, args.output)
    else:
        for flag, text in (("--prompt", settings.prompt), ("--negative-prompt", settings.negative_prompt)):
            sd.check_learned_words(text, flag)
        images, used = sd.sample(settings=settings)
        print(f"seed {used.seed}")
        write_images(images, used, args.output, args.no_grid)


MEMORY_HINT = "lower --height/--width (the model's native size is the default), --n or --batch, or use --dtype fp16"

if __name__ == "__main__":
    cli.run(main, memory_hint=MEMORY_HINT)
