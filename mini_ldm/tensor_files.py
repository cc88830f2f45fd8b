"""Tensors of a weights file by name, read lazily: a .safetensors file memory-mapped, a .ckpt/.pt/.bin read
without running pickled code, and views that strip a prefix (a single file's parts)."""
import pickle
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import CheckpointError
from .io import UnsafePickle, first_line, torch_load


class TensorSource:
    """Lazy, name-addressed access to the tensors of one file, without reading them all."""

    def __init__(self, path: Path, stack: ExitStack):
        self.path = path
        if path.suffix == ".safetensors":
            try:
                self._file = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
            self._keys = set(self._file.keys())
            self._shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in self._keys}
            self._get = self._file.get_tensor
            self.metadata = self._file.metadata() or {}
        else:
            self.metadata = {}
            state = _state_dict(path)
            self._keys = set(state)
            self._shapes = {k: tuple(v.shape) for k, v in state.items()}
            self._get = state.__getitem__

    def keys(self):
        return self._keys

    def shape(self, key):
        return self._shapes[key]

    def __getitem__(self, key) -> torch.Tensor:
        try:
            return self._get(key)
        except Exception as e:
            raise CheckpointError(f"{self.path}: tensor {key} cannot be read, the file may be truncated ({first_line(e)})") from None


def _state_dict(path: Path) -> dict:
    """A .ckpt/.bin state dict, refusing anything but plain tensors: pickled code never runs."""
    try:
        obj = torch_load(path, mmap=True)
    except UnsafePickle:
        raise CheckpointError(f"{path}: refused to load, the file contains pickled objects other than tensors "
                              "(it may run code); convert it to .safetensors from a trusted source") from None
    except Exception as e:
        # anything else the weights-only unpickler stops on (an unknown opcode, a bad load key) means the
        # file is not a PyTorch checkpoint at all
        if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a corrupt one (it cannot be read as a "
                                  "dict of tensors)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors, so it is not a Stable Diffusion checkpoint")
    return obj


class Prefixed:
    """A view of a TensorSource restricted to one prefix, with the prefix removed from names."""

    def __init__(self, source: TensorSource, prefix: str):
        self.source, self.prefix = source, prefix
        self._keys = {k[len(prefix):] for k in source.keys() if k.startswith(prefix)}

    def keys(self):
        return self._keys

    def shape(self, key):
        return self.source.shape(self.prefix + key)

    def __getitem__(self, key):
        return self.source[self.prefix + key]
