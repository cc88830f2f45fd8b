"""Where sampling starts, one function per workflow: text-to-image, img2img and inpainting.

Each returns a `Start`: the first sample and the schedule to run from it, plus what the workflow adds to
the denoiser (the 9-channel UNet's extra input, base-model inpainting's known latents) and to the final
image (the init image pasted back outside the feathered mask). Random draws come in diffusers' order, so
the same seed gives diffusers' image: txt2img draws the noise; img2img and inpainting draw the VAE posterior
sample of the init image, then the noise, then (9-channel UNet only) the posterior of the masked image.

Pixel conventions follow diffusers' VaeImageProcessor, so img2img starts from the very same tensor:
8-bit RGB -> float32 / 255 -> 2x - 1 (`to_tensor`).
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import images as imaging
from . import samplers
from .denoisers import KeepKnownLatents
from .samplers import Schedule


@dataclass
class Start:
    x: torch.Tensor                            # (n, 4, h, w) VE sample at schedule.sigmas[0]
    schedule: Schedule                         # the schedule left to run (img2img runs its last part)
    unet_extra: torch.Tensor | None = None     # (n, 5, h, w) mask + masked-image latents, 9-channel UNet only
    keep_known: KeepKnownLatents | None = None  # base-model inpainting: the init latents outside the mask
    init_image: Image.Image | None = None      # inpainting: pasted back where feathered_mask is 0
    feathered_mask: torch.Tensor | None = None  # (1, 1, H, W) in [0, 1], 1 = generated pixels


def txt2img(sd, shape: tuple, schedule: Schedule, generator) -> Start:
    """Pure noise at the schedule's first noise level (drawn on the CPU: the same on any device). `generator`
    is one generator for the whole batch, or a list of one per batch row (each row drawn from its own)."""
    noise = samplers.randn(shape, generator, torch.float32, "cpu")
    start = Start(noise.to(sd.device) * schedule.init_noise_sigma, schedule)
    if sd.is_inpainting_model:  # text-to-image on an inpainting UNet: repaint everything
        n, _, h, w = shape
        f = sd.vae.downscale
        blank = torch.ones((1, 1, h * f, w * f))
        start.unet_extra = inpainting_channels(sd, torch.zeros((1, 3, h * f, w * f)), blank, generator, n)
    return start


def img2img(sd, image: Image.Image, strength: float, schedule: Schedule, generator, shape: tuple) -> Start:
    """The init image's latents, noised to the level where the last `strength` of the schedule begins."""
    pixels = to_tensor(image)
    start, _, _ = _noised_init(sd, pixels, strength, schedule, generator, shape)
    if sd.is_inpainting_model:  # no mask: the inpainting UNet is told to repaint everything
        blank = torch.ones((1, 1, image.height, image.width))
        start.unet_extra = inpainting_channels(sd, pixels, blank, generator, shape[0])
    return start


def inpaint(sd, image: Image.Image, mask: Image.Image, blur_px: int, strength: float, schedule: Schedule,
            generator, shape: tuple) -> Start:
    """img2img inside the mask. A 9-channel inpainting UNet sees the mask as input; a base model has the
    known latents re-imposed outside it at every step (KeepKnownLatents). Either way the init image's own
    pixels are pasted back outside the feathered mask after decoding."""
    pixels = to_tensor(image)
    binary = binary_mask(mask, image.height, image.width)
    start, init, noise = _noised_init(sd, pixels, strength, schedule, generator, shape)
    if sd.is_inpainting_model:
        start.unet_extra = inpainting_channels(sd, pixels, binary, generator, shape[0])
    else:
        keep = 1.0 - latent_mask(binary, sd.vae.downscale).to(sd.device)
        start.keep_known = KeepKnownLatents(keep, init, noise)
    start.init_image, start.feathered_mask = image, blur_mask(binary, blur_px)
    return start


def _noised_init(sd, pixels, strength, schedule, generator, shape):
    """(Start, init latents or None, noise): the truncated schedule and its first sample.

    An inpainting UNet at strength 1 starts from pure noise (it sees the image through its extra input),
    as diffusers' StableDiffusionInpaintPipeline; everything else starts from the image.
    """
    truncated = samplers.truncate(schedule, strength)
    whole_schedule = len(truncated.timesteps) == len(schedule.timesteps)
    init = None
    if not (sd.is_inpainting_model and whole_schedule):
        init = sd.encode_image(pixels, generator).expand(shape[0], -1, -1, -1)
    noise = torch.randn(shape, generator=generator).to(sd.device)
    if init is None:
        x = noise * truncated.init_noise_sigma
    elif len(truncated.timesteps) == 0:
        x = init  # strength 0 (or too small to re-run one step): the image through the VAE
    else:
        x = samplers.add_noise(init, noise, truncated.sigmas[0])
    return Start(x, truncated), init, noise


def inpainting_channels(sd, pixels, binary, generator, n: int) -> torch.Tensor:
    """The 5 extra channels of an inpainting UNet: the mask at latent size (nearest) and the latents of
    the image with the repainted part set to 0 (grey), as diffusers' StableDiffusionInpaintPipeline."""
    generators = generator if isinstance(generator, (list, tuple)) else [generator]  # a list: one draw per row
    masked = torch.cat([sd.encode_image(pixels * (binary < 0.5), g) for g in generators])
    small = F.interpolate(binary, size=masked.shape[-2:]).to(sd.device).expand(len(masked), -1, -1, -1)
    return torch.cat([small, masked], dim=1).to(sd.dtype).repeat(n // len(masked), 1, 1, 1)


# --- pixels and masks as tensors -----------------------------------------------------------------

def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) float32 in [-1, 1], with diffusers' exact arithmetic."""
    pixels = np.asarray(image).astype(np.float32) / 255.0
    return 2.0 * torch.from_numpy(pixels).permute(2, 0, 1)[None] - 1.0


def binary_mask(mask: Image.Image, height: int, width: int) -> torch.Tensor:
    """Grey-scale mask -> (1, 1, H, W) float of 0/1, 1 = repaint (white). A mask of another size than the
    image is resized to it first; grey levels round at the middle (>= 128 repaints, diffusers' rule)."""
    values = np.asarray(imaging.resize(mask, height, width)).astype(np.float32) / 255.0
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
