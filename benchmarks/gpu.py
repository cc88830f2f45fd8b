#!/usr/bin/env python
"""The GPU benchmark: ours side by side with diffusers on one CUDA device, on the same random full-size
SD 2.0-base layout, at 512 px.

    python benchmarks/gpu.py --output benchmarks/results/gpu.json            # on a CUDA machine
    python benchmarks/gpu.py --device cpu --size tiny --resolution 64        # a smoke run (a test does this)

Measured, each with its peak memory (torch.cuda.max_memory_allocated, reset before each case):
  TI training step, batch 1 and 4:
    ours        fp32 / bf16 / fp16, each without and with --compile (ti.trainer.Trainer, as train.py runs it)
    diffusers   examples/textual_inversion's loop (benchmarks/ti_step.py DiffusersTI) at its defaults (fp32)
                and with --mixed_precision fp16 (VAE and UNet in fp16, autocast)
  Sampling, seconds per image at 30 Euler-a steps with CFG:
    ours        fp16 and bf16 (mini_ldm StableDiffusion.sample)
    diffusers   StableDiffusionPipeline in fp16 with its default SDPA attention
Ratios are diffusers' time over ours at equal precision (above 1: we are faster). On a CPU every case runs
in fp32 and without compile (the CPU smoke run checks the script, not the speed).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, random_model, write_json  # noqa: E402
from ti_step import DiffusersTI, OursTI, write_images  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT = "a frontal chest x-ray"


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def seconds_per_call(fn, device, warmup: int, repeats: int) -> float:
    """Median wall time of one call after `warmup` untimed calls (compilation, allocator, cudnn autotune)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ti_cases(args, on_gpu: bool) -> list:
    """(side, dtype name, compile) per TI case; on a CPU only the fp32 ones without compile."""
    ours = [("ours", d, c) for d in ("fp32", "bf16", "fp16") for c in (False, True)]
    theirs = [("diffusers", "fp32", False), ("diffusers", "fp16", False)]
    cases = ours + theirs
    if not on_gpu:
        cases = [c for c in cases if c[1] == "fp32" and not c[2]]
    return cases


def bench_ti(args, folder: Path, images: list, workdir: Path, on_gpu: bool) -> list:
    rows = []
    for batch in args.batches:
        for side, dtype, compile_ in ti_cases(args, on_gpu):
            reset_peak(args.device)
            if side == "ours":
                runner = OursTI(folder, images[0].parent, args.resolution, args.vectors, batch, 0,
                                workdir / f"ours-{dtype}-{compile_}-{batch}", "object", device=args.device,
                                dtype=dtype, compile=compile_)
            else:
                runner = DiffusersTI(folder, images, args.resolution, args.vectors, batch, 0, device=args.device,
                                     weight_dtype=DTYPES[dtype])
            warmup = args.warmup + (args.compile_warmup if compile_ else 0)
            seconds = seconds_per_call(runner.step, args.device, warmup, args.ti_steps)
            rows.append({"side": side, "dtype": dtype, "compile": compile_, "batch": batch,
                         "seconds_per_step": seconds, "peak_mib": peak_mib(args.device)})
            print(f"TI step  {side:9s} {dtype} compile={compile_!s:5s} batch {batch}: {seconds:.4f} s, "
                  f"peak {rows[-1]['peak_mib']} MiB", flush=True)
            del runner
    return rows


def bench_sampling(args, folder: Path, on_gpu: bool) -> list:
    import mini_ldm
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    rows, size = [], args.resolution
    for dtype in (("fp16", "bf16") if on_gpu else ("fp32",)):
        reset_peak(args.device)
        sd = mini_ldm.load(folder, device=args.device, dtype=dtype)
        fn = lambda: sd.sample(PROMPT, seed=1, steps=args.sample_steps, cfg=3.0, scheduler="euler_a",  # noqa: E731
                               height=size, width=size, progress=False)
        rows.append({"side": "ours", "dtype": dtype, "seconds_per_image": seconds_per_call(fn, args.device, 1,
                     args.sample_repeats), "peak_mib": peak_mib(args.device)})
        del sd
    dtype = "fp16" if on_gpu else "fp32"
    reset_peak(args.device)
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=DTYPES[dtype], safety_checker=None,
                                                   requires_safety_checker=False).to(args.device)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    fn = lambda: pipe(PROMPT, num_inference_steps=args.sample_steps, guidance_scale=3.0, height=size,  # noqa: E731
                      width=size, generator=torch.Generator("cpu").manual_seed(1))
    rows.append({"side": "diffusers", "dtype": dtype, "seconds_per_image": seconds_per_call(
        fn, args.device, 1, args.sample_repeats), "peak_mib": peak_mib(args.device)})
    for row in rows:
        print(f"sampling {row['side']:9s} {row['dtype']}: {row['seconds_per_image']:.3f} s/image, "
              f"peak {row['peak_mib']} MiB", flush=True)
    return rows


def ratios(ti: list, sampling: list) -> dict:
    """diffusers' seconds over ours at equal precision and batch (above 1: we are faster)."""
    def find(rows, key, **match):
        found = [r[key] for r in rows if all(r[k] == v for k, v in match.items())]
        return found[0] if found else None

    out = {}
    for batch in sorted({r["batch"] for r in ti}):
        for ours, theirs in (("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "fp16")):
            mine = find(ti, "seconds_per_step", side="ours", dtype=ours, compile=False, batch=batch)
            other = find(ti, "seconds_per_step", side="diffusers", dtype=theirs, batch=batch)
            if mine and other:
                out[f"ti_step_batch{batch}_{ours}_vs_diffusers_{theirs}"] = round(other / mine, 3)
    theirs = next((r for r in sampling if r["side"] == "diffusers"), None)
    for row in sampling:
        if row["side"] == "ours" and theirs:
            out[f"sampling_{row['dtype']}_vs_diffusers_{theirs['dtype']}"] = round(
                theirs["seconds_per_image"] / row["seconds_per_image"], 3)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:1, or cpu for a smoke run (default: cuda)")
    p.add_argument("--size", default="full", choices=("full", "small", "tiny"), help="model size (default: full)")
    p.add_argument("--resolution", type=int, default=512, help="pixels (default: 512)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4],
                   help="TI batch sizes, comma-separated (default: 1,4)")
    p.add_argument("--vectors", type=int, default=64, help="vectors of the learned token (default: 64)")
    p.add_argument("--warmup", type=int, default=3, help="untimed TI steps per case (default: 3)")
    p.add_argument("--compile-warmup", type=int, default=10, help="extra untimed steps with compile (default: 10)")
    p.add_argument("--ti-steps", type=int, default=20, help="timed TI steps per case (default: 20)")
    p.add_argument("--sample-steps", type=int, default=30, help="Euler-a steps per image (default: 30)")
    p.add_argument("--sample-repeats", type=int, default=3, help="timed images per case (default: 3)")
    p.add_argument("--model-cache", type=Path, default=None, help="where the random model is built and kept")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    on_gpu = torch.device(args.device).type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("error: --device cuda: this PyTorch build sees no CUDA GPU; use --device cpu for a smoke run")
    folder = random_model("sd2", args.size, cache_dir=args.model_cache)
    with tempfile.TemporaryDirectory() as tmp:
        images = write_images(Path(tmp) / "images", 4, args.resolution + 16, 0)
        ti = bench_ti(args, folder, images, Path(tmp), on_gpu)
    sampling = bench_sampling(args, folder, on_gpu)
    facts = machine(torch.get_num_threads())
    if on_gpu:
        facts["gpu"] = torch.cuda.get_device_name(args.device)
        facts["cuda"] = torch.version.cuda
    result = {"benchmark": "gpu", "device": args.device, "size": args.size, "resolution": args.resolution,
              "vectors": args.vectors, "machine": facts, "ti_step": ti, "sampling": sampling,
              "ratios": ratios(ti, sampling)}
    write_json(args.output, result)
    print(f"ratios (diffusers / ours): {result['ratios']}\nwrote {args.output}")


if __name__ == "__main__":
    main()
