"""Random Inception-v3 FID weights, saved in both public key layouts, for tests and benchmarks.

Every tensor is random and non-zero: convolutions He-scaled so activations stay O(1) through 94 layers,
BatchNorm scales, shifts and running statistics drawn around their identity values, a random classifier.
"""
from collections import OrderedDict
from pathlib import Path

import torch

from measure.inception import InceptionV3FID


def random_inception_state(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for name, t in InceptionV3FID().state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("conv.weight"):
            fan_in = t[0].numel()
            value = torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif name.endswith("bn.weight") or name.endswith("running_var"):
            value = 0.75 + 0.5 * torch.rand(t.shape, generator=gen)
        elif name.endswith("bn.bias") or name.endswith("running_mean"):
            value = 0.1 * torch.randn(t.shape, generator=gen)
        elif name == "fc.weight":
            value = torch.randn(t.shape, generator=gen) * (1.0 / t.shape[1]) ** 0.5
        else:  # fc.bias
            value = 0.1 * torch.randn(t.shape, generator=gen)
        state[name] = value.float()
    return state


def save_pytorch_fid_layout(state: dict, path: Path) -> Path:
    """As pytorch-fid's file: a torchvision Inception3 state_dict, BatchNorm counters included."""
    out = OrderedDict()
    for name, value in state.items():
        out[name] = value
        if name.endswith("bn.running_var"):
            out[name.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    torch.save(out, path)
    return Path(path)


def save_torch_fidelity_layout(state: dict, path: Path) -> Path:
    """As torch-fidelity's file: a plain dict converted from the TF graph, no BatchNorm counters."""
    torch.save({name: value.clone() for name, value in state.items()}, path)
    return Path(path)
