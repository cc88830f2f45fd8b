"""Generated two-class image folders (neg/, pos/) for `classify.py --demo`, the tests and the benchmark.
`write_toy_classes`: noisy textured squares; a positive image also holds a bright blob of a given contrast
somewhere. A higher contrast makes a more informative image; `swap` writes each class into the other's folder.
`write_chest_classes`: chest phantoms (readers.chest_findings), no finding against a left pleural effusion, the
classes `train.py --demo --concepts` learns, so `classify.py --demo` can add the images drawn with those tokens."""
from pathlib import Path

import numpy as np
from PIL import Image

from mini_ldm.io import write_image_atomic
from readers.chest_findings import chest_cases

CHEST_CLASSES = {"neg": {"effusion": "", "cardiomegaly": False, "nodule": False},
                 "pos": {"effusion": "left", "cardiomegaly": False, "nodule": False}}


def toy_image(rng: np.random.Generator, positive: bool, contrast: float, size: int) -> np.ndarray:
    """(size, size) uint8: smooth random texture, plus for a positive image a Gaussian blob of `contrast`."""
    coarse = rng.normal(0.5, 0.12, (size // 8 + 1, size // 8 + 1))
    texture = np.kron(coarse, np.ones((8, 8)))[:size, :size] + rng.normal(0, 0.05, (size, size))
    if positive:
        cy, cx = rng.uniform(size * 0.25, size * 0.75, 2)
        yy, xx = np.mgrid[:size, :size]
        texture += contrast * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
    return (np.clip(texture, 0, 1) * 255).round().astype(np.uint8)


def write_toy_classes(folder, per_class: int, contrast: float, seed: int, size: int = 48, swap: bool = False) -> Path:
    """folder/neg/*.png and folder/pos/*.png, `per_class` each."""
    folder, rng = Path(folder), np.random.default_rng(seed)
    for positive in (False, True):
        name = "pos" if positive != swap else "neg"
        for i in range(per_class):
            write_image_atomic(folder / name / f"{name}-{seed}-{i:04d}.png",
                               Image.fromarray(toy_image(rng, positive, contrast, size)))
    return folder


def write_chest_classes(folder, per_class: int, seed: int, size: int = 128) -> Path:
    """folder/neg/ (no finding) and folder/pos/ (a left pleural effusion) chest phantoms, `per_class` each."""
    folder = Path(folder)
    for k, (name, findings) in enumerate(CHEST_CLASSES.items()):
        for i, (image, _) in enumerate(chest_cases((seed, k), per_class, **findings)):
            write_image_atomic(folder / name / f"{name}-{seed}-{i:04d}.png", image.resize((size, size), Image.LANCZOS))
    return folder
