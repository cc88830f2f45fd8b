"""A synthetic phantom volume and its lesion mask, for `prepare.py --demo` (nothing to download).

An ellipsoidal 'body' with a brighter 'gland' and a small bright 'lesion' inside, on a 1 x 1 x 3 mm grid:
enough structure for the reorientation, the mask-driven slice choice and the PNG writing to be seen working.
"""
from pathlib import Path

import numpy as np

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
