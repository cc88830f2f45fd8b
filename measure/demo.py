"""`evaluate.py --demo`: random Inception-v3 weights in pytorch-fid's file layout, and two small image folders,
so the evaluation runs on a CPU with nothing downloaded. The numbers it prints mean nothing; the run checks
that everything is installed and wired up.

The network's shape is fixed by the public file (about 24 M parameters), so "tiny" means cheap to make, not
small: the weights are stored in float16 (about 48 MB) and written once.
"""
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mini_ldm.demo import DEMO_DIR  # every CLI's --demo writes there
from mini_ldm.io import atomic_write, write_image_atomic
from readers.phantom import chest_phantom

from .evaluate_settings import WEIGHTS_FILES
from .inception import InceptionV3FID

DEMO_WEIGHTS = DEMO_DIR / WEIGHTS_FILES[0]
DEMO_SEED = 1234


def random_inception_state(seed: int = DEMO_SEED) -> "OrderedDict[str, torch.Tensor]":
    """Every tensor random and non-zero, in the keys and shapes of pytorch-fid's file (BatchNorm counters
    included): convolutions He-scaled so activations stay O(1) through the network, BatchNorm near identity."""
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for name, t in InceptionV3FID().state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0)
            continue
        if name.endswith("conv.weight"):
            value = torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5
        elif name.endswith("bn.weight") or name.endswith("running_var"):
            value = 0.75 + 0.5 * torch.rand(t.shape, generator=gen)
        elif name == "fc.weight":
            value = torch.randn(t.shape, generator=gen) * (1.0 / t.shape[1]) ** 0.5
        else:  # BatchNorm shifts and means, fc.bias
            value = 0.1 * torch.randn(t.shape, generator=gen)
        state[name] = value.half()
    return state


def demo_weights(path: Path = DEMO_WEIGHTS) -> Path:
    """The demo's random Inception file, written on the first call (whole, then renamed) and reused after."""
    if not path.is_file():
        print(f"demo: writing random Inception-v3 weights to {path} (once)")
        with atomic_write(path) as f:
            torch.save(random_inception_state(), f)
    return path


def demo_image(seed: int, size: int = 96) -> Image.Image:
    """A small 'scan' of its own: a chest phantom with a few random blobs, so images of different seeds differ."""
    return chest_phantom(np.random.default_rng(seed), size, blobs=3).convert("RGB")


def demo_folders(count: int = 6) -> tuple[Path, Path]:
    """demo-output/eval-real and demo-output/eval-synth (made once): different images, one synthetic image a
    copy of a real one, so the memorisation audit has something to find."""
    real, synth = DEMO_DIR / "eval-real", DEMO_DIR / "eval-synth"
    for folder, seeds in ((real, range(count)), (synth, range(100, 100 + count))):
        folder.mkdir(parents=True, exist_ok=True)
        for k, seed in enumerate(seeds):
            path = folder / f"{folder.name}-{k:02d}.png"
            if not path.is_file():
                write_image_atomic(path, demo_image(0 if folder == synth and k == 0 else seed))
    return real, synth
