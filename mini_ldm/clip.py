"""CLIP text encoders: SD 1.x's OpenAI CLIP ViT-L/14 and SD 2.x's OpenCLIP ViT-H/14.

Both are the same pre-norm causal transformer; they differ in width, depth, activation and in
which layer Stable Diffusion reads. The module attributes follow the Hugging Face layout
(`embeddings.token_embedding`, `encoder.layers.N.self_attn.q_proj`, `final_layer_norm`), which is
how SD1 single files and every diffusers folder store them; checkpoint.py maps SD2's OpenCLIP
single-file keys onto it.

SD2 conditions on the *penultimate* block of its 24, followed by `ln_final`. We build the model
with 23 layers and always apply the final norm, which computes exactly that (diffusers' SD2
text_encoder does the same), so block 24 and `text_projection` are never loaded.
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
    """ids (B, 77) -> context (B, 77, width) for the UNet's cross-attention."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width)

    def embed_tokens(self, ids):  # (B, T) -> (B, T, C)
        """Token embeddings alone: Textual Inversion splices its learned vectors in here."""
        return self.embeddings.token_embedding(ids)

    def forward(self, ids=None, token_embeds=None):
        x = self.embed_tokens(ids) if token_embeds is None else token_embeds  # (B, T, C)
        x = x + self.embeddings.position_embedding.weight[: x.shape[1]]
        for layer in self.encoder.layers:
            x = layer(x)
        return self.final_layer_norm(x)
