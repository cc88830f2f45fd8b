#!/usr/bin/env python
"""Does the synthetic data help? Train the paper's ResNet-18 classifier on real, real + synthetic and
synthetic images, test each on the same real cases, with DeLong CIs and paired tests.

    python classify.py --train real/train --val real/val --test real/test --synthetic synthetic/
    python classify.py --demo          # a tiny from-scratch run on generated images (about 20 CPU seconds)
"""
import argparse
from dataclasses import fields, replace

from mini_ldm import cli, demo
from mini_ldm.settings import add_flags, check_device_name, from_flags, parse_given
from classifier.report import table
from classifier.settings import INPUTS, ClassifySettings

# Everything above is torch-free, so a wrong flag or folder answers at once; torch (seconds to import, more on a
# busy machine) comes with the experiment, imported in main once the settings are checked.

DEMO = {"steps": 24, "batch": 16, "size": 32, "repeats": 2, "val_every": 6, "lr": 1e-3, "augment": "light"}


def parse_args(argv=None) -> tuple:
    """The parsed flags and the names of those typed on the command line (--demo fills in the others)."""
    p = argparse.ArgumentParser(description="The paper's downstream experiment: a ResNet-18 (ImageNet weights, new "
                                "2-class head) trained per arm (real, real+synthetic, synthetic) and repeat, "
                                "validated on real images, tested once on real images; AUC with DeLong 95% CIs, "
                                "paired DeLong tests between arms, mean +/- std over repeats. Everything is "
                                "checked before the first training: the settings, the folders (file and class "
                                "names in UTF-8, images up to --max-pixels, --output outside them) and the weights "
                                "file. A rerun continues the finished trainings only with the same settings and "
                                "the same images; SIGTERM stops it as Ctrl-C does.")
    add_flags(p, ClassifySettings)
    return parse_given(p, argv)  # text that is not UTF-8 is refused there, as in cli.parse_args


def demo_settings(settings: ClassifySettings, typed: frozenset = frozenset()) -> ClassifySettings:
    """--demo: chest phantoms, no finding against a left pleural effusion (a few to train on; many for the
    synthetic folder, unless `sample.py --demo` drew it with the tokens of `train.py --demo --concepts`) for the
    folders not given,
    a tiny from-scratch run (DEMO's sizes) for the flags not given. A flag counts as given when it was typed
    (`typed`, from parse_args) or holds another value than the default (the Python API)."""
    from classifier.toy_classes import write_chest_classes
    root = demo.DEMO_DIR / "classify"
    print("demo: chest phantoms, no finding (neg) against a left pleural effusion (pos), and a ResNet-18 from "
          "scratch, a few steps; this checks the install "
          "(real runs need torchvision's resnet18-f37072fd.pth in weights/, see README)")
    folders = {"train": (4, 1), "val": (10, 2), "test": (24, 3), "synthetic": (24, 4)}  # images per class, seed
    # a folder given on the command line is used as it is (say --synthetic from `sample.py --demo --prompts-file`)
    paths = {name: getattr(settings, name) or write_chest_classes(root / "data" / name, n, seed, size=DEMO["size"])
             for name, (n, seed) in folders.items()}
    given = typed | {f.name for f in fields(ClassifySettings) if getattr(settings, f.name) != f.default}
    changes = {k: v for k, v in DEMO.items() if k not in given}  # flags typed win, even at their default value
    if "weights" not in given:  # --weights given: the demo checks that file instead of starting from scratch
        changes.update(from_scratch=True, weights=None)
    if "dtype" not in given:
        changes.update(dtype="fp32")
    if "output" not in given:  # only the demo's own folder is replaced; a folder given keeps --overwrite's rule
        changes.update(output=root / "results", overwrite=True)
    return replace(settings, **paths, **changes)


def main(argv=None) -> None:
    args, typed = parse_args(argv)
    settings = from_flags(ClassifySettings, args)
    settings.check_values()  # before --demo writes its folders
    check_device_name(settings.device)
    if settings.demo:
        settings = demo_settings(settings, typed)
    settings.check()
    cli.check_exist(*((f"--{name}", getattr(settings, name)) for name in (*INPUTS, "weights")))
    from classifier.experiment import run_experiment

    results = run_experiment(settings)
    print(table(results))
    print(f"wrote {settings.output / 'results.json'}, {settings.output / 'predictions.csv'}, "
          f"{settings.output / 'roc.png'}")


if __name__ == "__main__":
    cli.run(main)
