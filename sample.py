#!/usr/bin/env python
"""Generate images with a Stable Diffusion 1.x/2.x checkpoint.

    python sample.py --prompt "a chest x-ray" --seed 1
    python sample.py --model weights/512-base-ema.safetensors --prompt "..." --n 4 --output outputs/
"""
import argparse
import time
from pathlib import Path

import torch

import mini_ldm
from mini_ldm import cli, samplers
from mini_ldm.errors import UserError
from mini_ldm.png import parameters_text, save_png
from ti.embeddings import EmbeddingError, check_width, load_embeddings

DEFAULT_EMBEDDINGS = Path("embeddings")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Text-to-image with a Stable Diffusion 1.x/2.x checkpoint. Defaults follow the paper "
                    "(de Wilde et al. 2024): Euler ancestral sampling at a low CFG scale.")
    p.add_argument("--model", type=Path, default=None,
                   help="a .safetensors/.ckpt single file or a diffusers folder (default: the one checkpoint in weights/)")
    p.add_argument("--prompt", required=True, help="what to draw")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (the unconditional side of CFG; default: empty)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, always printed)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default: 30; the paper used 25-100)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default: 3; the paper used 2-3); 1 or less turns guidance off")
    p.add_argument("--scheduler", default="euler_a", choices=samplers.SCHEDULERS,
                   help="sampler (default: euler_a, Euler ancestral, as in the paper)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's native size)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's native size)")
    p.add_argument("--n", type=int, default=1, help="images to draw in one batch from the seed (default: 1)")
    p.add_argument("--output", type=Path, default=Path("outputs"),
                   help="a .png file, or a folder where numbered PNGs are written (default: outputs/)")
    p.add_argument("--prediction", default="auto", choices=("auto", "epsilon", "v"),
                   help="what a single-file model predicts; auto = epsilon unless the file name says v "
                        "(768-v, v-pred, SD2 768); diffusers folders say it themselves")
    p.add_argument("--embeddings", type=Path, nargs="+", default=None,
                   help="Textual Inversion files or folders (ours, diffusers, AUTOMATIC1111 .pt, kohya); each token "
                        "is used where it stands as a word in the prompt (default: the embeddings/ folder if present)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                   help="weights and activations precision (default: fp16 on CUDA, fp32 elsewhere)")
    return p.parse_args(argv)


def output_paths(output: Path, n: int, seed: int) -> list:
    """A .png path names the file (numbered when n > 1); anything else is a folder of numbered files."""
    if output.suffix.lower() == ".png":
        return [output] if n == 1 else [output.with_name(f"{output.stem}-{i}.png") for i in range(n)]
    output.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[:5]) for p in output.glob("*.png") if p.name[:5].isdigit()]
    start = max(taken, default=-1) + 1
    return [output / f"{start + i:05d}-{seed}.png" for i in range(n)]


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


def main(argv=None):
    args = parse_args(argv)
    model_path = args.model or cli.find_default_model()
    device = args.device or mini_ldm.loading.default_device()
    t0 = time.time()
    sd = mini_ldm.load(model_path, device=device, dtype=args.dtype, prediction=args.prediction)
    print(f"loaded {model_path} ({sd.family}, {sd.prediction} prediction: {sd.checkpoint.prediction_reason}) "
          f"on {device} as {str(sd.dtype).removeprefix('torch.')} in {time.time() - t0:.1f}s")
    load_learned_tokens(sd, args.embeddings)
    images, settings = sd.sample(args.prompt, args.negative_prompt, seed=args.seed, steps=args.steps, cfg=args.cfg,
                                 scheduler=args.scheduler, height=args.height, width=args.width, n=args.n)
    print(f"seed {settings.seed}")
    for i, (image, path) in enumerate(zip(images, output_paths(args.output, args.n, settings.seed))):
        extra = {"Batch size": args.n, "Batch pos": i} if args.n > 1 else {}
        extra["Prediction"] = sd.prediction
        save_png(image, path, parameters_text(settings, Path(model_path).stem, extra))
        print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
