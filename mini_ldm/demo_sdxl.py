"""A tiny random-weight SDXL for `--demo --sdxl` runs, written once as a real SDXL single file.

The SDXL layout at toy sizes: two text encoders (CLIP-L in Hugging Face names, OpenCLIP bigG with its
text_projection, so a pooled vector), a UNet with no attention at its first level, two transformer blocks per
attention and the added conditioning `label_emb` (pooled vector + six size numbers). It is random: its images
are noise. It checks that the SDXL code paths (both encoders, the pooled vector, size conditioning, an
embedding file with clip_l and clip_g) run on a fresh machine, loaded through the normal loader as `sdxl`.
"""
import json
from pathlib import Path

import torch

from .checkpoint import CONFIG_METADATA
from .clip import TextConfig, TextEncoder
from .demo import DEMO_DIR
from .families import SDXL, UNET_PREFIX, VAE_PREFIX
from .io import safetensors_bytes, write_bytes_atomic
from .key_renames import open_clip_names
from .unet import SIZE_EMBED_DIM, UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

DEMO_SDXL_MODEL = DEMO_DIR / "tiny-random-sdxl.safetensors"
SDXL_DEMO_SIZE = 64  # pixels; the tiny VAE downsamples by 2, so latents are 32x32
SDXL_DEMO_SEED = 1234  # fixed, so every demo builds the same model
CLIP_L = TextConfig(width=64, layers=2, heads=1, mlp_width=256, activation="quick_gelu")
BIG_G = TextConfig(width=128, layers=2, heads=2, mlp_width=512, activation="gelu", projection_dim=128)
UNET = UNetConfig(model_channels=32, channel_mult=(1, 2), attention_levels=(1,), heads=(1, 2),
                  context_dim=CLIP_L.width + BIG_G.width, linear_proj=True, transformer_depth=(0, 2),
                  middle_depth=2, adm_in_channels=BIG_G.projection_dim + 6 * SIZE_EMBED_DIM)


def demo_sdxl_model_file(path: Path = DEMO_SDXL_MODEL) -> Path:
    """The tiny SDXL as a file: written (atomically) the first time, reused while its bytes are intact."""
    data = _model_bytes()
    path = Path(path)
    if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
        write_bytes_atomic(path, data)
    return path


def _model_bytes() -> bytes:
    with torch.random.fork_rng(devices=[]):  # default init from a fixed seed, without touching the caller's RNG
        torch.manual_seed(SDXL_DEMO_SEED)
        clip_l, big_g, unet = TextEncoder(CLIP_L), TextEncoder(BIG_G), UNet(UNET)
        vae = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1))
    clip_l_spec, big_g_spec = SDXL.encoders
    tensors = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    tensors |= {VAE_PREFIX + k: v for k, v in vae.state_dict().items()}
    tensors |= {clip_l_spec.file_prefix + "text_model." + k: v for k, v in clip_l.state_dict().items()}
    big_g_tensors = open_clip_names(big_g.state_dict(), BIG_G.layers, big_g_spec.dropped_file_layers)
    tensors |= {big_g_spec.file_prefix + k: v for k, v in big_g_tensors.items()}
    stated = {"unet_heads": list(UNET.heads), "native_size": SDXL_DEMO_SIZE}  # text heads: width // 64, the default
    return safetensors_bytes({k: v.contiguous().clone() for k, v in tensors.items()},
                             {CONFIG_METADATA: json.dumps(stated), "format": "pt"})

