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
import gzip
import os
import re
import struct
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mini_ldm.errors import UserError, first_line

from .extras import require

VOLUME_SUFFIXES = (".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".nii")
SLICE_MODES = ("middle", "all", "largest", "median")
# 256 Mi voxels: 1 GiB as float32, and prepare.py holds a few copies of the first sequence (LPS, resampled,
# cropped). Larger than any CT or MRI series in everyday use (512 x 512 x 1000 is 262 Mi); --max-voxels raises it.
DEFAULT_MAX_VOXELS = 2**28
UNEVEN_GAPS = 0.10  # slice gaps that differ from their median by more than this fraction are uneven
MEMORY_HINT = "free memory, or use --spacing with larger values, or skip such volumes with a lower --max-voxels"


class VolumeError(UserError):
    """A volume or DICOM series that cannot be read or used; the message names it, `why` sums it up for the
    summary line (unreadable, not 3-D, too large, ...)."""

    def __init__(self, message: str, why: str = "unreadable"):
        super().__init__(message)
        self.why = why


def volume_suffix(path) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def strip_volume_suffix(path) -> str:
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


def sitk_module(what: str):
    return require("SimpleITK", what)


def read_volume(paths: list[Path], max_voxels: int = DEFAULT_MAX_VOXELS):
    """One volume file, or the ordered files of a DICOM series -> a 3-D float32 sitk.Image. The header is
    read first: a volume of more than `max_voxels` voxels is refused before its data is decoded."""
    sitk = sitk_module(f"reading {paths[0]}")
    name = paths[0] if len(paths) == 1 else paths[0].parent
    try:
        with native_stderr_silenced():  # ITK's readers also print their complaints straight to stderr
            if nifti_version(paths[0]) == 2:  # SimpleITK reads NIfTI-1 only
                return read_nifti2(paths[0], max_voxels)
            check_size(sitk, paths, name, max_voxels)
            if len(paths) == 1:
                image = sitk.ReadImage(str(paths[0]))
            else:
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames([str(p) for p in paths])
                image = reader.Execute()  # applies RescaleSlope/Intercept
            image = _scalar_3d(sitk, image, name)
            return sitk.Cast(image, sitk.sitkFloat32)
    except MemoryError:
        raise VolumeError(f"out of memory reading volume {name}: {MEMORY_HINT}", "out of memory") from None
    except RuntimeError as e:
        if is_allocation_failure(e):
            raise VolumeError(f"out of memory reading volume {name}: {MEMORY_HINT}", "out of memory") from None
        raise VolumeError(f"cannot read volume {name}: {_itk_reason(e)} (damaged, or not the format its name "
                          "says)") from None


def is_allocation_failure(e: BaseException) -> bool:
    """SimpleITK reports a failed allocation as a RuntimeError (std::bad_alloc, 'Failed to allocate')."""
    text = str(e).lower()
    return "bad_alloc" in text or "allocate" in text or "out of memory" in text


def nifti_version(path: Path) -> int | None:
    """1 or 2 for a NIfTI file (its first four bytes: the header size, 348 or 540, in either byte order)."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as f:
            head = f.read(4)
    except (OSError, EOFError):
        return None  # SimpleITK names what is wrong with it
    sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")} if len(head) == 4 else set()
    return 2 if 540 in sizes else 1 if 348 in sizes else None


NIFTI_TYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8,
               512: np.uint16, 768: np.uint32, 1024: np.int64, 1280: np.uint64}


def read_nifti2(path: Path, max_voxels: int):
    """A NIfTI-2 file (540-byte header, 64-bit sizes) -> a 3-D float32 sitk.Image, as SimpleITK reads NIfTI-1:
    scl_slope/inter applied, the qform (else the sform, else pixdim) for geometry, RAS turned into LPS."""
    sitk = sitk_module(f"reading {path}")
    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as f:
        head = f.read(540)
        e = "<" if int.from_bytes(head[:4], "little") == 540 else ">"
        (datatype,), dims = struct.unpack_from(e + "h", head, 12), struct.unpack_from(e + "8q", head, 16)
        size_xyz = (list(dims[1:1 + dims[0]]) + [1, 1])[:3]
        if dims[0] > 3 and any(n > 1 for n in dims[4:1 + dims[0]]):
            raise VolumeError(f"{path} is {dims[0]}-D; prepare.py reads 3-D volumes (split 4-D files first)", "not 3-D")
        voxels = int(np.prod(size_xyz, dtype=np.int64))
        if voxels > max_voxels:
            raise VolumeError(f"{path} holds {voxels:,} voxels, more than --max-voxels {max_voxels:,}; raise "
                              "--max-voxels if this machine has the memory for it", "too large")
        if datatype not in NIFTI_TYPES:
            raise VolumeError(f"{path}: NIfTI datatype {datatype} is not a scalar type prepare.py reads", "not scalar")
        (offset,) = struct.unpack_from(e + "q", head, 168)
        f.seek(offset)
        dtype = np.dtype(NIFTI_TYPES[datatype]).newbyteorder(e)
        data = np.frombuffer(f.read(voxels * dtype.itemsize), dtype=dtype)
    if data.size != voxels:
        raise VolumeError(f"cannot read volume {path}: it ends before its {voxels:,} voxels (damaged)")
    values = data.reshape(size_xyz[::-1]).astype(np.float32)  # x varies fastest: (z, y, x)
    slope, inter = struct.unpack_from(e + "2d", head, 176)
    if slope and np.isfinite(slope):
        values = values * np.float32(slope) + np.float32(inter)
    image = sitk.GetImageFromArray(values)
    _set_geometry(image, nifti_affine(head, e))
    return image


def nifti_affine(head: bytes, e: str) -> np.ndarray:
    """The 4 x 4 voxel -> RAS (mm) matrix of a NIfTI-2 header: qform if set, else sform, else pixdim."""
    pixdim = struct.unpack_from(e + "8d", head, 104)
    qform_code, sform_code = struct.unpack_from(e + "2i", head, 344)
    affine = np.eye(4)
    if qform_code > 0:
        b, c, d, *offset = struct.unpack_from(e + "6d", head, 352)
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                             [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                             [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c]])
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        affine[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]])
        affine[:3, 3] = offset
    elif sform_code > 0:
        affine[:3] = np.array(struct.unpack_from(e + "12d", head, 400)).reshape(3, 4)
    else:
        affine[:3, :3] = np.diag(pixdim[1:4])
    return affine


def _set_geometry(image, ras_affine: np.ndarray) -> None:
    lps = np.diag([-1.0, -1.0, 1.0]) @ ras_affine[:3]  # NIfTI is RAS, ITK is LPS
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in (lps[:, :3] / spacing).reshape(-1)))
    image.SetOrigin(tuple(float(v) for v in lps[:, 3]))


def check_size(sitk, paths: list[Path], name, max_voxels: int) -> None:
    """The voxel count from the header alone (the first file's, times the number of files of a series)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(paths[0]))
    reader.ReadImageInformation()
    size = list(reader.GetSize()) + ([len(paths)] if len(paths) > 1 else [])
    voxels = int(np.prod(size, dtype=np.int64)) * reader.GetNumberOfComponents()
    if voxels > max_voxels:
        shape = " x ".join(str(n) for n in size)
        raise VolumeError(f"{name} holds {voxels:,} voxels ({shape}), more than --max-voxels {max_voxels:,}; "
                          "raise --max-voxels if this machine has the memory for it (about 12 bytes per voxel)",
                          "too large")


def _scalar_3d(sitk, image, name):
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel; prepare.py reads "
                          "scalar volumes (give each sequence as its own file)", "not scalar")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)  # a single slice stored as a 2-D .mha/.nrrd: depth 1
    if image.GetDimension() != 3:
        raise VolumeError(f"{name} is {image.GetDimension()}-D; prepare.py reads 3-D volumes (split 4-D files "
                          "first)", "not 3-D")
    return image


def uneven_gaps(positions: list[float]) -> tuple[float, float] | None:
    """(smallest, largest) gap between consecutive slice positions (mm, sorted) when some gap differs from
    their median by more than UNEVEN_GAPS; None when the slices are evenly spaced."""
    gaps = np.diff(np.asarray(positions, float))
    if len(gaps) < 2:
        return None
    median = float(np.median(gaps))
    if np.all(np.abs(gaps - median) <= UNEVEN_GAPS * median):
        return None
    return float(gaps.min()), float(gaps.max())


def restack_from_positions(image, positions: list[float]):
    """A series read slice by slice, put on an even grid along its normal from the slices' true positions
    (mm, ascending): linear between the two nearest slices, spacing the median gap."""
    sitk = sitk_module("resampling a DICOM series")
    p = np.asarray(positions, float) - positions[0]
    step = float(np.median(np.diff(p)))
    depth = int(round(p[-1] / step)) + 1
    z = np.linspace(0.0, p[-1], depth)
    values = sitk.GetArrayFromImage(image)  # (slices, y, x) in file order = position order
    upper = np.clip(np.searchsorted(p, z, side="right"), 1, len(p) - 1)
    weight = ((z - p[upper - 1]) / (p[upper] - p[upper - 1]))[:, None, None]
    even = (1 - weight) * values[upper - 1] + weight * values[upper]  # (depth, y, x)
    out = sitk.GetImageFromArray(even.astype(np.float32))
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    out.SetSpacing((*image.GetSpacing()[:2], p[-1] / (depth - 1)))
    return out


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
