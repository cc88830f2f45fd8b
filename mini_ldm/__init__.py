"""mini-ldm: Stable Diffusion 1.x/2.x/XL inference in plain PyTorch.

    import mini_ldm
    sd = mini_ldm.load("weights/512-base-ema.safetensors", device="cuda", dtype="fp16")
    images, settings = sd.sample("a chest x-ray", seed=1)
"""
from .errors import CheckpointError, UserError
from .loading import load
from .pipeline import StableDiffusion
from .sample_settings import SampleSettings

__all__ = ["load", "StableDiffusion", "SampleSettings", "UserError", "CheckpointError"]
