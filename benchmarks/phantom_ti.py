#!/usr/bin/env python
"""Textual Inversion on the phantom model, the paper's Figure 5 question in miniature: how often do images drawn
with a learned token show the finding it was trained on, by the number of vectors and of training images?

    python benchmarks/phantom_ti.py                                   # the grid below, ~10 minutes on 1 core
    python benchmarks/phantom_ti.py --arms 1x100 16x100 --steps 300   # VECTORSxIMAGES arms of your choice

Each arm: train.py learns <effusion> (from the unrelated word "dog") on IMAGES phantoms that all show a left
pleural effusion (readers.chest_findings, other findings at their rates, captions unused), then --samples
images are drawn with "<effusion>" (seeds 0.., DPM++ 2M, 20 steps, CFG 3) and scored by readers.findings.
The same seeds drawn with "dog" alone give the rate without the learned vectors. Prints a Markdown table.
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mini_ldm  # noqa: E402
from mini_ldm import SampleSettings  # noqa: E402
from mini_ldm.demo import DEMO_MODEL  # noqa: E402
from mini_ldm.embeddings import read_embedding  # noqa: E402
from readers.findings import measure  # noqa: E402
from ti.phantoms import write_chest_phantoms  # noqa: E402

TOKEN = "<effusion>"


def left_effusion_rate(sd, prompt: str, samples: int, learned: dict) -> float:
    settings = SampleSettings(prompt=prompt, steps=20, cfg=3.0, scheduler="dpm++2m")
    images, _ = sd.sample_seeds(settings, list(range(samples)), learned=learned)
    return float(np.mean([measure(image).effusion_left for image in images]))


def train(data: Path, out: Path, vectors: int, args) -> float:
    """Runs train.py as a user would; returns its wall-clock seconds."""
    started = time.time()
    cmd = [sys.executable, "train.py", "--model", str(args.model), "--device", "cpu", "--data", str(data),
           "--token", TOKEN, "--init", "dog", "--vectors", str(vectors), "--steps", str(args.steps),
           "--lr", str(args.lr), "--batch", str(args.batch), "--save-every", "0", "--output", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"train.py failed:\n{done.stderr[-2000:]}")
    return time.time() - started


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEMO_MODEL)
    p.add_argument("--arms", nargs="+", default=["1x100", "4x100", "16x100", "4x10"], help="VECTORSxIMAGES")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--samples", type=int, default=32)
    args = p.parse_args()
    sd = mini_ldm.load(args.model, device="cpu", dtype="fp32")
    print(f"steps {args.steps}, lr {args.lr}, batch {args.batch}, {args.samples} samples per arm")
    print(f"\n'dog' alone (no learned vectors): left effusion in {left_effusion_rate(sd, 'dog', args.samples, {}):.0%}")
    print("\n| vectors | training images | left effusion with the token | train.py seconds |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            vectors, images = map(int, arm.split("x"))
            data = write_chest_phantoms(Path(tmp) / f"data-{images}", images, seed=5, effusion="left")
            out = Path(tmp) / f"{arm}.safetensors"
            seconds = train(data, out, vectors, args)
            rate = left_effusion_rate(sd, TOKEN, args.samples, {TOKEN: read_embedding(out).vectors})
            print(f"| {vectors} | {images} | {rate:.0%} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
