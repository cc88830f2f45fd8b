"""Inception-v3 as FID measures with it: the 2015-12-05 TensorFlow graph, in plain PyTorch.

This is not torchvision's Inception-v3. The TF graph that FID was defined on (Heusel et al. 2017, TTUR code)
differs in three ways, and each changes the numbers:
- the 3x3 average pools inside the Inception blocks ignore the zero padding (TF's `SAME` average pool
  divides by the number of real pixels), i.e. `count_include_pad=False`;
- the last block (Mixed_7c) pools its branch with a max pool where every other block averages;
- the classifier has 1008 outputs (1000 ImageNet classes plus 8 unused), applied to the 2048-d pool.

Module attribute names are the checkpoint keys of both public files (pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` is a torchvision `Inception3` state dict; torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` is a plain dict converted from the TF graph with the same names
and no BatchNorm `num_batches_tracked` counters), so loading is a straight copy with shape asserts.

The network expects images already resized to 299 x 299 and scaled as `(x - 128) / 128` (see
`inception_input.py`); `forward` returns the feature taps FID and IS use.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mini_ldm import hashes
from mini_ldm.cli import weights_folder
from mini_ldm.errors import UserError, first_line
from mini_ldm.io import UnsafePickle, torch_load

from .evaluate_settings import WEIGHTS_FILES, WEIGHTS_HINT, missing_weights

INPUT_SIZE = 299
NUM_CLASSES = 1008



class InceptionWeightsError(UserError):
    """A file that is not one of the Inception-v3 FID weight files."""


# --------------------------------------------------------------------------- building blocks

class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (TF's epsilon 0.001) -> ReLU."""

    def __init__(self, cin: int, cout: int, **conv_args):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **conv_args)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def tf_avg_pool_3x3(x):
    # TF's SAME average pool averages over the pixels inside the image only
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b..5d, 35 x 35
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(tf_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):  # Mixed_6a: 35 -> 17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):  # Mixed_6b..6e, 17 x 17, factorised 7x7
    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(tf_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a: 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (average pool branch) and Mixed_7c (max pool branch: the graph's quirk)
    def __init__(self, cin: int, pool: str):
        super().__init__()
        assert pool in ("avg", "max"), pool
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = tf_avg_pool_3x3(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


# --------------------------------------------------------------------------- the network

class InceptionV3FID(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, NUM_CLASSES)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict:
        """x: (B, 3, 299, 299), already `(pixel - 128) / 128`. Returns every tap, each (B, C):
        "64", "192", "768", "2048" (spatial means after the two stems, Mixed_6e and Mixed_7c) and
        "logits_unbiased" (the 2048 pool times the fc weight, without its bias: what IS uses)."""
        taps = {}
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        taps["64"] = x.mean((2, 3))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        taps["192"] = x.mean((2, 3))
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(self, name)(x)  # ends (B, 768, 17, 17)
        taps["768"] = x.mean((2, 3))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B, 2048, 8, 8)
        pool = x.mean((2, 3))  # (B, 2048)
        taps["2048"] = pool
        taps["logits_unbiased"] = pool @ self.fc.weight.T  # (B, 1008)
        return taps


# --------------------------------------------------------------------------- weights

def read_state_dict(path: Path) -> dict:
    """The tensors of a weights file, whatever its container; InceptionWeightsError if it has none."""
    if not path.is_file():
        raise InceptionWeightsError(missing_weights(path))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch_load(path, mmap=True)
    except UnsafePickle as e:
        raise InceptionWeightsError(f"{path} asks to run code ({e.what}) when loaded; it is not an Inception "
                                    "weights file, and it was not run") from None
    except Exception as e:  # a damaged or foreign file: the library's words, on one line
        raise InceptionWeightsError(f"cannot read {path} as Inception-v3 weights: {first_line(e)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{path} holds a {type(state).__name__}, not a dict of Inception-v3 weights")
    return state


def load_inception(path, device="cpu", dtype=torch.float32) -> InceptionV3FID:
    """Build the network and copy in either public weights file (or our random test files), with shape asserts."""
    path = Path(path)
    state = read_state_dict(path)
    model = InceptionV3FID()
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # pytorch-fid's file has them
    missing = [k for k in ours if k not in theirs]
    if missing:
        raise InceptionWeightsError(
            f"{path} is not an Inception-v3 FID weights file: {len(missing)} of its {len(ours)} tensors are missing "
            f"(first: {missing[0]}); " + WEIGHTS_HINT.format(folder=weights_folder()))
    extra = sorted(set(theirs) - set(ours))
    if extra:
        raise InceptionWeightsError(f"{path} has tensors an Inception-v3 FID file does not (first: {extra[0]}); "
                                    "is it another network's weights?")
    with torch.no_grad():
        for name, param in ours.items():
            src = theirs[name]
            if tuple(src.shape) != tuple(param.shape):
                raise InceptionWeightsError(f"{path}: {name} has shape {tuple(src.shape)}, expected {tuple(param.shape)}")
            param.copy_(src.to(param.dtype))
    model.weights_sha256 = hashes.file_sha256(path)  # part of every feature-cache key and of metrics.json
    return model.eval().requires_grad_(False).to(device=device, dtype=dtype)


def find_default_weights(folder: Path | None = None) -> Path:
    """The Inception file in weights/ (or $MINI_LDM_WEIGHTS), by either public name; pytorch-fid's first."""
    folder = weights_folder() if folder is None else Path(folder)
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InceptionWeightsError(f"--weights not given and no Inception-v3 file in {folder}/: "
                                + WEIGHTS_HINT.format(folder=folder))
