#!/usr/bin/env python
"""Does `sample.py --compile` pay for a dataset job? Images per minute of `generate_dataset` with the eager UNet
and with the UNet compiled by torch.compile (inductor), and what the compile costs up front.

    python benchmarks/compile_sampling.py --threads 2                     # the phantom model, 128 px, CPU
    python benchmarks/compile_sampling.py --model weights/512-base-ema.safetensors --device cuda --dtype fp16

Both sides draw the same images (seed base + i, Euler ancestral, CFG 3) with the same model in one process; the
compiled side's first job (one batch) is timed on its own: that is the compile, paid once per process. Then the
two sides alternate for --rounds jobs of --images each (eager, compiled, compiled, eager, ...) so a drifting
machine load hits both alike; the images are compared (max level difference of 255) so the benchmark also shows
that compiling changes no image beyond float round-off.
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
from common import ROOT, max_level_difference, run_facts, use_threads, write_json  # noqa: E402
from mini_ldm.dataset import generate_dataset  # noqa: E402
from mini_ldm.demo import DEMO_MODEL  # noqa: E402

PROMPT = "chest radiograph, left pleural effusion"


def job(sd, out: Path, args, count: int) -> tuple:
    """Seconds for one dataset job of `count` images, and their PNG paths."""
    start = time.perf_counter()
    report = generate_dataset(sd, out, prompt=PROMPT, count=count, seed=args.seed, batch=args.batch,
                              steps=args.steps, cfg=3.0, scheduler="euler_a", progress=False, log=lambda *a: None)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    assert report.written == count
    return time.perf_counter() - start, sorted(out.rglob("*.png"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEMO_MODEL, help="default: the committed phantom model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--images", type=int, default=16, help="images per timed job")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "compile_sampling.json")
    args = p.parse_args(argv)

    import mini_ldm

    threads = use_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="compile-sampling-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # the model hash: computed once, in the warm-up
    eager = mini_ldm.load(args.model, device=args.device, dtype=args.dtype)
    compiled = mini_ldm.load(args.model, device=args.device, dtype=args.dtype)
    compiled.unet = torch.compile(compiled.unet)  # what sample.py --compile does
    job(eager, work / "warmup", args, args.batch)
    compile_seconds, _ = job(compiled, work / "compile", args, args.batch)
    print(f"first batch of {args.batch} with compiling: {compile_seconds:.1f} s", flush=True)

    times, worst = {"eager": [], "compiled": []}, 0
    for r in range(args.rounds):
        paths = {}
        for side in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            seconds, paths[side] = job(eager if side == "eager" else compiled, work / f"{side}-{r}", args, args.images)
            times[side].append(seconds)
            print(f"round {r} {side}: {seconds:.1f} s ({60 * args.images / seconds:.1f} images/min)", flush=True)
        worst = max(worst, max_level_difference(paths["eager"], paths["compiled"]))
    eager_s, compiled_s = float(np.median(times["eager"])), float(np.median(times["compiled"]))
    per_image = {"eager": eager_s / args.images, "compiled": compiled_s / args.images}
    overhead = compile_seconds - args.batch * per_image["compiled"]  # the first batch's time beyond drawing it
    summary = {"eager_images_per_min": 60 * args.images / eager_s,
               "compiled_images_per_min": 60 * args.images / compiled_s,
               "speedup_compiled_over_eager": eager_s / compiled_s,
               "compile_seconds_first_batch": compile_seconds, "compile_overhead_seconds": overhead,
               "break_even_images": (overhead / (per_image["eager"] - per_image["compiled"])
                                     if compiled_s < eager_s else None),
               "max_level_difference": worst}
    print("\n| eager images/min | compiled images/min | speed-up | first batch (compiling) | break-even | max level diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    even = summary["break_even_images"]
    print(f"| {summary['eager_images_per_min']:.1f} | {summary['compiled_images_per_min']:.1f} | "
          f"{summary['speedup_compiled_over_eager']:.2f}x | {compile_seconds:.0f} s | "
          f"{'never' if even is None else f'{even:.0f} images'} | {worst} |")
    write_json(args.output, {
        "benchmark": "compile_sampling", "model": str(args.model), "device": args.device, "dtype": args.dtype,
        "images": args.images, "batch": args.batch, "steps": args.steps, "scheduler": "euler_a", "cfg": 3.0,
        "rounds": args.rounds, "summary": summary, "seconds": times, **run_facts(__file__, threads, argv),
    })
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
