"""ModelSettings: the flags that choose a model, where it runs and in what precision (mini_ldm.load takes them).

No torch here: every CLI builds its flags from this before torch is imported, so a wrong flag answers at once."""
from dataclasses import dataclass
from pathlib import Path

from .settings import device_option, option

DTYPE_NAMES = ("fp32", "fp16", "bf16")  # loading.DTYPES maps them to torch's dtypes
PREDICTIONS = ("auto", "epsilon", "v")


@dataclass
class ModelSettings:
    """Which model, where and in what precision: the flags every CLI that loads Stable Diffusion shares
    (sample.py, train.py), so they read and default the same everywhere."""
    model: Path | None = option(None, "a .safetensors/.ckpt single file or a diffusers folder",
                                shown="the one checkpoint in weights/", metavar="PATH")
    device: str | None = device_option()
    dtype: str | None = option(None, "weights and activations precision", choices=DTYPE_NAMES,
                               aliases=("--precision",), shown="fp16 on CUDA, fp32 elsewhere")
    prediction: str = option("auto", "what a single-file model predicts; auto = epsilon unless the file name says "
                                     "v (768-v, v-pred, SD2 768); diffusers folders say it themselves",
                             choices=PREDICTIONS)
    vae: Path | None = option(None, "decode (and encode) with this VAE instead of the checkpoint's own: a file "
                                    "or a diffusers vae/ folder, e.g. the fp16-fix SDXL VAE or SD 2's ft-MSE VAE",
                              metavar="FILE", shown="the checkpoint's own")
