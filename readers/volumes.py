"""3-D volumes with SimpleITK: read, reorient to LPS, resample, centre crop/pad, pick axial slices.

Conventions (easy to get wrong):
- SimpleITK sizes and spacings are (x, y, z); its numpy arrays are (z, y, x). Flags and this module's
  arguments ending in `_zyx` are (z, y, x), like the arrays.
- physical point = origin + direction @ (index * spacing). Sequences of one study sit on different grids,
  so a sequence is put on another's grid through physical space (sitk.Resample with the reference
  image), never by index.
- After DICOMOrient(img, "LPS") index x runs to the patient's left, y to posterior, z to superior: an
  axial slice array[z] shows the patient's right on the image's left and anterior at the top (the
  radiological convention), whatever order the file stored its axes in.
SimpleITK is imported only when a volume is met (it is an optional extra).
"""
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mini_ldm.errors import UserError
from mini_ldm.io import first_line

from .extras import require

VOLUME_SUFFIXES = (".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".nii")
SLICE_MODES = ("middle", "all", "largest", "median")


class VolumeError(UserError):
    """A volume or DICOM series that cannot be read or used; the message names it."""


def volume_suffix(path) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def strip_volume_suffix(path) -> str:
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


def sitk_module(what: str):
    return require("SimpleITK", what)


def read_volume(paths: list[Path]):
    """One volume file, or the ordered files of a DICOM series -> a 3-D float32 sitk.Image."""
    sitk = sitk_module(f"reading {paths[0]}")
    name = paths[0] if len(paths) == 1 else paths[0].parent
    try:
        with native_stderr_silenced():  # ITK's readers also print their complaints straight to stderr
            if len(paths) == 1:
                image = sitk.ReadImage(str(paths[0]))
            else:
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames([str(p) for p in paths])
                image = reader.Execute()  # applies RescaleSlope/Intercept
    except RuntimeError as e:
        raise VolumeError(f"cannot read volume {name}: {_itk_reason(e)} (damaged, or not the format its name "
                          "says)") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel; prepare.py reads "
                          "scalar volumes (give each sequence as its own file)")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)  # a single slice stored as a 2-D .mha/.nrrd: depth 1
    if image.GetDimension() != 3:
        raise VolumeError(f"{name} is {image.GetDimension()}-D; prepare.py reads 3-D volumes (split 4-D files first)")
    return sitk.Cast(image, sitk.sitkFloat32)


@contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for a while: C++ code writes there past Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _itk_reason(e: RuntimeError) -> str:
    """ITK's message is a source location, then 'ITK ERROR: Class(0x...): reason', then a stale errno
    line; keep the reason."""
    for line in str(e).splitlines():
        if "ERROR" in line:
            return re.sub(r"^.*?ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", line.strip()).rstrip(".")[:200]
    return first_line(e)


def to_lps(image):
    """Permute/flip the axes so the direction is (close to) identity in LPS; voxel values are unchanged."""
    sitk = sitk_module("reorienting a volume")
    return sitk.DICOMOrient(image, "LPS")


def resample_to_spacing(image, spacing_zyx):
    """Linear resampling onto the same field of view at a new spacing (mm), first voxel centre kept."""
    sitk = sitk_module("resampling a volume")
    new_spacing = tuple(float(s) for s in reversed(spacing_zyx))
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), new_spacing)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing,
                         image.GetDirection(), float("nan"), sitk.sitkFloat32)


def centre_crop_or_pad(array: np.ndarray, size_zyx, fill=np.nan) -> tuple[np.ndarray, tuple]:
    """Centre crop or pad (z, y, x) to `size_zyx`; returns the result and the source index of its first
    voxel (negative where padded), so the new grid's origin can be computed."""
    start = tuple((n - t) // 2 for n, t in zip(array.shape, size_zyx))
    out = np.full(tuple(size_zyx), fill, dtype=array.dtype)
    src = tuple(slice(max(s, 0), min(s + t, n)) for s, t, n in zip(start, size_zyx, array.shape))
    dst = tuple(slice(max(-s, 0), max(-s, 0) + (sl.stop - sl.start)) for s, sl in zip(start, src))
    out[dst] = array[src]
    return out, start


def grid_image(like, array: np.ndarray, start_zyx=(0, 0, 0)):
    """An sitk.Image holding `array` on `like`'s spacing and direction, its first voxel at `like`'s
    index `start_zyx` (physical = origin + direction @ (index * spacing))."""
    sitk = sitk_module("building a volume grid")
    image = sitk.GetImageFromArray(array)
    spacing = np.array(like.GetSpacing())
    direction = np.array(like.GetDirection()).reshape(3, 3)
    offset = direction @ (np.array(start_zyx[::-1], dtype=float) * spacing)
    image.SetOrigin(tuple(np.array(like.GetOrigin()) + offset))
    image.SetSpacing(like.GetSpacing())
    image.SetDirection(like.GetDirection())
    return image


def resample_onto(image, reference, nearest: bool = False, outside=float("nan")) -> np.ndarray:
    """`image` sampled at the voxel centres of `reference` through physical space -> (z, y, x) array.
    Linear for intensities (NaN outside the scan, later black), nearest neighbour for masks."""
    sitk = sitk_module("resampling a volume")
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, outside, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def reference_grid(first, spacing_zyx=None, crop_zyx=None):
    """LPS, then the optional new spacing, then the optional centre crop/pad: the grid every other
    sequence and mask is resampled onto."""
    sitk = sitk_module("building a volume grid")
    image = to_lps(first)
    if spacing_zyx is not None:
        image = resample_to_spacing(image, spacing_zyx)
    if crop_zyx is not None:
        array, start = centre_crop_or_pad(sitk.GetArrayFromImage(image), crop_zyx)
        image = grid_image(image, array, start)
    return image  # its values are the first sequence's (NaN outside the scan)


def mask_on_grid(mask, grid) -> np.ndarray:
    """A label volume on the grid, as a boolean (z, y, x) array: any label > 0 counts."""
    return resample_onto(mask, grid, nearest=True, outside=0.0) > 0


def pick_slices(mode: str, mask: np.ndarray | None, depth: int) -> list[int]:
    """Axial indices to write. largest: the slice with the most mask voxels (the first on ties);
    median: the median of the slices that hold any mask (rounded down, as int(np.median) does)."""
    if mode == "middle":
        return [depth // 2]
    if mode == "all":
        return list(range(depth))
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if mode == "largest":
        return [int(np.argmax(counts))]
    return [int(np.median(np.flatnonzero(counts)))]
