"""2-D DICOM files -> display pixels, as a DICOM viewer shows them.

The chain is the standard's, and skipping a step gives images that look plausible and are wrong:
stored value -> modality LUT (RescaleSlope * x + RescaleIntercept, or a Modality LUT Sequence)
-> VOI LUT Sequence, else the first WindowCenter/WindowWidth, else the file's own min..max
-> MONOCHROME1 inverted (there white means low), so that bone is white in every output.
A multi-frame file gives one image per frame. pydicom is imported only here, only when a DICOM is met.
"""
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mini_ldm.errors import UserError, first_line

from .extras import require
from .intensity import Normalization, to_unit, unit_to_uint8, value_range

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
DECODER_HINT = "install a decoder for it (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm)"


class DicomError(UserError):
    """A DICOM file that cannot be read, decoded or used; the message names the file, `why` sums it up for
    prepare.py's summary line."""

    def __init__(self, message: str, why: str = "unreadable"):
        super().__init__(message)
        self.why = why


def has_dicom_preamble(path) -> bool:
    """Part 10 files carry 'DICM' after a 128-byte preamble, whatever their name (often none at all)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_dicom(path) -> bool:
    path = Path(path)
    return path.suffix.lower() in DICOM_EXTENSIONS or has_dicom_preamble(path)


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr)


_NOTED = set()  # pydicom complaints already shown in this run: each is shown once, not once per slice


@contextmanager
def quiet_pydicom(path=None, notice=_stderr_line):
    """pydicom's own warnings (an invalid UID, an over-long name) become one line each, 'note: FILE: what',
    shown once per run, instead of a Python warning with its source line on the terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = first_line(w.message).split(" Please see <")[0]  # pydicom appends a link to the standard
        if path is not None and text not in _NOTED:
            _NOTED.add(text)
            notice(f"note: {path}: {text} (pydicom; shown once)")


@dataclass
class Window:
    centre: float
    width: float
    function: str = "LINEAR"  # the VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID


@dataclass
class DicomImage:
    path: Path
    values: np.ndarray  # (F, H, W) after the modality LUT, float64; (F, H, W, 3) stored values when colour
    dataset: object  # the pydicom Dataset, for its VOI attributes
    colour: bool
    windows: list = field(default_factory=list)  # per frame: Window or None (functional groups, else the top level)
    colour_bits: int = 8  # bits of a colour value (a palette's entries may be 16-bit)

    @property
    def monochrome1(self) -> bool:
        return str(getattr(self.dataset, "PhotometricInterpretation", "")).strip() == "MONOCHROME1"


def read_dicom(path) -> DicomImage:
    """Read a 2-D (or multi-frame) DICOM file's pixels with the modality LUT applied, per frame. pydicom's
    complaints about the file (while reading, or later while an attribute is converted) are one-line notes."""
    path = Path(path)
    pydicom = require("pydicom", f"reading DICOM file {path}")
    with quiet_pydicom(path):
        return _read_dicom(pydicom, path)


def _read_dicom(pydicom, path: Path) -> DicomImage:
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as e:  # pydicom raises many types for damaged files
        raise DicomError(f"cannot read DICOM file {path}: {first_line(e)}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DicomError(f"DICOM file {path} holds no image (no Pixel Data); leave it out of the folder", "no image")
    pixels = _decode(ds, path)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) == 1:
        pixels = pixels[None]  # always (F, H, W[, 3])
    if pixels.min() == pixels.max():
        raise DicomError(f"every pixel of DICOM file {path} is {pixels.flat[0]} (a blank image); skipping it", "blank")
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        rgb = _pixels_module(pydicom).apply_color_lut(pixels, ds)  # indices -> the palette's RGB
        return DicomImage(path, rgb, ds, True, colour_bits=_palette_bits(ds))
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        return DicomImage(path, pixels, ds, True, colour_bits=int(getattr(ds, "BitsStored", 8) or 8))
    groups = frame_groups(ds, len(pixels))
    values = np.stack([_modality(pydicom, frame, ds, g) for frame, g in zip(pixels, groups)])
    windows = [_window(ds, g) for g in groups]
    for keyword in ("PhotometricInterpretation", "BitsStored"):  # converted here, so pydicom complains here,
        getattr(ds, keyword, None)  # inside quiet_pydicom, not later in display_frames
    return DicomImage(path, values, ds, False, windows)


def frame_groups(ds, frames: int) -> list[tuple]:
    """Per frame, the functional group items to look in, most specific first: (per-frame item, shared
    item), either None. Enhanced (multi-frame) files keep rescale and window there, not at the top level."""
    shared = ds.SharedFunctionalGroupsSequence[0] if len(getattr(ds, "SharedFunctionalGroupsSequence", [])) else None
    per = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []))
    return [(per[f] if f < len(per) else None, shared) for f in range(frames)]


def _group_item(groups: tuple, sequence: str):
    for item in groups:
        found = getattr(item, sequence, None) if item is not None else None
        if found:
            return found[0]
    return None


def _modality(pydicom, frame: np.ndarray, ds, groups: tuple) -> np.ndarray:
    """Stored values -> modality values: the frame's Pixel Value Transformation, else the top level's."""
    transform = _group_item(groups, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform:
        slope, intercept = float(transform.RescaleSlope), float(getattr(transform, "RescaleIntercept", 0) or 0)
        return frame.astype(np.float64) * slope + intercept
    return _pixels_module(pydicom).apply_modality_lut(frame, ds).astype(np.float64)


def _window(ds, groups: tuple) -> Window | None:
    """The frame's first window (Frame VOI LUT in the functional groups, else the top level's), or None."""
    source = _group_item(groups, "FrameVOILUTSequence") or ds
    centre, width = _first(getattr(source, "WindowCenter", None)), _first(getattr(source, "WindowWidth", None))
    if centre is None or width is None or width < 1:
        return None
    return Window(centre, width, str(getattr(source, "VOILUTFunction", "LINEAR") or "LINEAR").upper())


def _palette_bits(ds) -> int:
    descriptor = getattr(ds, "RedPaletteColorLookupTableDescriptor", None)
    return int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 and descriptor[2] else 8


def display_frames(image: DicomImage, norm: Normalization | None = None) -> tuple[list[np.ndarray], str]:
    """8-bit frames ((H, W) gray or (H, W, 3) colour) and the name of the intensity mapping used.
    `norm` None: the file's own VOI LUT or window (per frame), else min..max; otherwise `norm` over the whole file."""
    if image.colour:  # RGB (pydicom converts YBR; palettes applied): display values; only the bit depth is mapped
        top = 2 ** image.colour_bits - 1
        return [unit_to_uint8(to_unit(f, 0, top)) for f in image.values], "stored"
    if norm is None:
        unit, used = own_voi(image)
    else:
        unit, used = to_unit(image.values, *value_range(norm, image.values)), str(norm)
    if image.monochrome1:
        unit = 1.0 - unit
    return [unit_to_uint8(u) for u in unit], used


def own_voi(image: DicomImage) -> tuple[np.ndarray, str]:
    """The file's VOI transform onto [0, 1]: VOI LUT Sequence, else each frame's window, else min..max."""
    ds, values = image.dataset, image.values
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        pydicom = require("pydicom", f"reading DICOM file {image.path}")
        out = _pixels_module(pydicom).apply_voi(values, ds, 0).astype(np.float64)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        # the LUT's own output range: descriptors often claim 16 bits for 12-bit data
        return to_unit(out, float(lut.min()), float(lut.max())), "voi-lut"
    if image.windows and all(w is not None for w in image.windows):
        mapped = [apply_window(frame, w) for frame, w in zip(values, image.windows)]
        names = list(dict.fromkeys(name for _, name in mapped))
        return np.stack([unit for unit, _ in mapped]), names[0] if len(names) == 1 else "window:per-frame"
    norm = Normalization("minmax")
    return to_unit(values, *value_range(norm, values)), str(norm)


def apply_window(values: np.ndarray, w: Window) -> tuple[np.ndarray, str]:
    if w.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - w.centre) / w.width)), f"sigmoid:{w.centre:g},{w.width:g}"
    if w.function == "LINEAR_EXACT":
        return to_unit(values, w.centre - w.width / 2, w.centre + w.width / 2), f"linear-exact:{w.centre:g},{w.width:g}"
    norm = Normalization("window", w.centre, w.width)
    return to_unit(values, *value_range(norm, values)), str(norm)


def dicom_window(path) -> Normalization | None:
    """The first WindowCenter/WindowWidth of a DICOM file's header, for a series read as a volume."""
    pydicom = require("pydicom", f"reading DICOM file {path}")
    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception:
        return None
    centre, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if centre is None or width is None or width < 1:
        return None
    return Normalization("window", centre, width)


def load_frames(path) -> list:
    """A DICOM file as 8-bit RGB PIL images, one per frame (what train.py --data reads)."""
    from PIL import Image

    frames, _ = display_frames(read_dicom(path))
    return [Image.fromarray(f).convert("RGB") for f in frames]


def _decode(ds, path: Path) -> np.ndarray:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return ds.pixel_array
    except Exception as e:  # no handler for the syntax, or damaged data
        if syntax is not None and getattr(syntax, "is_compressed", False):
            raise DicomError(f"cannot decode {path}: transfer syntax {syntax.name} ({syntax}); "
                             f"{DECODER_HINT}") from None
        raise DicomError(f"cannot read the pixels of DICOM file {path}: {first_line(e)}") from None


def _pixels_module(pydicom):
    """pydicom >= 3 has `pydicom.pixels`; 2.x kept the same functions in pixel_data_handlers.util."""
    try:
        from pydicom import pixels
        return pixels
    except ImportError:
        from pydicom.pixel_data_handlers import util
        return util


def _first(value) -> float | None:
    """DICOM multi-valued attributes (several windows): the first one, as a float."""
    if value is None or value == "":
        return None
    if not isinstance(value, (int, float, str)) and hasattr(value, "__getitem__"):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None

