"""The paper's training augmentations (its augmentation.py, albumentations 1.x), written in torch for a batch.

Each image of a batch draws its own parameters from one torch.Generator, so a seed fixes them all. Images
are float (B, 3, H, W) in [0, 1] (no ImageNet normalisation, as in the paper); every step clips back to
[0, 1], as albumentations does for float images. The steps and their order are albumentations':
horizontal flip, Gaussian noise, random gamma, shift-scale-rotate, brightness/contrast, optical
distortion, channel dropout.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Recipe:
    """Probabilities (p_*) and ranges of one augmentation level."""
    p_flip: float
    p_noise: float
    noise_var: float          # variance ~ U(0, noise_var) per image; noise N(0, var) per pixel and channel
    p_gamma: float
    gamma: tuple              # gamma ~ U(lo, hi); x -> x ** gamma
    p_affine: float
    shift: float              # fraction of the size, per axis
    scale: float              # zoom ~ 1 + U(-scale, scale)
    rotate: float             # degrees ~ U(-rotate, rotate)
    p_brightness_contrast: float
    brightness: float = 0.2   # x -> x * (1 + U(-c, c)) + U(-b, b), albumentations' defaults
    contrast: float = 0.2
    p_distort: float = 0.0
    distort: float = 0.05     # barrel/pincushion coefficient k ~ U(-d, d)
    p_channel_dropout: float = 0.0


RECIPES = {
    "light": Recipe(p_flip=0.2, p_noise=0.1, noise_var=0.01, p_gamma=0.2, gamma=(0.8, 1.2), p_affine=0.2,
                    shift=0.03, scale=0.05, rotate=25, p_brightness_contrast=0.2, p_distort=0.2,
                    p_channel_dropout=0.2),
    "heavy": Recipe(p_flip=0.5, p_noise=1.0, noise_var=0.1, p_gamma=1.0, gamma=(0.1, 1.0), p_affine=1.0,
                    shift=0.1, scale=0.2, rotate=45, p_brightness_contrast=1.0, p_distort=1.0,
                    p_channel_dropout=0.8),
}


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo


def _chosen(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    """(n, 1, 1, 1) bool: which images this step applies to. Always drawn, so every step uses the same
    number of random numbers whatever p is."""
    return (torch.rand(n, generator=g, device=g.device) < p).view(n, 1, 1, 1)


def augment(x: torch.Tensor, level: str, g: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the same, augmented at `level` ('none' returns x)."""
    if level == "none":
        return x
    r, n = RECIPES[level], len(x)
    x = torch.where(_chosen(n, r.p_flip, g), x.flip(-1), x)
    sigma = _uniform(n, 0, r.noise_var, g).sqrt().view(n, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype) * sigma
    x = torch.where(_chosen(n, r.p_noise, g), (x + noise).clamp(0, 1), x)
    gamma = _uniform(n, *r.gamma, g).view(n, 1, 1, 1)
    x = torch.where(_chosen(n, r.p_gamma, g), x.clamp_min(0) ** gamma, x)
    x = torch.where(_chosen(n, r.p_affine, g), shift_scale_rotate(x, r, g), x)
    alpha = 1 + _uniform(n, -r.contrast, r.contrast, g).view(n, 1, 1, 1)
    beta = _uniform(n, -r.brightness, r.brightness, g).view(n, 1, 1, 1)
    x = torch.where(_chosen(n, r.p_brightness_contrast, g), (x * alpha + beta).clamp(0, 1), x)
    k = _uniform(n, -r.distort, r.distort, g)
    x = torch.where(_chosen(n, r.p_distort, g), optical_distortion(x, k), x)
    dropped = torch.randint(0, x.shape[1], (n,), generator=g, device=g.device)
    keep = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1) != dropped.view(n, 1, 1, 1)
    return torch.where(_chosen(n, r.p_channel_dropout, g), x * keep, x)


def shift_scale_rotate(x: torch.Tensor, r: Recipe, g: torch.Generator) -> torch.Tensor:
    """Random `affine` per image: angle U(-r.rotate, r.rotate), zoom 1 + U(-r.scale, r.scale), shift
    U(-r.shift, r.shift) of the size per axis."""
    n = len(x)
    degrees, zoom = _uniform(n, -r.rotate, r.rotate, g), 1 + _uniform(n, -r.scale, r.scale, g)
    return affine(x, degrees, zoom, _uniform(2 * n, -r.shift, r.shift, g).view(n, 2))


def affine(x: torch.Tensor, degrees: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate by `degrees` (B,) and zoom by `zoom` (B,) about the centre, then shift by `shift` (B, 2) (x, y
    fractions of the size); bilinear, borders mirrored. (torch's reflection repeats the edge pixel, OpenCV's
    reflect-101 that albumentations uses does not: a one-pixel difference at the border.)"""
    angle, shift = degrees * math.pi / 180, shift * 2  # grid units: the image spans [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # output grid point p samples the input at R(-angle) (p - shift) / zoom
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    offset = -(rotation @ shift.unsqueeze(-1))  # (B, 2, 1)
    theta = torch.cat([rotation, offset], -1).to(x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def optical_distortion(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """OpenCV's radial lens model with k1 = k2 = k (B,), focal length = the image size, centre = the image
    centre (albumentations' OpticalDistortion: its shift rounds to 0 pixels): output pixel at normalised
    position u (|u| <= 1/2) samples the input at u (1 + k r^2 + k r^4), r = |u|; borders mirrored as in
    `affine`."""
    n, _, h, w = x.shape
    identity = torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(n, 2, 3)
    grid = F.affine_grid(identity, [n, 1, h, w], align_corners=False)  # (B, H, W, 2) in [-1, 1]
    r2 = (grid / 2).square().sum(-1, keepdim=True)  # grid / 2 = u
    k = k.to(x.dtype).view(n, 1, 1, 1)
    return F.grid_sample(x, grid * (1 + k * r2 + k * r2 * r2), mode="bilinear", padding_mode="reflection",
                         align_corners=False)
