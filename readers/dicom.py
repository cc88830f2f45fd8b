"""2-D DICOM files -> display pixels, as a DICOM viewer shows them.

The chain is the standard's, and skipping a step gives images that look plausible and are wrong:
stored value -> modality LUT (RescaleSlope * x + RescaleIntercept, or a Modality LUT Sequence)
-> VOI LUT Sequence, else the first WindowCenter/WindowWidth, else the file's own min..max
-> MONOCHROME1 inverted (there white means low), so that bone is white in every output.
A multi-frame file gives one image per frame. pydicom is imported only here, only when a DICOM is met.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mini_ldm.errors import UserError
from mini_ldm.io import first_line

from .extras import require
from .intensity import Normalization, to_unit, unit_to_uint8, value_range

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
DECODER_HINT = "install a decoder for it (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm)"


class DicomError(UserError):
    """A DICOM file that cannot be read or decoded; the message names the file."""


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


@dataclass
class DicomImage:
    path: Path
    values: np.ndarray  # (F, H, W) after the modality LUT, float64; (F, H, W, 3) stored values when colour
    dataset: object  # the pydicom Dataset, for its VOI attributes
    colour: bool

    @property
    def monochrome1(self) -> bool:
        return str(getattr(self.dataset, "PhotometricInterpretation", "")).strip() == "MONOCHROME1"


def read_dicom(path) -> DicomImage:
    """Read a 2-D (or multi-frame) DICOM file's pixels with the modality LUT applied."""
    path = Path(path)
    pydicom = require("pydicom", f"reading DICOM file {path}")
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as e:  # pydicom raises many types for damaged files
        raise DicomError(f"cannot read DICOM file {path}: {first_line(e)}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DicomError(f"DICOM file {path} holds no image (no Pixel Data); leave it out of the folder")
    pixels = _decode(ds, path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    colour = int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1
    if frames == 1:
        pixels = pixels[None]  # always (F, H, W[, 3])
    if colour:
        return DicomImage(path, pixels, ds, True)
    values = _pixels_module(pydicom).apply_modality_lut(pixels, ds).astype(np.float64)
    return DicomImage(path, values, ds, False)


def display_frames(image: DicomImage, norm: Normalization | None = None) -> tuple[list[np.ndarray], str]:
    """8-bit frames ((H, W) gray or (H, W, 3) colour) and the name of the intensity mapping used.
    `norm` None: the file's own VOI LUT or window, else min..max; otherwise `norm` over the whole file."""
    if image.colour:  # RGB (pydicom converts YBR): already display values; only the bit depth is mapped
        bits = int(getattr(image.dataset, "BitsStored", 8) or 8)
        return [unit_to_uint8(to_unit(f, 0, 2 ** bits - 1)) for f in image.values], "stored"
    if norm is None:
        unit, used = own_voi(image)
    else:
        unit, used = to_unit(image.values, *value_range(norm, image.values)), str(norm)
    if image.monochrome1:
        unit = 1.0 - unit
    return [unit_to_uint8(u) for u in unit], used


def own_voi(image: DicomImage) -> tuple[np.ndarray, str]:
    """The file's VOI transform onto [0, 1]: VOI LUT Sequence, else first window, else min..max."""
    ds, values = image.dataset, image.values
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        pydicom = require("pydicom", f"reading DICOM file {image.path}")
        out = _pixels_module(pydicom).apply_voi(values, ds, 0).astype(np.float64)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        # the LUT's own output range: descriptors often claim 16 bits for 12-bit data
        return to_unit(out, float(lut.min()), float(lut.max())), "voi-lut"
    centre, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if centre is not None and width is not None and width >= 1:
        function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width)), f"sigmoid:{centre:g},{width:g}"
        if function == "LINEAR_EXACT":
            return to_unit(values, centre - width / 2, centre + width / 2), f"linear-exact:{centre:g},{width:g}"
        norm = Normalization("window", centre, width)
        return to_unit(values, *value_range(norm, values)), str(norm)
    norm = Normalization("minmax")
    return to_unit(values, *value_range(norm, values)), str(norm)


def dicom_window(path) -> Normalization | None:
    """The first WindowCenter/WindowWidth of a DICOM file's header, for a series read as a volume."""
    pydicom = require("pydicom", f"reading DICOM file {path}")
    try:
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

