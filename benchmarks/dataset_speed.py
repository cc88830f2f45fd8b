#!/usr/bin/env python
"""Images per minute of a dataset job: ours (`generate_dataset(sd, ...)`, PNGs + metadata.csv) vs diffusers'
StableDiffusionPipeline called with a list of generators (one per image, the same seeds), PNGs saved too.

    python benchmarks/dataset_speed.py --family sd1 --size small --resolution 256 --images 16 --steps 8

Both sides draw the same 16 images (seed base + i, Euler ancestral, CFG 3) from the same random weights, at
--batch 1 and 4; the images are compared (max level difference) so the benchmark also shows that a dataset
image is diffusers' image for its seed. Runs alternate between the sides (ours, diffusers, diffusers, ours
per batch size and round) so a drifting machine load hits both alike. The checkpoint hash is computed once
before timing (a job caches it), into a temporary XDG cache.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, max_level_difference, random_model, run_facts, use_threads, write_json  # noqa: E402
from mini_ldm.dataset import generate_dataset  # noqa: E402

PROMPT = "a frontal chest x-ray, PA view"


def run_ours(sd, out: Path, args, batch: int) -> tuple:
    t0 = time.perf_counter()
    report = generate_dataset(sd, out, prompt=PROMPT, count=args.images, seed=args.seed, batch=batch, steps=args.steps,
                                 cfg=3.0, scheduler="euler_a", height=args.resolution, width=args.resolution,
                                 progress=False, log=lambda *a: None)
    assert report.written == args.images
    return time.perf_counter() - t0, [out / f"{i:05d}.png" for i in range(args.images)]


def run_diffusers(pipe, out: Path, args, batch: int) -> tuple:
    from PIL.PngImagePlugin import PngInfo

    out.mkdir(parents=True)
    t0 = time.perf_counter()
    paths = []
    for first in range(0, args.images, batch):
        seeds = range(args.seed + first, args.seed + min(first + batch, args.images))
        images = pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=3.0, height=args.resolution,
                      width=args.resolution, num_images_per_prompt=len(seeds),
                      generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]).images
        for seed, image in zip(seeds, images):
            info = PngInfo()
            info.add_text("parameters", f"{PROMPT}\nSeed: {seed}")
            paths.append(out / f"{seed - args.seed:05d}.png")
            image.save(paths[-1], pnginfo=info)
    return time.perf_counter() - t0, paths


def alternate(sd, pipe, work: Path, args) -> tuple:
    """Seconds per run of each side and batch size, and the largest level difference between the sides' images."""
    times = {f"{side}_b{b}": [] for b in map(int, args.batches.split(",")) for side in ("ours", "diffusers")}
    diffs = {}
    for r in range(args.rounds):
        for b in map(int, args.batches.split(",")):
            order = ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")
            paths = {}
            for side in order:
                out = work / f"{side}-b{b}-r{r}"
                run = run_ours if side == "ours" else run_diffusers
                seconds, paths[side] = run(sd if side == "ours" else pipe, out, args, b)
                times[f"{side}_b{b}"].append(seconds)
                print(f"round {r} batch {b} {side}: {seconds:.1f} s ({60 * args.images / seconds:.2f} images/min)",
                      flush=True)
            diffs[f"b{b}"] = max(diffs.get(f"b{b}", 0), max_level_difference(paths["ours"], paths["diffusers"]))
    return times, diffs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="sd1", choices=("sd1", "sd2"))
    p.add_argument("--size", default="small", choices=("full", "small", "tiny"))
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-cache", type=Path, default=None)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "dataset_speed.json")
    args = p.parse_args(argv)

    import diffusers

    import mini_ldm

    threads = use_threads(args.threads)
    folder = random_model(args.family, args.size, 0, args.model_cache)
    work = Path(tempfile.mkdtemp(prefix="dataset-speed-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    sd = mini_ldm.load(folder, device="cpu", dtype="fp32")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generate_dataset(sd, work / "warmup", prompt=PROMPT, count=1, seed=0, steps=1, height=args.resolution,
                        width=args.resolution, progress=False, log=lambda *a: None)  # hash cached, kernels warm
    pipe(PROMPT, num_inference_steps=1, height=args.resolution, width=args.resolution)

    times, diffs = alternate(sd, pipe, work, args)
    summary = {}
    for b in map(int, args.batches.split(",")):
        ours, theirs = np.median(times[f"ours_b{b}"]), np.median(times[f"diffusers_b{b}"])
        summary[f"b{b}"] = {"ours_images_per_min": 60 * args.images / ours,
                            "diffusers_images_per_min": 60 * args.images / theirs,
                            "ratio_ours_over_diffusers": float(theirs / ours),
                            "max_level_difference": diffs[f"b{b}"]}
    print("\n| batch | ours images/min | diffusers images/min | ratio ours/diffusers | max level diff |")
    print("| --- | --- | --- | --- | --- |")
    for key, s in summary.items():
        print(f"| {key[1:]} | {s['ours_images_per_min']:.2f} | {s['diffusers_images_per_min']:.2f} | "
              f"{s['ratio_ours_over_diffusers']:.3f} | {s['max_level_difference']} |")
    write_json(args.output, {
        "benchmark": "dataset_speed", "family": args.family, "size": args.size, "resolution": args.resolution,
        "images": args.images, "steps": args.steps, "scheduler": "euler_a", "cfg": 3.0, "precision": "fp32",
        "device": "cpu", "rounds": args.rounds, "summary": summary, "seconds": times,
        **run_facts(__file__, threads, argv),
    })
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
