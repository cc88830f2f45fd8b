"""One case -> its 8-bit axial slices (or 2-D DICOM frames), ready to be written as PNGs.

The order matters and follows the paper: the first sequence is reoriented to LPS, resampled to
--spacing and centre cropped/padded to --crop; that is the case's grid. Every other sequence and every
mask is resampled onto that grid through physical space (linear for images, nearest for masks), which
keeps the channels aligned where the paper's per-sequence crop did not. Each sequence is normalized with
statistics of its own whole volume, and voxels outside a scan end up black.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mini_ldm.errors import UserError

from .cases import Case, Source
from .dicom import DicomError, dicom_window, display_frames, read_dicom
from .extras import MissingExtraError
from .intensity import Normalization, to_unit, unit_to_uint8, value_range
from .volumes import (DEFAULT_MAX_VOXELS, MEMORY_HINT, UNEVEN_GAPS, VolumeError, is_allocation_failure,
                      mask_on_grid, pick_slices, read_volume, reference_grid, resample_onto, restack_from_positions,
                      sitk_module, uneven_gaps)


class CaseSkipped(UserError):
    """This case cannot be prepared; `why` is a short reason for the summary line."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


@dataclass
class Options:
    spacing: tuple | None = None  # (z, y, x) mm
    crop: tuple | None = None  # (z, y, x) voxels
    normalize: Normalization | None = None  # None: a DICOM's own window, else minmax
    slice: str = "middle"
    masks: dict = field(default_factory=dict)  # case id -> mask file
    fallback_masks: dict = field(default_factory=dict)
    fallback_slice: str = "median"
    split_by_mask: bool = False
    max_voxels: int = DEFAULT_MAX_VOXELS  # larger volumes are refused from their header
    uneven_slices: bool = False  # resample series with uneven slice gaps (else skip them)
    warn: Callable[[str], None] = lambda message: None  # one-line notices


@dataclass
class Slice:
    pixels: np.ndarray  # (H, W) or (H, W, 3) uint8
    index: int | None  # axial index on the case's grid (frame number for multi-frame 2-D files)
    subfolder: str  # "", "pos" or "neg"
    spacing: str  # the grid's "z,y,x" spacing in mm; "" for 2-D files
    normalize: str  # the mapping used, per sequence, joined by ';'


def prepare_case(case: Case, opts: Options) -> list[Slice]:
    """The case's slices; CaseSkipped (with a one-line reason) when it cannot be used."""
    try:
        if case.sources[0].kind == "dicom2d":
            return _dicom_frames(case, opts)
        return _volume_slices(case, opts)
    except MissingExtraError:
        raise  # not this case's fault: every case would fail, so stop
    except (DicomError, VolumeError) as e:
        raise CaseSkipped(str(e), e.why) from None
    except MemoryError:
        raise CaseSkipped(f"out of memory preparing {case.sources[0].label}: {MEMORY_HINT}", "out of memory") from None
    except RuntimeError as e:  # SimpleITK's failed allocations while resampling
        if not is_allocation_failure(e):
            raise
        raise CaseSkipped(f"out of memory preparing {case.sources[0].label}: {MEMORY_HINT}", "out of memory") from None


def _dicom_frames(case: Case, opts: Options) -> list[Slice]:
    if opts.slice in ("largest", "median") or opts.split_by_mask:
        raise CaseSkipped(f"{case.sources[0].label} is a 2-D image; masks and --slice {opts.slice} apply to "
                          "volumes (leave 2-D files out of this run)", "2-D file with mask options")
    frames, used = display_frames(read_dicom(case.sources[0].paths[0]), opts.normalize)
    indices = [None] if len(frames) == 1 else range(len(frames))
    return [Slice(f, i, "", "", used) for f, i in zip(frames, indices)]


def read_source(source: Source, opts: Options):
    """A volume file or DICOM series as a 3-D image; a series with uneven slice gaps is skipped, or with
    --uneven-slices put on an even grid from its slices' true positions."""
    image = read_volume(source.paths, opts.max_voxels)
    gaps = uneven_gaps(source.positions) if source.positions else None
    if gaps is None:
        return image
    spread = f"slice gaps of {source.label} vary from {gaps[0]:.3g} to {gaps[1]:.3g} mm (more than {UNEVEN_GAPS:.0%})"
    if not opts.uneven_slices:
        raise VolumeError(f"{spread}: missing slices, or slices of several stacks; add --uneven-slices to "
                          "resample it from the slices' true positions", "uneven slice gaps")
    opts.warn(f"warning: {spread}; resampled from the slices' true positions (--uneven-slices)")
    return restack_from_positions(image, source.positions)


def _volume_slices(case: Case, opts: Options) -> list[Slice]:
    volumes = [read_source(s, opts) for s in case.sources]
    sitk = sitk_module("reading volumes")
    grid = reference_grid(volumes[0], opts.spacing, opts.crop)
    on_grid = [sitk.GetArrayFromImage(grid)] + [resample_onto(v, grid) for v in volumes[1:]]
    norms = [_normalization(s, opts.normalize) for s in case.sources]
    channels = []
    for values, volume, norm in zip(on_grid, volumes, norms):
        lo, hi = value_range(norm, sitk.GetArrayViewFromImage(volume))  # the sequence's whole volume
        channels.append(unit_to_uint8(to_unit(values, lo, hi)))
    stacked = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)  # (z, y, x[, 3])
    mask, mode, positive = _choose_mask(case, grid, opts)
    subfolder = ("pos" if positive else "neg") if opts.split_by_mask else ""
    spacing = ",".join(f"{s:g}" for s in reversed(grid.GetSpacing()))
    used = ";".join(str(n) for n in norms)
    return [Slice(stacked[z], z, subfolder, spacing, used) for z in pick_slices(mode, mask, stacked.shape[0])]


def _normalization(source: Source, chosen: Normalization | None) -> Normalization:
    if chosen is not None:
        return chosen
    if source.kind == "series":
        window = dicom_window(source.paths[0])  # the series' own display window, as for 2-D DICOM
        if window is not None:
            return window
    return Normalization("minmax")


def _choose_mask(case: Case, grid, opts: Options):
    """(mask on the grid or None, slice mode, positive): the first mask when it has voxels on the grid,
    else the fallback mask with --fallback-slice. `positive` (for --split-by-mask) asks whether the first
    mask has any voxel at all, on the grid or not."""
    first = _read_mask(case.id, opts.masks, "--masks", opts.max_voxels)
    positive = first is not None and bool(sitk_module("reading masks").GetArrayViewFromImage(first).any())
    if opts.slice not in ("largest", "median"):
        return None, opts.slice, positive
    mask = mask_on_grid(first, grid) if positive else None
    if mask is not None and mask.any():
        return mask, opts.slice, positive
    if opts.fallback_slice == "middle":
        return None, "middle", positive
    fallback = _read_mask(case.id, opts.fallback_masks, "--fallback-masks", opts.max_voxels)
    mask = mask_on_grid(fallback, grid) if fallback is not None else None
    if mask is not None and mask.any():
        return mask, opts.fallback_slice, positive
    state = "missing" if first is None else "empty on the grid"
    has_fallback = " and no usable --fallback-masks mask" if opts.fallback_masks else " (give --fallback-masks)"
    raise CaseSkipped(f"--slice {opts.slice} needs a mask; its --masks mask is {state}{has_fallback}", "no mask")


def _read_mask(case_id: str, masks: dict, flag: str, max_voxels: int):
    path: Path | None = masks.get(case_id)
    if path is None:
        return None
    try:
        return read_volume([path], max_voxels)
    except VolumeError as e:
        raise CaseSkipped(f"{flag}: {e}", f"{e.why} mask") from None
