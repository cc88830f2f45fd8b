"""The one attention function shared by the text encoder, the UNet and the VAE.

Everything goes through torch's fused `scaled_dot_product_attention`, which picks a flash or
memory-efficient kernel on CUDA and a fused C++ kernel on CPU, so no model file carries its own
softmax(QK^T)V.
"""
import torch.nn.functional as F


def attention(q, k, v, heads: int, causal: bool = False, upcast: bool = False):
    """Multi-head attention over (B, T, C) tensors; returns (B, T, C).

    upcast: compute in float32 even when the model runs in half precision. SD 2.x's UNet
    overflows in fp16 attention (the original code sets ATTN_PRECISION=fp32 for it).
    """
    B, T, C = q.shape
    dtype = q.dtype

    def split(x):  # (B, S, C) -> (B, heads, S, C // heads)
        return x.view(B, -1, heads, C // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, heads, T, C // heads)
    return out.transpose(1, 2).reshape(B, T, C).to(dtype)
