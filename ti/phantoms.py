"""Folders of synthetic 'chest X-ray' phantoms, varied by a seed, so demos and tests need no data set and no
download: `write_phantoms` (readers.phantom.chest_phantom) for the tests on tiny models; `write_chest_phantoms`
(readers.chest_findings, labelled findings) for Textual Inversion on the phantom model (`train.py --demo`)."""
from pathlib import Path

import numpy as np

from mini_ldm.io import write_image_atomic
from readers.chest_findings import chest_cases
from readers.phantom import chest_phantom


def write_phantoms(folder: Path, count: int = 8, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_image_atomic(folder / f"phantom-{i:02d}.png", chest_phantom(rng))
    return folder


def write_chest_phantoms(folder: Path, count: int, seed: int = 0, **asked) -> Path:
    """`count` labelled chest phantoms (readers.chest_findings) as PNGs, each with its caption in a .txt beside it
    (for --template filewords); `asked` fixes findings, e.g. effusion="left"; the rest vary at their rates."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, truth) in enumerate(chest_cases(seed, count, **asked)):
        write_image_atomic(folder / f"chest-{i:03d}.png", image)
        (folder / f"chest-{i:03d}.txt").write_text(truth.caption + "\n", encoding="utf-8")
    return folder
