#!/usr/bin/env python
"""Does the synthetic data help? Train the paper's ResNet-18 classifier on real, real + synthetic and
synthetic images, test each on the same real cases, with DeLong CIs and paired tests.

    python classify.py --train real/train --val real/val --test real/test --synthetic synthetic/
    python classify.py --demo          # a tiny from-scratch run on generated images (about a minute on a CPU)
"""
import argparse
from dataclasses import replace
from pathlib import Path

from mini_ldm import cli, demo
from mini_ldm.settings import add_flags, from_flags
from measure.classifier import run_experiment
from measure.classify_report import table
from measure.classify_settings import ClassifySettings

DEMO = {"steps": 24, "batch": 16, "size": 32, "repeats": 2, "val_every": 6, "lr": 1e-3, "augment": "light"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The paper's downstream experiment: a ResNet-18 (ImageNet weights, new "
                                "2-class head) trained per arm (real, real+synthetic, synthetic) and repeat, "
                                "validated on real images, tested once on real images; AUC with DeLong 95%% CIs, "
                                "paired DeLong tests between arms, mean +/- std over repeats.")
    add_flags(p, ClassifySettings)
    return cli.parse_args(p, argv)


def demo_settings(settings: ClassifySettings) -> ClassifySettings:
    """--demo: generated images (a few faint real ones, many clear synthetic ones) for the folders not given,
    a tiny from-scratch run (DEMO's sizes where the flags are left at their defaults)."""
    from measure.toy_classes import write_toy_classes
    root = demo.DEMO_DIR / "classify"
    print("demo: generated two-class images and a from-scratch ResNet-18, a few steps; this checks the install "
          "(real runs need torchvision's resnet18-f37072fd.pth in weights/, see README)")
    folders = {"train": (4, 0.1, 1), "val": (10, 0.5, 2), "test": (24, 0.5, 3), "synthetic": (24, 0.9, 4)}
    # a folder given on the command line is used as it is (say --synthetic from `sample.py --demo --prompts-file`)
    paths = {name: getattr(settings, name) or write_toy_classes(root / "data" / name, n, contrast, seed,
                                                                 size=DEMO["size"])
             for name, (n, contrast, seed) in folders.items()}
    tiny = {k: v for k, v in DEMO.items() if getattr(settings, k) == getattr(ClassifySettings, k)}  # flags given win
    return replace(settings, **paths, **tiny, from_scratch=True, weights=None, dtype="fp32", overwrite=True,
                   output=root / "results" if settings.output == Path("classification") else settings.output)


def main(argv=None) -> None:
    settings = from_flags(ClassifySettings, parse_args(argv))
    if settings.demo:
        settings = demo_settings(settings)
    results = run_experiment(settings)
    print(table(results))
    print(f"wrote {settings.output / 'results.json'}, {settings.output / 'predictions.csv'}, "
          f"{settings.output / 'roc.png'}")


if __name__ == "__main__":
    cli.run(main)
