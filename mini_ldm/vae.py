"""AutoencoderKL: images (B, 3, H, W) in [-1, 1] <-> latents (B, 4, H/8, W/8).

Attribute names mirror the LDM checkpoint's `first_stage_model.*` keys (encoder.down.N.block.M,
decoder.up.N..., mid.attn_1.q as a 1x1 conv). Latents are multiplied by `scale` (0.18215 for SD)
so that they have roughly unit variance, which the UNet was trained on.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention


def posterior_std(logvar: torch.Tensor) -> torch.Tensor:
    """The standard deviation of the encoder's latent distribution, float32 (logvar is clamped by encode).
    A posterior sample is mean + posterior_std(logvar) * noise."""
    return torch.exp(0.5 * logvar.float())


@dataclass
class VAEConfig:
    ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per encoder level; the decoder has one more
    z_channels: int = 4
    scale: float = 0.18215


def norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q/k/v/proj_out are 1x1 convs as in the checkpoint."""

    def __init__(self, channels):
        super().__init__()
        self.norm = norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):  # (B, C, H, W)
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # (B, HW, C)
        out = attention(q, k, v, heads=1).transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        # Asymmetric padding (right and bottom only), then a stride-2 conv: what the weights expect.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(ch, ch), AttnBlock(ch), ResnetBlock(ch, ch)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class ResolutionLevel(nn.Module):
    """The blocks at one resolution of the encoder (`down.N`) or decoder (`up.N`), then the resampling to the
    next one (`downsample` / `upsample`, named as in the checkpoint; absent at the last level)."""

    def __init__(self, blocks, resample=None, resample_name=None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample is not None:
            setattr(self, resample_name, resample)
        self.resample_name = resample_name if resample is not None else None

    def forward(self, x):
        for block in self.block:
            x = block(x)
        return getattr(self, self.resample_name)(x) if self.resample_name else x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for level, cout in enumerate(chs):
            blocks = [ResnetBlock(cin if i == 0 else cout, cout) for i in range(cfg.num_res_blocks)]
            last = level == len(chs) - 1
            self.down.append(ResolutionLevel(blocks, None if last else Downsample(cout), "downsample"))
            cin = cout
        self.mid = Mid(chs[-1])
        self.norm_out = norm(chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], 2 * cfg.z_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, chs[-1], 3, padding=1)
        self.mid = Mid(chs[-1])
        # `up` is indexed by level like the encoder (up.0 is full resolution) but runs deepest first.
        up = []
        cin = chs[-1]
        for level in reversed(range(len(chs))):
            cout = chs[level]
            blocks = [ResnetBlock(cin if i == 0 else cout, cout) for i in range(cfg.num_res_blocks + 1)]
            up.insert(0, ResolutionLevel(blocks, Upsample(cout) if level != 0 else None, "upsample"))
            cin = cout
        self.up = nn.ModuleList(up)
        self.norm_out = norm(chs[0])
        self.conv_out = nn.Conv2d(chs[0], 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.cfg.ch_mult) - 1)

    def encode(self, images):
        """(B, 3, H, W) in [-1, 1] -> (mean, logvar) of the latent distribution, each (B, 4, H/8, W/8), unscaled."""
        mean, logvar = self.quant_conv(self.encoder(images)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents):
        """Unscaled latents (B, 4, h, w) -> images (B, 3, 8h, 8w), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(latents))
