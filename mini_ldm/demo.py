"""A tiny random-weight Stable Diffusion for `--demo` runs, written once as a real model file.

It has the real architecture at toy sizes and the real CLIP tokenizer, so every code path runs in
seconds on a CPU with nothing downloaded. Its images are noise-like: it checks an installation,
it does not draw anything. `demo_model_file()` writes it into demo-output/ as an SD 2 single file
(the keys of a public checkpoint, plus the few numbers shapes cannot tell in its metadata), so every
CLI's --demo, and any command a demo suggests, loads the same model through the normal loader.
"""
import hashlib
import json
from pathlib import Path

import torch

from .checkpoint import CONFIG_METADATA
from .families import SD2, UNET_PREFIX, VAE_PREFIX
from .clip import TextConfig, TextEncoder
from .io import safetensors_bytes, write_bytes_atomic
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

DEMO_SIZE = 64  # pixels; the tiny VAE downsamples by 2, so latents are 32x32
DEMO_SEED = 1234  # fixed, so every demo builds the same model
DEMO_DIR = Path("demo-output")  # where the demos write, relative to the current folder
DEMO_MODEL = DEMO_DIR / "tiny-random-sd2.safetensors"  # the model file every --demo loads
DEMO_TOKEN = "<phantom>"  # the token `train.py --demo` learns from synthetic phantoms ...
DEMO_EMBEDDING = DEMO_DIR / "phantom.safetensors"  # ... and where it goes, for `sample.py --demo` to use
DEMO_TRAINING = {"vectors": 4, "steps": 60, "lr": 0.02, "preview_steps": 8}  # for the flags not given with --demo
UNET = UNetConfig(model_channels=32, channel_mult=(1, 2), attention_levels=(0, 1), heads=(1, 2), context_dim=64,
                  linear_proj=True)
TEXT = TextConfig(width=64, layers=2, heads=2, mlp_width=256, activation="gelu")


def demo_model_file(path: Path = DEMO_MODEL) -> Path:
    """The demo model as a file: written (atomically) the first time, reused while its bytes are intact."""
    data = _model_bytes()
    path = Path(path)
    if not (path.is_file() and path.stat().st_size == len(data) and _sha256(path.read_bytes()) == _sha256(data)):
        write_bytes_atomic(path, data)
    return path


def _model_bytes() -> bytes:
    with torch.random.fork_rng(devices=[]):  # default init from a fixed seed, without touching the caller's RNG
        torch.manual_seed(DEMO_SEED)
        text, unet, vae = TextEncoder(TEXT), UNet(UNET), AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2),
                                                                                 num_res_blocks=1))
    tensors = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    tensors |= {VAE_PREFIX + k: v for k, v in vae.state_dict().items()}
    tensors |= {SD2.encoders[0].file_prefix + k: v for k, v in _open_clip_names(text.state_dict(), TEXT.layers).items()}
    stated = {"unet_heads": list(UNET.heads), "text_heads": TEXT.heads, "native_size": DEMO_SIZE}
    return safetensors_bytes({k: v.contiguous().clone() for k, v in tensors.items()},
                             {CONFIG_METADATA: json.dumps(stated), "format": "pt"})


def _open_clip_names(state: dict, layers: int) -> dict:
    """Our (Hugging Face CLIP) text encoder names -> SD 2's OpenCLIP ones, q/k/v stacked into in_proj; SD 2
    files hold one block more than the conditioning uses (the last, unused: a copy of the one before)."""
    out = {"token_embedding.weight": state["embeddings.token_embedding.weight"],
           "positional_embedding": state["embeddings.position_embedding.weight"],
           "ln_final.weight": state["final_layer_norm.weight"], "ln_final.bias": state["final_layer_norm.bias"]}
    leaf = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
            "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(layers + 1):
        ours, theirs = f"encoder.layers.{min(i, layers - 1)}.", f"transformer.resblocks.{i}."
        for a, b in leaf.items():
            for p in ("weight", "bias"):
                out[f"{theirs}{b}.{p}"] = state[f"{ours}{a}.{p}"]
        for p in ("weight", "bias"):
            out[f"{theirs}attn.in_proj_{p}"] = torch.cat([state[f"{ours}self_attn.{q}_proj.{p}"] for q in "qkv"])
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
