"""Small structured test images for evaluate.py: shapes, gradients and stripes, each image its own mix.

Not iid noise: random-weight Inception features of noise images all look alike, while these differ in
layout, so nearest-neighbour similarities between different images stay well below a copy's.
"""
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def structured_image(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    base = (np.cos(angle) * xx + np.sin(angle) * yy)  # a gradient in a random direction
    freq = rng.uniform(2, 8)
    stripes = np.sin(2 * np.pi * freq * (np.sin(angle) * xx - np.cos(angle) * yy))
    rgb = np.stack([base * rng.uniform(50, 200) + stripes * rng.uniform(10, 60) + rng.uniform(0, 60) for _ in range(3)], -1)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):  # asymmetric shapes, so a mirror image is a different picture
        x0, y0 = rng.integers(0, size - 8, 2)
        w, h = rng.integers(6, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=colour)
    return image


def noised_recompressed(image: Image.Image, seed: int, sigma: float = 4.0, quality: int = 90) -> Image.Image:
    arr = np.asarray(image, dtype=np.float64) + np.random.default_rng(seed).normal(0, sigma, (*image.size[::-1], 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def write_images(folder: Path, images, prefix: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"{prefix}-{i:03d}.png")
    return folder


def blob_image(seed: int, size: int = 64) -> Image.Image:
    """Another kind of picture: smooth colour clouds (upsampled coarse noise), for an 'unrelated' set."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
