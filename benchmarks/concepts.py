#!/usr/bin/env python
"""K concepts in one run (`train.py --concepts`) against K separate runs, and the cost of validation.

    python benchmarks/concepts.py --size small --resolution 128 --threads 1     # CPU, a few minutes

Both sides run ti.trainer.Trainer on the same random SD model and phantom images, the same steps per concept:
  together   one Trainer with K concepts: each step one batch per concept, one batched forward/backward
  separate   K Trainers of one concept each, run one after the other
Each side runs `--warmup` steps, then `--steps` timed steps, `--rounds` times in ABBA order; the fastest round
counts (other processes can only add time). ratio = together / sum(separate): below 1 is a gain.

Validation: the seconds of one validation (`--val-images` held-out images x `--val-timesteps` fixed timesteps,
no gradient) over the seconds of the `--val-every` training steps between two validations, at the defaults
(250 steps, 8 timesteps).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, random_model, write_json  # noqa: E402,F401


def trainer(sd, data: Path, work: Path, concepts: bool, val_images: int, args):
    from ti import concepts as plan
    from ti.data import cached_latents
    from ti.train_settings import TrainSettings
    from ti.trainer import Trainer

    settings = TrainSettings(data=data, output=work if concepts else work / "x.safetensors", concepts=concepts,
                             token=None if concepts else f"<{data.name}>", vectors=args.vectors, steps=10**9,
                             save_every=0, val_images=val_images, seed=0).check()
    found = plan.plan(settings, warn=lambda m: None)

    def encode(images):
        with torch.no_grad():
            return tuple(x.float() for x in sd.vae.encode(images))

    for c in found:
        c.cache = cached_latents(c.data, encode, "bench", work / "cache", args.resolution, paths=c.train_paths,
                                 progress=False)
        if c.val_paths:
            c.val_cache = cached_latents(c.data, encode, "bench", work / "cache", args.resolution,
                                         paths=c.val_paths, progress=False)
    return Trainer(sd, ["[name]"], settings, found, log=lambda *a: None)


def timed_steps(tr, warmup: int, steps: int) -> tuple:
    for _ in range(warmup):
        tr.train_step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        tr.train_step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="sd2")
    p.add_argument("--size", default="small", choices=("full", "small", "tiny"))
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--vectors", type=int, default=64)
    p.add_argument("--concepts", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--val-images", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "concepts.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import mini_ldm
    from ti.phantoms import write_phantoms

    sd = mini_ldm.load(random_model(args.family, args.size), device="cpu", dtype="fp32")
    work = Path(tempfile.mkdtemp(prefix="bench-concepts-"))
    root = work / "data"
    for k in range(args.concepts):
        write_phantoms(root / f"c{k}", count=args.val_images + 4, seed=k)
    together = trainer(sd, root, work / "together", True, 0, args)
    separate = [trainer(sd, root / f"c{k}", work / f"sep{k}", False, 0, args) for k in range(args.concepts)]
    runs = {"together": [], "separate": []}
    for r in range(args.rounds):
        order = ("together", "separate") if r % 2 == 0 else ("separate", "together")
        for side in order:
            if side == "together":
                runs[side].append(timed_steps(together, args.warmup, args.steps))
            else:
                times = [timed_steps(tr, args.warmup, args.steps) for tr in separate]
                runs[side].append(tuple(sum(t[i] for t in times) for i in range(2)))
    best = {side: min(v) for side, v in runs.items()}
    result = validation_cost(sd, root, work, args)
    report = {"benchmark": "concepts", **{k: v for k, v in vars(args).items() if k != "out"}, "device": "cpu",
              "seconds_together": best["together"][0], "seconds_separate": best["separate"][0],
              "ratio_together_over_separate": best["together"][0] / best["separate"][0],
              "ratio_cpu_time": best["together"][1] / best["separate"][1], "rounds_wall": runs,
              **result, "machine": machine(args.threads)}
    write_json(args.out, report)
    print({k: v for k, v in report.items() if k not in ("machine", "rounds_wall")})


def validation_cost(sd, root: Path, work: Path, args) -> dict:
    """One concept with --val-images held out: seconds of a validation over 250 steps' worth of training."""
    tr = trainer(sd, root / "c0", work / "val", False, args.val_images, args)
    step = min(timed_steps(tr, args.warmup, args.steps)[0] for _ in range(args.rounds)) / args.steps
    seconds = []
    for _ in range(args.rounds):
        tr.validated_step = -1
        start = time.perf_counter()
        tr.validate()
        seconds.append(time.perf_counter() - start)
    every = tr.settings.val_interval
    return {"val_images": args.val_images, "val_timesteps": tr.settings.val_timesteps, "val_every": every,
            "seconds_per_step": step, "seconds_per_validation": min(seconds),
            "validation_fraction": min(seconds) / (every * step)}


if __name__ == "__main__":
    main()
