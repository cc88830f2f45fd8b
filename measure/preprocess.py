"""8-bit RGB images -> the (B, 3, 299, 299) tensor Inception-v3 sees, the way FID tools make it.

Two resize modes, because they give different FIDs for the same images:
- "antialias": bilinear with antialiasing (`F.interpolate(..., antialias=True)`), torchmetrics >= 1.0's default;
- "tf1": TensorFlow 1.x `resize_bilinear` (align_corners=False, no half-pixel centres, no antialiasing), what the
  original TF FID code, torch-fidelity and torchmetrics 0.x (the paper's numbers) do. Downscaling a 512 px image
  this way reads only about a third of its pixels.
Then `(x - 128) / 128`, as in the TF graph.

`zscore_paper` is the per-image normalisation the paper's evaluation script applied before FID.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .evaluate_settings import RESIZE_MODES
from .inception import INPUT_SIZE


def zscore_paper(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> uint8: z-score over all channels and pixels (population std), then `* 64 + 128`,
    clipped to [0, 255] and truncated to 8 bits as numpy's astype(uint8) does. A constant image (std 0) has
    no contrast to normalise and becomes 128 everywhere instead of NaN."""
    x = rgb.astype(np.float64)
    std = x.std()
    z = (x - x.mean()) / std if std > 0 else np.zeros_like(x)
    return np.clip(z * 64 + 128, 0, 255).astype(np.uint8)


def to_uint8_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor."""
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, (rgb.dtype, rgb.shape)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def resize_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x bilinear resize of a float (B, C, H, W) tensor, align_corners=False.

    Output pixel i samples the input at i * (in / out) (no half-pixel offset), between floor and floor + 1
    (clamped at the border). The scale is rounded to float32 as TF does, so the sample positions match it.
    """
    def positions(n_in: int):
        scale = float(torch.tensor(n_in / size, dtype=torch.float32))
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * scale
        lo = pos.long()  # floor: positions are >= 0
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, pos - lo.to(x.dtype)

    ylo, yhi, dy = positions(x.shape[2])
    xlo, xhi, dx = positions(x.shape[3])
    top, bottom = x[:, :, ylo, :], x[:, :, yhi, :]
    top = top[..., xlo] + (top[..., xhi] - top[..., xlo]) * dx
    bottom = bottom[..., xlo] + (bottom[..., xhi] - bottom[..., xlo]) * dx
    return top + (bottom - top) * dy.view(1, 1, -1, 1)


def inception_input(images: torch.Tensor, resize: str = "antialias", dtype=torch.float32) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, 299, 299) float, resized and scaled to [-1, 1)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}")
    assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, (images.dtype, images.shape)
    x = images.to(dtype)
    if resize == "tf1":
        x = resize_tf1(x, INPUT_SIZE)
    else:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return (x - 128) / 128
