"""Reading Stable Diffusion weights (1.x, 2.x, XL): single files (LDM/SGM key layout) and diffusers folders.

The model classes are named after the single-file keys, so a single file loads by stripping a
prefix. A diffusers folder's names and SD2's OpenCLIP names are mapped onto them by the lazy views of
key_renames.py. Configs are read from the tensor shapes, so any SD 1.x/2.x-shaped model loads
(also the tiny random ones the tests make); the few numbers shapes cannot tell (attention heads)
come from the family or from the folder's config.json.

Memory: modules are built on the meta device (no allocation), then every tensor is read from the
memory-mapped file, cast and moved on its own, and assigned in place: the weights exist once.
"""
import json
import pickle
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

from .clip import TextConfig, TextEncoder
from .errors import CheckpointError
from .io import UnsafePickle, first_line, torch_load
from .key_renames import diffusers_unet_tensors, diffusers_vae_tensors, hf_text_tensors, open_clip_tensors
from .samplers import alphas_cumprod_from_config
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD1: Hugging Face CLIP layout
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD2: OpenCLIP layout
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # SDXL: CLIP ViT-L, Hugging Face layout
SDXL_BIGG_PREFIX = "conditioner.embedders.1.model."  # SDXL: OpenCLIP ViT-bigG
REFINER_PREFIX = "conditioner.embedders.0.model."  # the SDXL refiner has only the bigG embedder
SDXL_VAE_SCALE = 0.13025
# scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0, for single files
SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                  "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear"}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class Checkpoint:
    """Everything `load` learns from a checkpoint before building the pipeline."""

    path: Path
    family: str  # "sd1", "sd2" or "sdxl"
    unet: UNet
    vae: AutoencoderKL
    text_encoder: TextEncoder
    prediction: str  # "epsilon" or "v"
    prediction_reason: str
    native_size: int  # pixels
    tokenizer_dir: Path | None  # a diffusers folder's own tokenizer files
    scheduler_config: dict
    text_encoder_2: TextEncoder | None = None  # SDXL's OpenCLIP bigG
    tokenizer_2_dir: Path | None = None


# --- tensor sources -----------------------------------------------------------------------------


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
            state = _torch_load(path)
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


def _torch_load(path: Path) -> dict:
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


# --- configs from shapes ------------------------------------------------------------------------


def _without_text_model(src):
    """Hugging Face CLIP keys come with or without a `text_model.` prefix, depending on the saver's version."""
    if "text_model.embeddings.token_embedding.weight" in src.keys():
        return Prefixed(src, "text_model.")
    return src


def _count(keys, pattern) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def unet_config(src, family: str, heads=None, upcast=False) -> UNetConfig:
    keys = src.keys()
    base_channels = src.shape("input_blocks.0.0.weight")[0]
    levels = 1 + sum(1 for k in keys if re.match(r"input_blocks\.\d+\.0\.op\.weight$", k))
    blocks = _count(keys, r"input_blocks\.(\d+)\.")
    # input_blocks: conv_in, then per level the ResBlocks, and a Downsample on all levels but the last
    res_blocks_per_level = (blocks - 1 - (levels - 1)) // levels
    first = [1 + level * (res_blocks_per_level + 1) for level in range(levels)]  # each level's first ResBlock
    mult = tuple(src.shape(f"input_blocks.{b}.0.in_layers.2.weight")[0] // base_channels for b in first)
    attn = tuple(level for level, b in enumerate(first) if f"input_blocks.{b}.1.proj_in.weight" in keys)
    context = src.shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    depth = tuple(_count(keys, rf"input_blocks\.{b}\.1\.transformer_blocks\.(\d+)\.") for b in first)
    adm = src.shape("label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in keys else 0  # SDXL
    if heads is None:  # not stored in a single file: SD1 uses 8 heads, SD2 a head dim of 64
        heads = [8] * levels if family == "sd1" else [m * base_channels // 64 for m in mult]
    return UNetConfig(in_channels=src.shape("input_blocks.0.0.weight")[1], out_channels=src.shape("out.2.weight")[0],
                      model_channels=base_channels, channel_mult=mult, num_res_blocks=res_blocks_per_level,
                      attention_levels=attn, heads=tuple(heads), context_dim=context,
                      linear_proj=len(src.shape("middle_block.1.proj_in.weight")) == 2, upcast_attention=upcast,
                      transformer_depth=depth,
                      middle_depth=_count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\."),
                      adm_in_channels=adm)


def vae_config(src, scale=0.18215) -> VAEConfig:
    keys = src.keys()
    ch = src.shape("encoder.conv_in.weight")[0]
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    mult = tuple(src.shape(f"encoder.down.{level}.block.0.conv1.weight")[0] // ch for level in range(levels))
    return VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=_count(keys, r"encoder\.down\.0\.block\.(\d+)\."),
                     z_channels=src.shape("post_quant_conv.weight")[0], scale=scale)


def text_config(src, family: str, layers: int, heads=None, activation=None) -> TextConfig:
    vocab, width = src.shape("embeddings.token_embedding.weight")
    return TextConfig(vocab_size=vocab, max_length=src.shape("embeddings.position_embedding.weight")[0],
                      width=width, layers=layers, heads=heads or width // 64,
                      mlp_width=src.shape("encoder.layers.0.mlp.fc1.weight")[0],
                      activation=activation or ("quick_gelu" if family == "sd1" else "gelu"))


# --- building modules ---------------------------------------------------------------------------


def build(cls, cfg, src, what: str, path: Path, device, dtype):
    """Instantiate `cls(cfg)` without allocating, then fill every parameter from `src`."""
    try:
        with torch.device("meta"):
            module = cls(cfg)
    except (ValueError, RuntimeError) as e:  # e.g. channels that GroupNorm(32) cannot split
        raise CheckpointError(f"{path}: the {what} weights have shapes no Stable Diffusion 1.x/2.x model has "
                              f"({first_line(e)})") from None
    expected = module.state_dict()
    missing = [k for k in expected if k not in src.keys()]
    if missing:
        raise CheckpointError(f"{path}: the {what} weights are incomplete ({len(missing)} missing, e.g. {missing[0]})")
    state = {}
    for name, ref in expected.items():
        if tuple(src.shape(name)) != tuple(ref.shape):
            raise CheckpointError(f"{path}: {what} tensor {name} has shape {tuple(src.shape(name))}, "
                                  f"expected {tuple(ref.shape)}")
        state[name] = src[name].to(device=device, dtype=dtype)
    module.load_state_dict(state, assign=True)
    return module.eval().requires_grad_(False)


_MODULES = ((UNet, "UNet"), (AutoencoderKL, "VAE"), (TextEncoder, "text encoder"), (TextEncoder, "text encoder 2"))


def _build_modules(configs, sources, places, device, dtype) -> tuple:
    """UNet, VAE and text encoder(s) from their configs and tensor sources; `places` name them in errors."""
    return tuple(build(cls, cfg, src, what, place, device, dtype)
                 for (cls, what), cfg, src, place in zip(_MODULES, configs, sources, places))


@contextmanager
def _unfit_inputs_as_errors(path: Path, missing: str, unexpected: str):
    """The config readers assume SD's layout and fail with KeyError (a tensor or config key that is not
    there: `missing`, formatted with {key}) or a ValueError-like error (a value of the wrong rank, size or
    type: `unexpected`); either becomes one CheckpointError naming `path`."""
    try:
        yield
    except KeyError as e:
        raise CheckpointError(f"{path}: {missing.format(key=e)}") from None
    except (ValueError, IndexError, ZeroDivisionError, TypeError):
        raise CheckpointError(f"{path}: {unexpected}") from None


def _upcast_attention(family: str, dtype) -> bool:
    """SD2's attention logits can overflow fp16 (SD2.1-768's diffusers config sets upcast_attention for
    that reason), so SD2 in half precision computes attention in fp32, whatever the file says."""
    return family == "sd2" and dtype != torch.float32


def _native_size(family: str, prediction: str, latent_size: int | None = None, downscale: int = 8) -> int:
    """The image size (pixels) the model was trained at: a folder's unet config says so in latents
    (sample_size); a single file cannot, and only SD2's v models (768-v) were trained above 512."""
    if latent_size is not None:
        return latent_size * downscale
    return 768 if (family == "sd2" and prediction == "v") else 512


def load_checkpoint(path, device="cpu", dtype=torch.float32, prediction="auto", vae=None) -> Checkpoint:
    """`vae`: another VAE (a file or a diffusers vae/ folder) to use instead of the checkpoint's own."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        ckpt = _load_folder(path, device, dtype)
    elif path.suffix not in SINGLE_FILE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint type; expected a .safetensors or .ckpt file, "
                              "or a diffusers folder")
    else:
        ckpt = _load_single_file(path, device, dtype, prediction)
    if vae is not None:
        ckpt.vae = load_vae(vae, ckpt.vae.cfg.scale, device, dtype)
    return ckpt


def load_vae(path, scale: float, device="cpu", dtype=torch.float32) -> AutoencoderKL:
    """A VAE on its own: an LDM-layout file (vae-ft-mse-840000-ema-pruned.safetensors, with or without the
    first_stage_model. prefix), a diffusers-layout file (sdxl_vae.safetensors) or a diffusers vae/ folder.
    `scale` is the model's latent scale: a swapped-in VAE decodes the same latent space."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--vae {path}: no such file or folder")
    with ExitStack() as stack:
        raw = TensorSource(_weights_file(path) if path.is_dir() else path, stack)
        if any(k.startswith(VAE_PREFIX) for k in raw.keys()):
            src = Prefixed(raw, VAE_PREFIX)
        elif any(k.startswith("encoder.down_blocks.") for k in raw.keys()):
            src = diffusers_vae_tensors(raw, {"block_out_channels": [0] * _count(raw.keys(), r"encoder\.down_blocks\.(\d+)\.")})
        else:
            src = raw
        with _unfit_inputs_as_errors(path, missing="--vae: not a VAE (no tensor {key})",
                                     unexpected="--vae: not a Stable Diffusion VAE (unexpected tensor shapes)"):
            cfg = vae_config(src, scale)
        return build(AutoencoderKL, cfg, src, "VAE", path, device, dtype)


# --- single files -------------------------------------------------------------------------------

SINGLE_FILE_ERRORS = dict(missing="not a Stable Diffusion 1.x/2.x checkpoint (no tensor {key})",
                          unexpected="not a Stable Diffusion 1.x/2.x checkpoint (unexpected tensor shapes)")


# A single file may state, in its safetensors metadata, the numbers its shapes cannot tell (as the --demo
# model does, mini_ldm/demo.py): {"unet_heads": [per level], "text_heads": n, "native_size": pixels}.
CONFIG_METADATA = "mini_ldm.config"


def _load_single_file(path: Path, device, dtype, prediction: str) -> Checkpoint:
    with ExitStack() as stack:
        source = TensorSource(path, stack)
        if _sdxl_kind(source) is not None:
            return _load_sdxl_file(source, device, dtype, prediction)
        family, sources, text_layers = _single_file_sources(source)
        stated = _stated_config(source)
        unet_src, vae_src, text_src = sources
        with _unfit_inputs_as_errors(path, **SINGLE_FILE_ERRORS):
            configs = (unet_config(unet_src, family, stated.get("unet_heads"), _upcast_attention(family, dtype)),
                       vae_config(vae_src), text_config(text_src, family, text_layers, stated.get("text_heads")))
        pred, reason = _single_file_prediction(path, family, prediction)
        unet, vae, text = _build_modules(configs, sources, [path] * 3, device, dtype)
    native = stated.get("native_size") or _native_size(family, pred)
    return Checkpoint(path, family, unet, vae, text, pred, reason, native, None, {})


def _stated_config(source: TensorSource) -> dict:
    try:
        stated = json.loads(source.metadata.get(CONFIG_METADATA, "{}"))
    except ValueError:
        raise CheckpointError(f"{source.path}: its {CONFIG_METADATA} metadata is not JSON") from None
    return stated if isinstance(stated, dict) else {}


def _single_file_sources(source: TensorSource):
    """(family, (UNet, VAE, text encoder tensors under our names), text encoder layers) of one file."""
    if OPEN_CLIP_PREFIX + "token_embedding.weight" in source.keys():
        family = "sd2"
        raw = Prefixed(source, OPEN_CLIP_PREFIX)
        # The file holds all 24 blocks; SD2 reads the penultimate, so we keep one fewer.
        text_layers = _count(raw.keys(), r"transformer\.resblocks\.(\d+)\.") - 1
        text_src = open_clip_tensors(raw, text_layers)
    else:
        family = "sd1"
        text_src = _without_text_model(Prefixed(source, CLIP_PREFIX))
        text_layers = _count(text_src.keys(), r"encoder\.layers\.(\d+)\.")
    sources = (Prefixed(source, UNET_PREFIX), Prefixed(source, VAE_PREFIX), text_src)
    for src, (_, what) in zip(sources, _MODULES):
        if not src.keys():
            raise CheckpointError(f"{source.path}: has no {what} weights, so it is not a Stable Diffusion 1.x/2.x "
                                  "checkpoint (LoRA and VAE-only files are not supported; a VAE goes to --vae)")
    return family, sources, text_layers


def _sdxl_kind(source: TensorSource) -> str | None:
    """"base" for an SDXL base file, None for anything else; an SDXL file we cannot draw with is refused."""
    keys = source.keys()
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if REFINER_PREFIX + "token_embedding.weight" in keys:
        raise CheckpointError(f"{source.path}: an SDXL refiner checkpoint (one OpenCLIP bigG text encoder at "
                              f"{REFINER_PREFIX}); mini-ldm draws with SDXL base 1.0 (sd_xl_base_1.0.safetensors)")
    sdxl_unet = UNET_PREFIX + "label_emb.0.0.weight" in keys
    if not (sdxl_unet or has("conditioner.")):
        return None
    parts = {"UNet": sdxl_unet, "VAE": has(VAE_PREFIX), "CLIP ViT-L text encoder": has(SDXL_CLIP_PREFIX),
             "OpenCLIP bigG text encoder": has(SDXL_BIGG_PREFIX)}
    lacking = [what for what, present in parts.items() if not present]
    if lacking:
        raise CheckpointError(f"{source.path}: part of an SDXL checkpoint (no {', no '.join(lacking)}); use the "
                              "complete base file, sd_xl_base_1.0.safetensors, or its diffusers folder")
    return "base"


def _load_sdxl_file(source: TensorSource, device, dtype, prediction: str) -> Checkpoint:
    """An SGM-layout SDXL base file: UNet, VAE, CLIP ViT-L (Hugging Face names) and bigG (OpenCLIP names)."""
    path = source.path
    clip_src = _without_text_model(Prefixed(source, SDXL_CLIP_PREFIX))
    bigg_raw = Prefixed(source, SDXL_BIGG_PREFIX)
    bigg_layers = _count(bigg_raw.keys(), r"transformer\.resblocks\.(\d+)\.")
    sources = (Prefixed(source, UNET_PREFIX), Prefixed(source, VAE_PREFIX), clip_src,
               open_clip_tensors(bigg_raw, bigg_layers, projection=True))
    with _unfit_inputs_as_errors(path, missing="not a complete SDXL checkpoint (no tensor {key})",
                                 unexpected="not an SDXL checkpoint (unexpected tensor shapes)"):
        configs = (unet_config(sources[0], "sdxl"), vae_config(sources[1], SDXL_VAE_SCALE),
                   *_sdxl_text_configs(sources[2], sources[3],
                                       _count(clip_src.keys(), r"encoder\.layers\.(\d+)\."), bigg_layers))
    pred, reason = _single_file_prediction(path, "sdxl", prediction)
    unet, vae, text, text_2 = _build_modules(configs, sources, [path] * 4, device, dtype)
    return Checkpoint(path, "sdxl", unet, vae, text, pred, reason, 1024, None, dict(SDXL_SCHEDULER), text_2)


def _sdxl_text_configs(clip_src, bigg_src, clip_layers: int, bigg_layers: int, clip_heads=None, bigg_heads=None):
    """Both SDXL encoders read the penultimate block without the final norm; bigG also gives the pooled vector."""
    sdxl = dict(context_skip=1, context_norm=False)
    clip = text_config(clip_src, "sd1", clip_layers, clip_heads)
    bigg = text_config(bigg_src, "sd2", bigg_layers, bigg_heads)
    return (replace(clip, **sdxl),
            replace(bigg, **sdxl, projection_dim=bigg_src.shape("text_projection.weight")[0]))


def _single_file_prediction(path: Path, family: str, prediction: str):
    if prediction in ("epsilon", "v"):
        return prediction, "--prediction"
    name = path.name.lower()
    if re.search(r"768-v|v-pred|vpred|v_pred", name) or (family == "sd2" and "768" in name):
        return "v", f"auto: the file name '{path.name}' names a 768 v-prediction model"
    yaml = path.with_suffix(".yaml")
    if yaml.exists() and re.search(r"parameterization:\s*['\"]?v['\"]?\s*$", yaml.read_text(errors="ignore"), re.M):
        return "v", f"auto: {yaml.name} says parameterization: v"
    return "epsilon", "auto: epsilon unless the file name says v-prediction (use --prediction v for v models)"


# --- diffusers folders --------------------------------------------------------------------------

FOLDER_PARTS = ("unet", "vae", "text_encoder")
FOLDER_ERRORS = dict(missing="the diffusers folder lacks {key}; is it a Stable Diffusion 1.x/2.x model?",
                     unexpected="not a Stable Diffusion 1.x/2.x diffusers folder "
                                "(unexpected config values or tensor shapes)")


def _load_folder(path: Path, device, dtype) -> Checkpoint:
    _check_diffusers_folder(path)
    if (path / "text_encoder_2").is_dir():
        return _load_sdxl_folder(path, device, dtype)
    unet_json, vae_json, text_json = (_read_json(path / part / "config.json") for part in FOLDER_PARTS)
    scheduler_json = _scheduler_config(path)
    family = "sd2" if text_json.get("hidden_act") == "gelu" else "sd1"
    with ExitStack() as stack:
        with _unfit_inputs_as_errors(path, **FOLDER_ERRORS):
            raw_unet, raw_vae, raw_text = (TensorSource(_weights_file(path / part), stack) for part in FOLDER_PARTS)
            sources = (diffusers_unet_tensors(raw_unet, unet_json), diffusers_vae_tensors(raw_vae, vae_json),
                       _without_text_model(raw_text))
            configs = _folder_configs(sources, family, unet_json, vae_json, text_json, dtype)
        unet, vae, text = _build_modules(configs, sources, [path / part for part in FOLDER_PARTS], device, dtype)
    pred = "v" if scheduler_json.get("prediction_type") == "v_prediction" else "epsilon"
    native = _native_size(family, pred, unet_json.get("sample_size", 64), vae.downscale)
    tok = path / "tokenizer" if (path / "tokenizer" / "vocab.json").exists() else None
    return Checkpoint(path, family, unet, vae, text, pred, "scheduler/scheduler_config.json", native, tok,
                      scheduler_json)


SDXL_FOLDER_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _load_sdxl_folder(path: Path, device, dtype) -> Checkpoint:
    """stable-diffusion-xl-base-1.0's layout: text_encoder (CLIPTextModel) + text_encoder_2
    (CLIPTextModelWithProjection), tokenizer + tokenizer_2, unet, vae, scheduler."""
    if not (path / "text_encoder").is_dir():
        raise CheckpointError(f"{path}: an SDXL refiner folder (text_encoder_2 without text_encoder); mini-ldm draws "
                              "with SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0)")
    unet_json, vae_json, clip_json, bigg_json = (_read_json(path / part / "config.json") for part in SDXL_FOLDER_PARTS)
    scheduler_json = _scheduler_config(path)
    with ExitStack() as stack:
        with _unfit_inputs_as_errors(path, **FOLDER_ERRORS):
            raw = [TensorSource(_weights_file(path / part), stack) for part in SDXL_FOLDER_PARTS]
            sources = (diffusers_unet_tensors(raw[0], unet_json), diffusers_vae_tensors(raw[1], vae_json),
                       hf_text_tensors(raw[2]), hf_text_tensors(raw[3]))
            unet_cfg, vae_cfg, _ = _folder_configs(sources[:3], "sdxl", unet_json, vae_json, clip_json, dtype)
            text_cfgs = _sdxl_text_configs(sources[2], sources[3], clip_json["num_hidden_layers"],
                                           bigg_json["num_hidden_layers"], clip_json["num_attention_heads"],
                                           bigg_json["num_attention_heads"])
        modules = _build_modules((unet_cfg, vae_cfg, *text_cfgs), sources,
                                 [path / part for part in SDXL_FOLDER_PARTS], device, dtype)
    pred = "v" if scheduler_json.get("prediction_type") == "v_prediction" else "epsilon"
    native = _native_size("sdxl", pred, unet_json.get("sample_size", 128), modules[1].downscale)
    toks = [path / name if (path / name / "vocab.json").exists() else None for name in ("tokenizer", "tokenizer_2")]
    return Checkpoint(path, "sdxl", modules[0], modules[1], modules[2], pred, "scheduler/scheduler_config.json",
                      native, toks[0], scheduler_json or dict(SDXL_SCHEDULER), modules[3], toks[1])


def _folder_configs(sources, family: str, unet_json: dict, vae_json: dict, text_json: dict, dtype) -> tuple:
    """UNet, VAE and text encoder configs: shapes from the tensors, the rest from the folder's config.json files."""
    unet_src, vae_src, text_src = sources
    # diffusers' "attention_head_dim" is really the number of heads (unless num_attention_heads is set).
    heads = unet_json.get("num_attention_heads") or unet_json.get("attention_head_dim", 8)
    heads = [heads] * len(unet_json["block_out_channels"]) if isinstance(heads, int) else list(heads)
    upcast = bool(unet_json.get("upcast_attention")) or _upcast_attention(family, dtype)
    return (unet_config(unet_src, family, heads=heads, upcast=upcast),
            vae_config(vae_src, scale=vae_json.get("scaling_factor", 0.18215)),
            text_config(text_src, family, text_json["num_hidden_layers"], text_json["num_attention_heads"],
                        text_json.get("hidden_act")))


def _check_diffusers_folder(path: Path):
    if not (path / "unet").is_dir():
        if not any(path.iterdir()):
            raise CheckpointError(f"{path}: the folder is empty; put a checkpoint (.safetensors) or a diffusers "
                                  "folder there")
        raise CheckpointError(f"{path}: a folder that is not a diffusers Stable Diffusion folder (no unet/ inside); "
                              "pass the .safetensors file itself, or a folder with unet/, vae/, text_encoder/")


def _scheduler_config(path: Path) -> dict:
    """scheduler/scheduler_config.json ({} if the folder has none), refused now if the samplers cannot
    reproduce its noise schedule, rather than sampling with SD's schedule later."""
    if not (path / "scheduler").is_dir():
        return {}
    config_path = path / "scheduler" / "scheduler_config.json"
    config = _read_json(config_path)
    try:
        alphas_cumprod_from_config(config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path}: {first_line(e)}") from None
    return config


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; a diffusers folder needs unet/, vae/, text_encoder/ "
                              "and their config.json files") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({first_line(e)})") from None


def _weights_file(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (folder / name).exists():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file (expected diffusion_pytorch_model.safetensors "
                          "or model.safetensors)")
