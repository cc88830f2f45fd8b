"""Images in and out of the pipeline: init images and masks for img2img/inpainting, grids and strips.

Pixel conventions follow diffusers' VaeImageProcessor, so img2img starts from the very same tensor:
8-bit RGB -> float32 / 255 -> 2x - 1, resized (Lanczos) only when the size must change.
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .errors import UserError


def open_image(source, flag: str, mode: str) -> Image.Image:
    """A PIL image, or a path to one, converted to `mode` ("RGB" or "L"); `flag` names it in errors."""
    if isinstance(source, Image.Image):
        return source.convert(mode)
    path = check_image_file(source, flag)
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{flag} {path}: not a readable image ({e})") from None


def check_image_file(source, flag: str) -> Path:
    """Refuse, in the flag's words, a path that is not an image file: missing, a folder, or not an image
    Pillow can identify (only the header is read, so this is cheap enough to run before a model loads)."""
    path = Path(source)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give one image file (PNG, JPEG, ...)")
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{flag} {path}: not a readable image ({e})") from None
    return path


def fit_size(image: Image.Image, multiple: int) -> tuple:
    """(height, width) of `image` rounded down to a multiple the UNet accepts (at least one multiple)."""
    return tuple(max(multiple, v - v % multiple) for v in (image.height, image.width))


def resize(image: Image.Image, height: int, width: int) -> Image.Image:
    """Lanczos, as diffusers' image processor; a no-op (the same pixels) when the size already matches."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=Image.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) float32 in [-1, 1], with diffusers' exact arithmetic."""
    pixels = np.asarray(image).astype(np.float32) / 255.0
    return 2.0 * torch.from_numpy(pixels).permute(2, 0, 1)[None] - 1.0


def binary_mask(mask: Image.Image, height: int, width: int) -> torch.Tensor:
    """Grey-scale mask -> (1, 1, H, W) float of 0/1, 1 = repaint (white). A mask of another size than the
    image is resized to it first; grey levels round at the middle (>= 128 repaints, diffusers' rule)."""
    values = np.asarray(resize(mask, height, width)).astype(np.float32) / 255.0
    return torch.from_numpy((values >= 0.5).astype(np.float32))[None, None]


def blur_mask(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Feather a 0/1 mask (1, 1, H, W) over `px` pixels: a separable Gaussian (sigma px/2) cut off at px.

    The cut-off is what makes "outside the blurred mask" a hard set: every pixel more than px away
    from the mask (in x or y) is exactly 0, so the init image shows there unchanged. The weights are
    integers and the sums float64, so they are exact: deep inside the mask the result is exactly 1.
    """
    if px <= 0:
        return mask
    x = torch.arange(-px, px + 1, dtype=torch.float64)
    kernel = torch.round(1000 * torch.exp(-0.5 * (x / (px / 2)) ** 2))
    out = F.conv2d(mask.double(), kernel.view(1, 1, 1, -1), padding=(0, px))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(px, 0))
    return (out / kernel.sum() ** 2).float()


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """0/1 pixel mask (1, 1, H, W) -> 0/1 latent mask (1, 1, H/f, W/f): a latent cell is repainted when any
    of its f x f pixels is, so every masked pixel is regenerated (the pixel composite trims the rest)."""
    return F.max_pool2d(mask, factor)


def composite(generated: Image.Image, init: Image.Image, feathered_mask: torch.Tensor) -> Image.Image:
    """generated where the mask is 1, init where it is 0, blended between; mask (1, 1, H, W) in [0, 1].
    Where the mask is 0 the result is init's own bytes: init * 1 + g * 0 is exact in float32."""
    a = feathered_mask[0, 0].numpy()[..., None].astype(np.float32)
    gen, base = np.asarray(generated).astype(np.float32), np.asarray(init).astype(np.float32)
    return Image.fromarray(np.round(base * (1 - a) + gen * a).astype(np.uint8))


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
