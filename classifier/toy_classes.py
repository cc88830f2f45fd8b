"""Generated two-class image folders (neg/, pos/) for `classify.py --demo`, the tests and the benchmark:
noisy textured squares; a positive image also holds a bright blob of a given contrast somewhere. A higher
contrast makes a more informative image; `swap` writes each class into the other's folder."""
from pathlib import Path

import numpy as np
from PIL import Image

from mini_ldm.io import write_image_atomic


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
