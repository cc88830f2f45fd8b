"""Synthetic phantoms, so every --demo runs with nothing to download.

`phantom_arrays`, for `prepare.py --demo`: an ellipsoidal 'body' with a brighter 'gland' and a small bright
'lesion' inside, on a 1 x 1 x 3 mm grid: enough structure for the reorientation, the mask-driven slice choice
and the PNG writing to be seen working.
`chest_phantom`, for `train.py --demo` and `evaluate.py --demo`: a 2-D 'chest X-ray' (grey ellipses for
lungs and heart, the spine), optionally with random blobs that make images of different seeds tell apart.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from .volumes import sitk_module

SHAPE_ZYX = (12, 64, 64)
SPACING_XYZ = (1.0, 1.0, 3.0)
CASE = "phantom_001"


def _ellipsoid(centre_zyx, radii_zyx) -> np.ndarray:
    z, y, x = np.indices(SHAPE_ZYX, dtype=float)
    d = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre_zyx, radii_zyx))
    return d <= 1.0


def phantom_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(volume float32, lesion mask uint8), both (z, y, x)."""
    rng = np.random.default_rng(seed)
    body = _ellipsoid((6, 32, 32), (8, 26, 29))
    gland = _ellipsoid((6, 36, 32), (4, 9, 11))
    lesion = _ellipsoid((7, 38, 36), (1.5, 3, 3))
    volume = 40.0 * body + 120.0 * gland + 200.0 * lesion + rng.normal(0, 8, SHAPE_ZYX) * body
    return volume.astype(np.float32), lesion.astype(np.uint8)


def write_phantom_case(folder: Path) -> tuple[Path, Path]:
    """Write <folder>/images/phantom_001.nii.gz and <folder>/masks/phantom_001.nii.gz (once; kept if there).
    Returns (images folder, masks folder)."""
    sitk = sitk_module("writing the demo phantom volume")
    images, masks = Path(folder) / "images", Path(folder) / "masks"
    for sub, array in zip((images, masks), phantom_arrays()):
        path = sub / f"{CASE}.nii.gz"
        if path.is_file():
            continue
        sub.mkdir(parents=True, exist_ok=True)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING_XYZ)
        tmp = sub / f".{CASE}.tmp.nii.gz"  # written whole, then renamed: an interrupted demo leaves no half file
        sitk.WriteImage(image, str(tmp))
        tmp.replace(path)
    return images, masks


def inside_ellipse(x, y, cx, cy, rx, ry) -> np.ndarray:
    """Where the coordinate grids (x, y) fall inside the axis-aligned ellipse of centre (cx, cy), radii (rx, ry)."""
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1


def chest_phantom(rng: np.random.Generator, size: int = 128, blobs: int = 0) -> Image.Image:
    """A grey (size, size) 'chest X-ray' drawn from `rng`: chest wall, two dark lungs, the heart on the body's
    left, the spine, `blobs` random ellipses of random brightness, then noise."""
    y, x = np.mgrid[0:size, 0:size] / size  # (size, size) coordinates in [0, 1)
    image = np.full((size, size), 0.15)

    def ellipse(cx, cy, rx, ry, value):
        image[inside_ellipse(x, y, cx, cy, rx, ry)] = value

    ellipse(0.5, 0.55, 0.42, 0.45, 0.75)  # chest wall
    for side in (-1, 1):  # lungs, dark
        ellipse(0.5 + side * rng.uniform(0.17, 0.21), 0.5, rng.uniform(0.13, 0.16), rng.uniform(0.28, 0.33), 0.25)
    ellipse(0.5 + rng.uniform(0.02, 0.06), 0.62, rng.uniform(0.1, 0.16), 0.12, 0.8)  # heart, on the left of the body
    image[:, int(0.48 * size):int(0.52 * size)] = 0.9  # spine
    for _ in range(blobs):
        ellipse(*rng.uniform(0.2, 0.8, 2), *rng.uniform(0.04, 0.1, 2), rng.uniform(0.1, 1.0))
    image += rng.normal(0, 0.03, image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L")
