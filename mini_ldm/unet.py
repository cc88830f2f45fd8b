"""The denoising UNet of Stable Diffusion 1.x/2.x and XL.

Attribute names mirror the original LDM checkpoint (`input_blocks.1.1.transformer_blocks.0.attn1.to_q`),
so a single-file checkpoint loads by name with no rename table.

Shape of SD (model_channels 320, channel_mult 1,2,4,4, two ResBlocks per level):
  input_blocks   conv_in, then per level [ResBlock (+ SpatialTransformer)] x 2 and a Downsample
  middle_block   ResBlock, SpatialTransformer, ResBlock
  output_blocks  per level, deepest first, [ResBlock on concat(h, skip) (+ SpatialTransformer)] x 3,
                 the last of each level followed by an Upsample
SD1 and SD2 differ only in context width (768 vs 1024), heads (8 vs head dim 64) and whether the
transformer's proj_in/proj_out are 1x1 convs (SD1) or Linear layers (SD2).

SDXL is the same network with three levels (320/640/1280), no attention at level 0, several transformer
blocks per SpatialTransformer (2 at level 1, 10 at level 2 and in the middle), context 2048, and one more
input: `label_emb`, an MLP on the vector `y` (2816 = the pooled text embedding, 1280, and six image-size
numbers, 256 each: `added_conditioning`) whose output is added to the time embedding.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import attention


@dataclass
class UNetConfig:
    in_channels: int = 4  # 9 for inpainting checkpoints: latents + mask + masked-image latents
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple = (0, 1, 2)  # levels that carry a SpatialTransformer
    heads: tuple = (8, 8, 8, 8)  # per level; SD2 uses channels // 64 (a head dim of 64)
    context_dim: int = 768
    linear_proj: bool = False  # SD2: Linear proj_in/proj_out instead of 1x1 convs
    upcast_attention: bool = False  # compute attention in fp32 under fp16/bf16 (SD2)
    transformer_depth: tuple | None = None  # blocks per SpatialTransformer, per level (SDXL: 0, 2, 10); None: 1
    middle_depth: int = 1  # blocks in the middle block's SpatialTransformer (SDXL: 10)
    adm_in_channels: int = 0  # width of SDXL's added conditioning `y` (2816); 0: no label_emb

    def depth(self, level: int) -> int:
        return 1 if self.transformer_depth is None else self.transformer_depth[level]


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), cos first as in the LDM code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


SIZE_EMBED_DIM = 256  # SDXL: each of the six size numbers gets a sinusoidal embedding this wide


def added_conditioning(pooled: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """SDXL's `y`: pooled text (B, 1280) and sizes (B, 6) = original (h, w), crop (top, left), target (h, w)
    -> (B, 1280 + 6 * 256), each number embedded like a timestep (cos first, no frequency shift)."""
    sizes_embedded = timestep_embedding(sizes.flatten(), SIZE_EMBED_DIM).reshape(sizes.shape[0], -1)  # (B, 1536)
    return torch.cat([pooled.float(), sizes_embedded.to(pooled.device)], dim=-1)


def norm(channels, eps=1e-5):
    return nn.GroupNorm(32, channels, eps=eps)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb_dim):
        super().__init__()
        self.in_layers = nn.Sequential(norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(norm(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):  # x (B, Cin, H, W), emb (B, E)
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Self-attention when context is None, else attention from x to the text context."""

    def __init__(self, dim, context_dim, heads, upcast):
        super().__init__()
        self.heads, self.upcast = heads, upcast
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, context=None):  # x (B, HW, C), context (B, T, Cctx)
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, upcast=self.upcast)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)  # the value half comes first
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, context_dim, heads, upcast):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, upcast)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, upcast)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Image features attend to themselves and to the prompt, as a sequence of H*W tokens."""

    def __init__(self, channels, context_dim, heads, linear_proj, upcast, depth=1):
        super().__init__()
        self.linear_proj = linear_proj
        self.norm = norm(channels, eps=1e-6)
        proj = (lambda: nn.Linear(channels, channels)) if linear_proj else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(channels, context_dim, heads, upcast)
                                                for _ in range(depth))
        self.proj_out = proj()

    def forward(self, x, context):  # x (B, C, H, W)
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.linear_proj:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.linear_proj:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear_proj:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(B, C, H, W)
        if not self.linear_proj:
            h = self.proj_out(h)
        return x + h


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        # `size`: the skip connection's size, which is not twice ours when a stride-2 conv met an odd size.
        up = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else F.interpolate(x, size=size, mode="nearest")
        return self.conv(up)


class TimestepSequential(nn.Sequential):
    """One numbered entry of input_blocks/output_blocks: layers that take (x, emb, context) as needed."""

    def forward(self, x, emb, context, upsample_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        base_channels, emb_dim = cfg.model_channels, cfg.model_channels * 4

        def transformer(ch, level, depth=None):
            return SpatialTransformer(ch, cfg.context_dim, cfg.heads[level], cfg.linear_proj, cfg.upcast_attention,
                                      cfg.depth(level) if depth is None else depth)

        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.adm_in_channels:  # SDXL: label_emb.0.0 / label_emb.0.2 in the checkpoint
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, base_channels, 3, padding=1))])
        skip_channels, ch = [base_channels], base_channels
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, mult * base_channels, emb_dim)]
                ch = mult * base_channels
                if level in cfg.attention_levels:
                    layers.append(transformer(ch, level))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepSequential(
            ResBlock(ch, ch, emb_dim), transformer(ch, last, cfg.middle_depth), ResBlock(ch, ch, emb_dim)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), mult * base_channels, emb_dim)]
                ch = mult * base_channels
                if level in cfg.attention_levels:
                    layers.append(transformer(ch, level))
                if level != 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        # Recompute each block's activations in the backward pass instead of keeping them: less memory for
        # training on small cards, the same gradients. Off for sampling (nothing to backpropagate).
        self.gradient_checkpointing = False

    def _block(self, block, h, emb, context, upsample_size=None):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, upsample_size, use_reentrant=False)
        return block(h, emb, context, upsample_size)

    def forward(self, x, t, context, y=None):
        """x (B, 4, h, w) latents, t (B,) or scalar timesteps, context (B, 77k, Cctx), and for SDXL
        y (B, adm_in_channels) from `added_conditioning` -> (B, 4, h, w)."""
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))  # (B, 4*base_channels)
        if self.cfg.adm_in_channels:
            emb = emb + self.label_emb(y.to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = self._block(block, h, emb, context)
            skips.append(h)
        h = self._block(self.middle_block, h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = self._block(block, h, emb, context, skips[-1].shape[-2:] if skips else None)
        return self.out(h)
