"""Synthetic 'chest X-ray' phantoms for `train.py --demo`: grey ellipses for lungs, heart and spine.

Made with numpy and PIL only, varied by a seed, so the demo needs no data set and no download.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from mini_ldm.io import write_image_atomic


def phantom(rng: np.random.Generator, size: int = 128) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size  # (size, size) coordinates in [0, 1)
    image = np.full((size, size), 0.15)

    def ellipse(cx, cy, rx, ry, value):
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        image[inside] = value

    ellipse(0.5, 0.55, 0.42, 0.45, 0.75)  # chest wall
    for side in (-1, 1):  # lungs, dark
        ellipse(0.5 + side * rng.uniform(0.17, 0.21), 0.5, rng.uniform(0.13, 0.16), rng.uniform(0.28, 0.33), 0.25)
    ellipse(0.5 + rng.uniform(0.02, 0.06), 0.62, rng.uniform(0.1, 0.16), 0.12, 0.8)  # heart, on the left of the body
    image[:, int(0.48 * size):int(0.52 * size)] = 0.9  # spine
    image += rng.normal(0, 0.03, image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L")


def write_phantoms(folder: Path, count: int = 8, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_image_atomic(folder / f"phantom-{i:02d}.png", phantom(rng))
    return folder
