"""CPU time of a small classify.py run (issue 18), and of a few steps of the paper's recipe to extrapolate from.

    python benchmarks/classify_speed.py --threads 1                  # writes benchmarks/results/classify_speed.json
    python benchmarks/classify_speed.py --device cuda --recipe-steps 200 --output benchmarks/results/classify_cuda.json

Two runs on generated two-class images (classifier.toy_classes), ResNet-18 from scratch, one arm, one repeat:
  small:  --size 48 --batch 16 --steps 30, validation every 10 steps (20 val, 40 test images)
  recipe: --size 196 --batch 32 --augment heavy, a few steps, to give the CPU seconds per step of the default
Reported: process CPU seconds (all threads) and wall seconds per run, and per step.
"""
import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, write_json  # noqa: E402
from classifier.experiment import run_experiment  # noqa: E402
from classifier.settings import ClassifySettings  # noqa: E402
from classifier.toy_classes import write_toy_classes  # noqa: E402


def timed_run(settings: ClassifySettings) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    results = run_experiment(settings, log=lambda *a: None)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"size": settings.size, "batch": settings.batch, "steps": settings.steps, "augment": settings.augment,
            "val_every": settings.val_every, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "cpu_s_per_step": round(cpu / settings.steps, 3),
            "wall_s_per_step": round(wall / settings.steps, 3),  # on CUDA the one that counts (the scores sync)
            "auc": results["arms"]["real"]["auc"][0]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--recipe-steps", type=int, default=3, help="steps of the 196 px, batch 32 run (default: 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "classify_speed.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="classify-bench-"))
    for name, n, seed in (("train", 40, 1), ("val", 10, 2), ("test", 20, 3)):
        write_toy_classes(root / name, n, 0.5, seed=seed, size=64)
    base = ClassifySettings(train=root / "train", val=root / "val", test=root / "test", arms="real", repeats=1,
                            from_scratch=True, device=args.device, overwrite=True)
    small = timed_run(replace(base, size=48, batch=16, steps=30, val_every=10, augment="heavy", output=root / "small"))
    print(f"small run: {small}")
    recipe = timed_run(replace(base, size=196, batch=32, steps=args.recipe_steps, val_every=args.recipe_steps,
                               augment="heavy", output=root / "recipe"))
    per_step = recipe["cpu_s_per_step" if args.device == "cpu" else "wall_s_per_step"]
    print(f"recipe steps: {recipe}; 6,250 steps would take about {per_step * 6250 / 60:.0f} "
          f"{'CPU' if args.device == 'cpu' else 'wall'} minutes (reading, validation and test included per step)")
    write_json(args.output, {"machine": {**machine(torch.get_num_threads()), "load_average": os.getloadavg()},
                             "small": small, "recipe": recipe})


if __name__ == "__main__":
    main()
