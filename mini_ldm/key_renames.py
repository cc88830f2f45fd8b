"""A weights file's tensors by name, read lazily, and other layouts' names mapped onto the model's own.

`TensorSource` reads one file by tensor name without loading it whole (a .safetensors file memory-mapped, a
.ckpt/.pt/.bin read without running pickled code); `Prefixed` is the part of it under one prefix (a single
file's UNet, VAE, text encoders), with the prefix removed.

The modules are named after the original LDM checkpoint's keys, so a single file needs no renaming.
Two other layouts are mapped onto those names here, as lazy views (nothing is read until a tensor is
asked for):

  diffusers folder, UNet   down_blocks.L.resnets.I.norm1 -> input_blocks.N.0.in_layers.0, ...
                           (`diffusers_unet_tensors`; inside attention blocks the names agree)
  diffusers folder, VAE    encoder.down_blocks.L.resnets.I -> encoder.down.L.block.I, mid attention
                           to_q/to_k/to_v/to_out.0 -> q/k/v/proj_out, reshaped [C, C] -> [C, C, 1, 1]
                           (`diffusers_vae_tensors`)
  SD2 single file, OpenCLIP  transformer.resblocks.N.attn.in_proj_weight -> encoder.layers.N.self_attn.
                           {q,k,v}_proj.weight (split in three), ln_final -> final_layer_norm, ...: the
                           Hugging Face CLIP names our TextEncoder uses (`open_clip_tensors`)

  SDXL                     diffusers' add_embedding.linear_1/2 -> label_emb.0.0/0.2; bigG's OpenCLIP
                           text_projection [C, P] (used as x @ P) -> text_projection.weight [P, C] (nn.Linear)

A diffusers text encoder already has the Hugging Face CLIP names and needs no map, beyond dropping the
`text_model.` prefix some savers write (`hf_text_tensors`).
"""
import pickle
import re
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import CheckpointError, first_line
from .families import count
from .io import UnsafePickle, torch_load


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


class Renamed:
    """A view of a source under other names: new_name -> (old name, transform on the tensor, on its shape)."""

    def __init__(self, source, names: dict):
        self.source, self.names = source, names

    def keys(self):
        return self.names.keys()

    def shape(self, key):
        old, _, shape_fn = self.names[key]
        return shape_fn(self.source.shape(old))

    def __getitem__(self, key):
        old, fn, _ = self.names[key]
        return fn(self.source[old])


def _same(x):
    return x


def _as_conv1x1(shape):
    return tuple(shape) + (1, 1) if len(shape) == 2 else tuple(shape)


def _conv1x1(t):
    return t.reshape(*t.shape, 1, 1) if t.ndim == 2 else t


# --- diffusers folders -----------------------------------------------------------------------------

def diffusers_unet_tensors(source, config: dict) -> Renamed:
    """A diffusers UNet2DConditionModel's tensors under our names; `config` is its config.json."""
    levels = len(config["block_out_channels"])
    attention_levels = [i for i, t in enumerate(config["down_block_types"]) if "CrossAttn" in t]
    res_blocks_per_level = config.get("layers_per_block", 2)
    return Renamed(source, {diffusers_unet_name(k, res_blocks_per_level, levels, attention_levels): (k, _same, tuple)
                            for k in source.keys()})


def diffusers_vae_tensors(source) -> Renamed:
    """A diffusers AutoencoderKL's tensors under our names (its levels counted from the encoder's blocks).

    diffusers stores the mid-block attention projections as Linear weights [C, C]; ours are 1x1 convs.
    """
    levels = count(source.keys(), r"encoder\.down_blocks\.(\d+)\.")
    names = {}
    for key in source.keys():
        new = diffusers_vae_name(key, levels)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", new):
            names[new] = (key, _conv1x1, _as_conv1x1)
        else:
            names[new] = (key, _same, tuple)
    return Renamed(source, names)


_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def diffusers_unet_name(key: str, res_blocks_per_level: int, levels: int, attention_levels) -> str:
    """Map one diffusers UNet2DConditionModel key onto our (LDM) name."""
    per_level = res_blocks_per_level + 1  # input_blocks per level: the ResBlocks and a Downsample
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        kind, block, part, i, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if part == "downsamplers":
                return f"input_blocks.{(block + 1) * per_level}.0.{rest.replace('conv.', 'op.', 1)}"
            index, sub = 1 + block * per_level + i, 0 if part == "resnets" else 1
            name = f"input_blocks.{index}.{sub}."
        else:
            level = levels - 1 - block
            if part == "upsamplers":
                sub = 2 if level in attention_levels else 1
                return f"output_blocks.{block * per_level + res_blocks_per_level}.{sub}.{rest}"
            index, sub = block * per_level + i, 0 if part == "resnets" else 1
            name = f"output_blocks.{index}.{sub}."
        return name + (_resnet_leaf(rest) if part == "resnets" else rest)
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, i, rest = m.groups()
        if part == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{0 if i == '0' else 2}.{_resnet_leaf(rest)}"
    return key


def _resnet_leaf(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_UNET_RESNET.get(head, head)}.{tail}"


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
             # diffusers before 0.14 stored the VAE attention under these names
             "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def diffusers_vae_name(key: str, levels: int) -> str:
    """Map one diffusers AutoencoderKL key onto our (LDM) name."""
    key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    m = re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        side, direction, block, part, i, rest = m.groups()
        level = int(block) if direction == "down" else levels - 1 - int(block)
        if part == "resnets":
            return f"{side}.{direction}.{level}.block.{i}.{rest}"
        return f"{side}.{direction}.{level}.{'downsample' if direction == 'down' else 'upsample'}.{rest}"
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        side, part, i, rest = m.groups()
        if part == "resnets":
            return f"{side}.mid.block_{int(i) + 1}.{rest}"
        name, _, leaf = rest.rpartition(".")
        return f"{side}.mid.attn_1.{_VAE_ATTN.get(name, name)}.{leaf}"
    return key


# --- SD2 single files ------------------------------------------------------------------------------

def hf_text_tensors(source) -> Renamed:
    """A Hugging Face CLIP text model's tensors without the `text_model.` prefix (text_projection sits outside it)."""
    return Renamed(source, {k.removeprefix("text_model."): (k, _same, tuple) for k in source.keys()})


def _transposed(t):
    return t.T


def _swapped(shape):
    return tuple(reversed(shape))


# An OpenCLIP text tower's names, by our (Hugging Face CLIP) names: outside the blocks, and the leaves inside
# block N (encoder.layers.N. <-> transformer.resblocks.N.); q, k and v are stacked in one in_proj there.
_OPEN_CLIP_TOWER = {"embeddings.token_embedding.weight": "token_embedding.weight",
                    "embeddings.position_embedding.weight": "positional_embedding",
                    "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_tensors(source, layers: int, projection: bool = False) -> Renamed:
    """An OpenCLIP text tower (SD2's cond_stage_model.model.*, SDXL's bigG) under Hugging Face CLIP names.

    Only the first `layers` resblocks are mapped (SD2 uses the penultimate block's output, so it asks for
    one fewer); `projection` also maps text_projection (SDXL's pooled vector).
    """
    names = {ours: (theirs, _same, tuple) for ours, theirs in _OPEN_CLIP_TOWER.items()}
    if projection:
        names["text_projection.weight"] = ("text_projection", _transposed, _swapped)
    for i in range(layers):
        old, new = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in _OPEN_CLIP_BLOCK.items():
            for p in ("weight", "bias"):
                names[f"{new}{ours}.{p}"] = (f"{old}{theirs}.{p}", _same, tuple)
        # q, k and v are stored stacked in one in_proj tensor: rows [0:C], [C:2C], [2C:3C].
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            for p in ("weight", "bias"):
                pick = (lambda t, j=j: t.chunk(3, dim=0)[j])
                third = (lambda s: (s[0] // 3,) + tuple(s[1:]))
                names[f"{new}self_attn.{proj}.{p}"] = (f"{old}attn.in_proj_{p}", pick, third)
    return Renamed(source, names)


def open_clip_names(state: dict, layers: int, unused_blocks: int = 1) -> dict:
    """The reverse of `open_clip_tensors`, for the model files we write (the phantom model, the SDXL demo): our
    (Hugging Face CLIP) text encoder names -> OpenCLIP's, q/k/v stacked into in_proj, text_projection (if any)
    as OpenCLIP's (width, projection) matrix. `unused_blocks`: blocks the file holds after the last the
    conditioning uses, copies of it (SD 2 files: one, its TextEncoderSpec.dropped_file_layers; SDXL's bigG: 0)."""
    out = {theirs: state[ours] for ours, theirs in _OPEN_CLIP_TOWER.items()}
    if "text_projection.weight" in state:
        out["text_projection"] = state["text_projection.weight"].T
    for i in range(layers + unused_blocks):
        ours, theirs = f"encoder.layers.{min(i, layers - 1)}.", f"transformer.resblocks.{i}."
        for a, b in _OPEN_CLIP_BLOCK.items():
            for p in ("weight", "bias"):
                out[f"{theirs}{b}.{p}"] = state[f"{ours}{a}.{p}"]
        for p in ("weight", "bias"):
            out[f"{theirs}attn.in_proj_{p}"] = torch.cat([state[f"{ours}self_attn.{q}_proj.{p}"] for q in "qkv"])
    return out
