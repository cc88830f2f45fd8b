#!/usr/bin/env python
"""Seconds per UNet denoising step at inference: ours (mini_ldm UNet) vs diffusers' UNet2DConditionModel,
on the same random weights: one step with classifier-free guidance (latent batch 2: unconditional + prompt),
under torch.no_grad, as each sampler step of StableDiffusionPipeline / sample.py runs it.

    python benchmarks/sample_speed.py --family sd2 --resolution 512      # full-size SD 2.0-base, CPU fp32

Timed like ti_step.py: warm-up, then k1- and k2-step runs alternating between the sides (ABBA), and the
marginal (T(k2) - T(k1)) / (k2 - k1). The outputs of the two UNets are compared once (max abs difference)
so the benchmark also shows that both compute the same thing.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, random_model, run_facts, use_threads, write_json  # noqa: E402
from ti_step import measure  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="sd2", choices=("sd1", "sd2"))
    p.add_argument("--size", default="full", choices=("full", "small", "tiny"))
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--k1", type=int, default=1)
    p.add_argument("--k2", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-cache", type=Path, default=None)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "sample_speed.json")
    args = p.parse_args(argv)

    import mini_ldm
    from diffusers import UNet2DConditionModel

    threads = use_threads(args.threads)
    folder = random_model(args.family, args.size, args.seed, args.model_cache)
    ours = mini_ldm.load(folder, device="cpu", dtype="fp32")
    theirs = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval().requires_grad_(False)
    ours_unet = ours.unet
    del ours  # keep only the UNet: the comparison is one denoising step

    g = torch.Generator().manual_seed(args.seed)
    h = args.resolution // 8
    x = torch.randn(2, 4, h, h, generator=g)
    context = torch.randn(2, 77, ours_unet.cfg.context_dim, generator=g)
    t = torch.tensor([500, 500])

    @torch.no_grad()
    def step_ours():
        return float(ours_unet(x, t, context)[0, 0, 0, 0])

    @torch.no_grad()
    def step_theirs():
        return float(theirs(x, t, context).sample[0, 0, 0, 0])

    with torch.no_grad():
        a, b = ours_unet(x, t, context), theirs(x, t, context).sample
        max_diff = (a - b).abs().max().item()
        scale = b.abs().max().item()
    print(f"max |ours - diffusers| = {max_diff:.2e} (output max {scale:.2e})")
    print(f"{args.family} {args.size} UNet, {args.resolution} px, CFG batch 2, fp32, {threads} threads")
    results = measure({"ours": step_ours, "diffusers": step_theirs}, args.warmup, args.k1, args.k2, args.rounds)
    ratio = results["ours"]["marginal_s_per_step"] / results["diffusers"]["marginal_s_per_step"]
    cpu_ratio = results["ours"]["marginal_cpu_s_per_step"] / results["diffusers"]["marginal_cpu_s_per_step"]
    print("\n| side      | wall s/step (marginal) | CPU s/step (marginal) |")
    print("| --------- | ---------------------- | --------------------- |")
    for n in ("diffusers", "ours"):
        print(f"| {n:9s} | {results[n]['marginal_s_per_step']:22.3f} | {results[n]['marginal_cpu_s_per_step']:21.3f} |")
    print(f"ratio ours/diffusers: {ratio:.3f} wall, {cpu_ratio:.3f} CPU time")
    write_json(args.output, {
        "benchmark": "sample_speed", "family": args.family, "size": args.size, "resolution": args.resolution,
        "cfg_batch": 2, "precision": "fp32", "device": "cpu", "warmup": args.warmup, "k1": args.k1, "k2": args.k2,
        "rounds": args.rounds, "max_abs_diff": max_diff, "ratio_ours_over_diffusers": ratio,
        "ratio_cpu_time": cpu_ratio, "results": results, **run_facts(__file__, threads, argv),
    })
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
