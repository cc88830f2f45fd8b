"""Image folders in: every file a user may hand us, as plain 8-bit RGB.

Medical exports are awkward (16-bit grayscale PNG/TIFF, RGBA, palette, CMYK, 2-D DICOM), so `load_image`
turns all of them into plain 8-bit RGB, the only thing the SD VAE was trained on. train.py, evaluate.py and
classify.py read folders through `find_images` here, so all three see the same files in the same order.
"""
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mini_ldm.errors import UserError

from .dicom import DicomError, is_dicom, load_frames as load_dicom_frames
from .volumes import volume_suffix

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# the file list that prepare.py and sample.py's dataset jobs (mini_ldm/dataset/manifest.py) write beside their
# images: not an image, but expected there, so skipped without a warning
LISTING = "metadata.csv"

Warn = Callable[[str], None]


class DataError(UserError):
    """A problem with the user's images; the message is one line that says what to do."""


def warn_stderr(message: str) -> None:
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------- finding and reading images

def find_images(root, warn: Warn = warn_stderr, tool: str = "train.py --data") -> list[Path]:
    """All images (and 2-D DICOM files) under `root` (recursively), sorted by relative path so every run
    sees the same order. A 3-D volume is an error that points to prepare.py; `tool` (what reads the folder,
    say "evaluate.py") words the errors."""
    root = Path(root)
    if volume_suffix(root):
        raise _volume_error(root, root, tool)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder; pass the folder holding your images")
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    # Hidden files and folders (.DS_Store, .ipynb_checkpoints/) are tool clutter, not user data: skip them silently.
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    for p in files:
        if volume_suffix(p):
            raise _volume_error(p, root, tool)
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS or is_dicom(p)]
    stems = {p.with_suffix("") for p in images}
    image_set = set(images)
    for p in files:
        if p in image_set:
            continue
        if p.suffix.lower() == ".txt" and p.with_suffix("") in stems:
            continue  # a caption beside its image, read by load_dataset
        if p == root / LISTING:
            continue  # the listing prepare.py and sample.py's dataset jobs write beside their images
        warn(f"skipping {p.relative_to(root)}: not an image")
    if not images:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS)) + ", DICOM"
        raise DataError(f"no images found in {root} (looked for {exts}, subfolders included); {tool} needs a "
                        "folder of images: put them there or give another folder")
    return images


def _volume_error(path: Path, root: Path, tool: str) -> DataError:
    return DataError(f"{path} is a 3-D volume and {tool} reads 2-D images: turn the scans into PNGs with "
                     f"python prepare.py {root} OUT (see prepare.py --help), then give {tool} OUT")


def load_frames(path) -> list[Image.Image]:
    """Every image a file holds, as 8-bit RGB: one per frame of a DICOM file, else just the image."""
    if Path(path).suffix.lower() not in IMAGE_EXTENSIONS and is_dicom(path):
        try:
            return load_dicom_frames(path)  # modality LUT, VOI window, MONOCHROME1 inverted
        except DicomError as e:
            raise DataError(str(e)) from None
    return [load_image(path)]


def load_image(path) -> Image.Image:
    """Read any supported image as 8-bit RGB (a DICOM file: its first frame). Raises DataError naming the
    file if it cannot be read."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS and is_dicom(path):
        return load_frames(path)[0]
    try:
        with Image.open(path) as im:
            im.load()  # multi-page TIFF: the first page
            im = ImageOps.exif_transpose(im)  # phone/camera photos (e.g. of slides) store rotation in EXIF
            return to_rgb(im)
    except UnidentifiedImageError as e:  # its own message repeats the path
        raise DataError(f"cannot read image {path}: not a readable image (empty, corrupt or wrong extension)") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports truncated/damaged files as OSError or SyntaxError
        raise DataError(f"cannot read image {path}: {e}") from e


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":
        return _high_bit_depth_to_rgb(im)
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        # Composite on black, not white: medical images have black backgrounds (outside the body, empty
        # slide regions after export), so transparent padding should look like what surrounds the anatomy.
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")  # L, P, 1, CMYK, YCbCr, RGB


def _high_bit_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grayscale -> 8-bit by stretching the image's own min..max to 0..255.

    There is no shared display window we could know (DICOM exports put values anywhere in 0..65535),
    and a plain `convert("L")` clips everything above 255 to white, so per-image min/max is the
    safest choice. A constant image has no contrast to stretch and becomes black.
    """
    arr = np.asarray(im).astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return Image.new("RGB", im.size)
    lo, hi = arr[finite].min(), arr[finite].max()
    arr = np.where(finite, arr, lo)
    if hi > lo:
        arr = (arr - lo) * (255.0 / (hi - lo))
    else:
        arr = np.zeros_like(arr)
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").convert("RGB")


