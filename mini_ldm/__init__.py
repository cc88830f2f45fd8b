"""mini-ldm: Stable Diffusion 1.x/2.x/XL inference in plain PyTorch.

    import mini_ldm
    sd = mini_ldm.load("weights/512-base-ema.safetensors", device="cuda", dtype="fp16")
    images, settings = sd.sample("a chest x-ray", seed=1)

`load`, `StableDiffusion` and `SampleSettings` are imported on first use (lazy.py): `import mini_ldm` does not
import torch, so the CLIs answer a wrong flag at once.
"""
from .errors import CheckpointError, UserError
from .lazy import exports

__all__ = ["load", "StableDiffusion", "SampleSettings", "UserError", "CheckpointError"]
__getattr__, __dir__ = exports(__name__, {"load": ".loading", "StableDiffusion": ".pipeline",
                                          "SampleSettings": ".sample_settings"})
