"""A tiny random-weight Stable Diffusion, made on the spot, for `--demo` runs.

It has the real architecture at toy sizes and the real CLIP tokenizer, so every code path runs in
seconds on a CPU with nothing downloaded. Its images are noise-like: it checks an installation,
it does not draw anything.
"""
from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .clip import TextConfig, TextEncoder
from .pipeline import StableDiffusion
from .tokenizer import CLIPTokenizer
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

DEMO_SIZE = 64  # pixels; the tiny VAE downsamples by 2, so latents are 32x32
DEMO_SEED = 1234  # fixed, so `train.py --demo` and `sample.py --demo` build the same model
DEMO_DIR = Path("demo-output")  # where both demos write, relative to the current folder
DEMO_TOKEN = "<phantom>"  # the token `train.py --demo` learns from synthetic phantoms ...
DEMO_EMBEDDING = DEMO_DIR / "phantom.safetensors"  # ... and where it goes, for `sample.py --demo` to use
DEMO_TRAINING = {"vectors": 4, "steps": 60, "lr": 0.02, "preview_steps": 8}  # upper bounds for vectors, steps


def tiny_model(device="cpu") -> StableDiffusion:
    with torch.random.fork_rng(devices=[]):  # default init from a fixed seed, without touching the caller's RNG
        torch.manual_seed(DEMO_SEED)
        text = TextEncoder(TextConfig(width=64, layers=2, heads=2, mlp_width=256, activation="gelu"))
        unet = UNet(UNetConfig(model_channels=32, channel_mult=(1, 2), attention_levels=(0, 1), heads=(1, 2),
                               context_dim=64, linear_proj=True))
        vae = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1))
    parts = [m.to(device).eval().requires_grad_(False) for m in (unet, vae, text)]
    ckpt = Checkpoint(path=None, family="sd2", unet=parts[0], vae=parts[1], text_encoder=parts[2],
                      prediction="epsilon", prediction_reason="demo model", native_size=DEMO_SIZE,
                      tokenizer_dir=None, scheduler_config={})
    return StableDiffusion(ckpt, CLIPTokenizer.default(pad_id=0), device, torch.float32)
