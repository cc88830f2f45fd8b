"""Images in and out of the pipeline, as PIL images: init images and masks opened and checked in their flag's
words, resized as diffusers resizes them (Lanczos, only when the size must change), grids and strips.

Pillow only, no torch: the CLIs check --init-image and --mask with the other flags, before torch is imported.
Pixels become tensors where sampling starts (starts.py)."""
import math
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .errors import UserError


def open_image(source, flag: str, mode: str) -> Image.Image:
    """A PIL image, or a path to one, converted to `mode` ("RGB" or "L"); `flag` names it in errors."""
    if isinstance(source, Image.Image):
        return source.convert(mode)
    with _opened(source, flag) as im:
        return im.convert(mode)


def check_image_file(source, flag: str) -> Path:
    """Refuse, in the flag's words, a path that is not an image file: missing, a folder, or not an image
    Pillow can identify (only the header is read, so this is cheap enough to run before a model loads)."""
    with _opened(source, flag):
        return Path(source)


@contextmanager
def _opened(source, flag: str):
    """The image file at `source`, opened (its header read); a path that is missing or a folder, or a file that
    cannot be read, now or while the block decodes it, is refused in the flag's words."""
    path = Path(source)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give one image file (PNG, JPEG, ...)")
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        with Image.open(path) as im:
            yield im
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{flag} {path}: not a readable image ({e})") from None


def fit_size(image: Image.Image, multiple: int) -> tuple:
    """(height, width) of `image` rounded down to a multiple the UNet accepts (at least one multiple)."""
    return tuple(max(multiple, v - v % multiple) for v in (image.height, image.width))


def resize(image: Image.Image, height: int, width: int) -> Image.Image:
    """Lanczos, as diffusers' image processor; a no-op (the same pixels) when the size already matches."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=Image.LANCZOS)


# --- grids and strips ----------------------------------------------------------------------------

def grid(images: list, cols: int | None = None, labels: list | None = None) -> Image.Image:
    """Images of one size in rows of `cols` (default: a near-square layout). With labels, each column
    gets a white band above its first-row image with its label (interpolation strips)."""
    if not images:
        raise ValueError("grid of no images")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    band = _label_height(h) if labels else 0
    sheet = Image.new("RGB", (cols * w, band + rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im.convert("RGB"), ((i % cols) * w, band + (i // cols) * h))
    if labels:
        draw = ImageDraw.Draw(sheet)
        font = _font(band)
        for c, text in enumerate(labels[:cols]):
            box = draw.textbbox((0, 0), text, font=font)
            x = c * w + max(0, (w - (box[2] - box[0])) // 2)
            draw.text((x, (band - (box[3] - box[1])) // 2 - box[1]), text, fill="black", font=font)
    return sheet


def _label_height(image_height: int) -> int:
    return max(12, image_height // 10)


def _font(band: int):
    return font(max(8, int(band * 0.6)))


def font(size: int):
    """Pillow's own font at `size` pixels (a fixed small bitmap font on Pillow < 10.1)."""
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()
