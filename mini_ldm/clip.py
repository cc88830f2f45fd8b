"""CLIP text encoders: SD 1.x's OpenAI CLIP ViT-L/14, SD 2.x's OpenCLIP ViT-H/14, SDXL's ViT-L/14 + ViT-bigG/14.

Both are the same pre-norm causal transformer; they differ in width, depth, activation and in
which layer Stable Diffusion reads. The module attributes follow the Hugging Face layout
(`embeddings.token_embedding`, `encoder.layers.N.self_attn.q_proj`, `final_layer_norm`), which is
how SD1 single files and every diffusers folder store them; checkpoint.py maps SD2's OpenCLIP
single-file keys onto it.

SD2 conditions on the *penultimate* block of its 24, followed by `ln_final`. We build the model
with 23 layers and always apply the final norm, which computes exactly that (diffusers' SD2
text_encoder does the same), so block 24 and `text_projection` are never loaded.

SDXL reads both of its encoders differently (easy to get wrong): the context is the penultimate block's
output *without* the final norm (`context_skip=1, context_norm=False`), and bigG also gives a pooled vector:
final norm of the last block at the first end-of-text token, times `text_projection` (`projection_dim`).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention


@dataclass
class TextConfig:
    vocab_size: int = 49408
    max_length: int = 77  # positions: BOS + 75 tokens + EOS
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    activation: str = "quick_gelu"  # OpenAI CLIP (SD1); OpenCLIP (SD2) uses exact "gelu"
    context_skip: int = 0  # the context is the output of the block this many before the last (SDXL: 1)
    context_norm: bool = True  # the context goes through final_layer_norm (SD1, SD2; not SDXL)
    projection_dim: int = 0  # SDXL's bigG: a pooled vector through text_projection (1280); 0: none
    eos_id: int = 49407  # the pooled vector is read at the first end-of-text token


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x):  # (B, T, C)
        # Causal: CLIP's text tower was trained with each token seeing only those before it.
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, causal=True)
        return self.out_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width)
        self.act = quick_gelu if cfg.activation == "quick_gelu" else F.gelu

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width)
        self.self_attn = SelfAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.width)


class Encoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))


class TextEncoder(nn.Module):
    """ids (B, 77) -> context (B, 77, width) for the UNet's cross-attention (and SDXL's pooled vector)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width)
        if cfg.projection_dim:  # stored as nn.Linear (x @ W.T), the Hugging Face layout
            self.text_projection = nn.Linear(cfg.width, cfg.projection_dim, bias=False)

    def embed_tokens(self, ids):  # (B, T) -> (B, T, C)
        """Token embeddings alone: Textual Inversion splices its learned vectors in here."""
        return self.embeddings.token_embedding(ids)

    def forward(self, ids=None, token_embeds=None):
        """-> context (B, T, C)."""
        return self.encode(ids, token_embeds)[0]

    def encode(self, ids=None, token_embeds=None):
        """-> (context (B, T, C), pooled (B, projection_dim) or None). The pooled vector needs the ids, to
        find each row's first end-of-text token."""
        x = self.embed_tokens(ids) if token_embeds is None else token_embeds  # (B, T, C)
        x = x + self.embeddings.position_embedding.weight[: x.shape[1]]
        keep = len(self.encoder.layers) - self.cfg.context_skip  # blocks whose output makes the context
        context = x  # (Hugging Face's hidden_states[0], when no block is kept)
        for k, layer in enumerate(self.encoder.layers):
            x = layer(x)
            if k < keep:
                context = x
        context = self.final_layer_norm(context) if self.cfg.context_norm else context
        if not self.cfg.projection_dim:
            return context, None
        eos = (ids == self.cfg.eos_id).int().argmax(dim=-1)  # (B,) first end-of-text position
        pooled = self.final_layer_norm(x)[torch.arange(x.shape[0], device=x.device), eos]  # (B, C)
        return context, self.text_projection(pooled)
