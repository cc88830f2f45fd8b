"""Random Inception-v3 FID weights, saved in both public key layouts, for tests and benchmarks.

Every tensor is random and non-zero (measure.demo draws them: convolutions He-scaled so activations stay O(1)
through 94 layers, BatchNorm scales, shifts and running statistics around their identity values, a random
classifier); here they are float32 and saved in either public key layout.
"""
from collections import OrderedDict
from pathlib import Path

import torch

from measure.demo import random_inception_state as demo_state


def random_inception_state(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """measure.demo's random weights (the product's --demo file), in float32, without BatchNorm counters."""
    return OrderedDict((name, value.float()) for name, value in demo_state(seed).items()
                       if not name.endswith("num_batches_tracked"))


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
