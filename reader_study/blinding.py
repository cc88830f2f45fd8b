"""Blinding, done once when a study is created: every image becomes a PNG of the study's one size and mode,
with no text, EXIF, ICC or other metadata chunk, under a random name. Nothing of the original file (its name,
folder, prompt text chunk, bit depth, colour mode, size) reaches a reader."""
import io
import secrets
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from readers.images import load_image

MODES = ("L", "RGB")


def is_grey(image: Image.Image) -> bool:
    """True for an image whose three channels are equal everywhere (load_image hands out RGB)."""
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def default_size(paths: list) -> tuple:
    """The most common (width, height) among `paths` (ties: the first met)."""
    return Counter(load_image(p).size for p in paths).most_common(1)[0][0]


def default_mode(paths: list) -> str:
    """L when every image is grayscale (or RGB with equal channels), else RGB."""
    return "L" if all(is_grey(load_image(p)) for p in paths) else "RGB"


def blinded_png(path, size: tuple, mode: str) -> bytes:
    """The image at `path` cropped to the study's aspect ratio about its centre, resized to `size` (width,
    height) with Lanczos (antialiased), converted to `mode`, and encoded as a PNG from its bare pixels: a new
    image from the array carries no `info`, so the encoder writes only IHDR, IDAT and IEND."""
    image = ImageOps.fit(load_image(path), size, method=Image.LANCZOS, centering=(0.5, 0.5))
    pixels = np.asarray(image.convert(mode))
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def random_name() -> str:
    """A 128-bit random file stem: it says nothing about the image and cannot be guessed."""
    return secrets.token_hex(16)


def write_blinded(path, folder: Path, size: tuple, mode: str) -> str:
    """Blind the image at `path` into `folder`/<random>.png; returns the random stem."""
    name = random_name()
    (Path(folder) / f"{name}.png").write_bytes(blinded_png(path, size, mode))
    return name
