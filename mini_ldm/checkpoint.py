"""Reading Stable Diffusion weights (1.x, 2.x, XL): single files (LDM/SGM key layout) and diffusers folders.

The model classes are named after the single-file keys, so a single file loads by stripping a
prefix. A diffusers folder's names and OpenCLIP's names are mapped onto them by the lazy views of
key_renames.py. Which family a checkpoint is (families.py) is decided here, once, from its keys or its
folder's configs; one single-file loader and one folder loader then read any family through its record.
Configs are read from the tensor shapes, so any model of a known family's shape loads (also the tiny
random ones the tests make); the few numbers shapes cannot tell come from the record or the folder's
config.json files.

Memory: modules are built on the meta device (no allocation), then every tensor is read from the
memory-mapped file, cast and moved on its own, and assigned in place: the weights exist once.
"""
import json
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .clip import TextEncoder
from .errors import CheckpointError, first_line
from .families import (REFINER_PREFIX, UNET_PREFIX, VAE_PREFIX, Family, count, folder_family, native_size,
                       single_file_family, text_config, unet_config, vae_config, vae_latent_channels)
from .key_renames import (Prefixed, TensorSource, diffusers_unet_tensors, diffusers_vae_tensors, hf_text_tensors,
                          open_clip_tensors)
from .samplers import alphas_cumprod_from_config
from .unet import UNet
from .vae import AutoencoderKL

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class Checkpoint:
    """Everything `load` learns from a checkpoint before building the pipeline."""

    path: Path
    family: Family
    unet: UNet
    vae: AutoencoderKL
    text_encoders: list  # TextEncoder, one per family.encoders, in that order
    prediction: str  # "epsilon" or "v"
    prediction_reason: str
    native_size: int  # pixels
    tokenizer_dirs: list  # per text encoder: a diffusers folder's own tokenizer files, or None
    scheduler_config: dict


# --- building modules ---------------------------------------------------------------------------


def build(cls, cfg, src, what: str, path: Path, device, dtype):
    """Instantiate `cls(cfg)` without allocating, then fill every parameter from `src`."""
    try:
        with torch.device("meta"):
            module = cls(cfg)
    except (ValueError, RuntimeError) as e:  # e.g. channels that GroupNorm(32) cannot split
        raise CheckpointError(f"{path}: the {what} weights have shapes no Stable Diffusion model has "
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


def _build_modules(family: Family, configs, sources, places, device, dtype) -> tuple:
    """UNet, VAE and the family's text encoders from their configs and tensor sources; `places` name them in
    errors."""
    kinds = [(UNet, "UNet"), (AutoencoderKL, "VAE")] + [(TextEncoder, spec.what) for spec in family.encoders]
    return tuple(build(cls, cfg, src, what, place, device, dtype)
                 for (cls, what), cfg, src, place in zip(kinds, configs, sources, places))


def _checkpoint(path, family, modules, prediction, reason, native, tokenizer_dirs, scheduler) -> Checkpoint:
    unet, vae, *text_encoders = modules
    return Checkpoint(path, family, unet, vae, text_encoders, prediction, reason, native, tokenizer_dirs, scheduler)


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


def _upcast_attention(family: Family, dtype) -> bool:
    """SD2's attention logits can overflow fp16 (SD2.1-768's diffusers config sets upcast_attention for
    that reason), so such a family in half precision computes attention in fp32, whatever the file says."""
    return family.upcast_in_half and dtype != torch.float32


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
        ckpt.vae = load_vae(vae, ckpt.vae.cfg.scale, device, dtype, latent_channels=ckpt.unet.cfg.out_channels)
    return ckpt


def load_vae(path, scale: float, device="cpu", dtype=torch.float32, latent_channels: int | None = None):
    """A VAE on its own: an LDM-layout file (vae-ft-mse-840000-ema-pruned.safetensors, with or without the
    first_stage_model. prefix), a diffusers-layout file (sdxl_vae.safetensors) or a diffusers vae/ folder.
    `scale` is the model's latent scale: a swapped-in VAE decodes the same latent space. `latent_channels`:
    the UNet's, which the VAE must have too (a 16-channel SD3/Flux VAE is refused here, not at the first step)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--vae {path}: no such file or folder")
    with ExitStack() as stack:
        raw = TensorSource(_weights_file(path) if path.is_dir() else path, stack)
        if any(k.startswith(VAE_PREFIX) for k in raw.keys()):
            src = Prefixed(raw, VAE_PREFIX)
        elif any(k.startswith("encoder.down_blocks.") for k in raw.keys()):
            src = diffusers_vae_tensors(raw)
        else:
            src = raw
        with _unfit_inputs_as_errors(path, missing="--vae: not a VAE (no tensor {key})",
                                     unexpected="--vae: not a Stable Diffusion VAE (unexpected tensor shapes)"):
            channels = vae_latent_channels(src)
            if latent_channels is not None and channels != latent_channels:
                raise CheckpointError(f"--vae {path}: a VAE with {channels} latent channels (as SD3's and Flux's "
                                      f"have), but this model's UNet works on {latent_channels}-channel latents; "
                                      "use a VAE made for this model")
            cfg = vae_config(src, scale)
        return build(AutoencoderKL, cfg, src, "VAE", path, device, dtype)


# --- single files -------------------------------------------------------------------------------

# A single file may state, in its safetensors metadata, the numbers its shapes cannot tell (as the --demo
# model does, mini_ldm/demo.py): {"unet_heads": [per level], "text_heads": n, "native_size": pixels}.
CONFIG_METADATA = "mini_ldm.config"


def _load_single_file(path: Path, device, dtype, prediction: str) -> Checkpoint:
    with ExitStack() as stack:
        source = TensorSource(path, stack)
        family = _single_file_family(source)
        stated = _stated_config(source)
        texts = [_single_file_text(source, spec) for spec in family.encoders]  # (tensors, layers) each
        sources = (Prefixed(source, UNET_PREFIX), Prefixed(source, VAE_PREFIX), *(src for src, _ in texts))
        with _unfit_inputs_as_errors(path, missing=f"not a complete {family.label} checkpoint (no tensor {{key}})",
                                     unexpected=f"not an {family.label} checkpoint (unexpected tensor shapes)"):
            configs = (unet_config(sources[0], family, stated.get("unet_heads"), _upcast_attention(family, dtype)),
                       vae_config(sources[1], family.vae_scale),
                       *(text_config(src, spec, layers, stated.get("text_heads"))
                         for (src, layers), spec in zip(texts, family.encoders)))
        pred, reason = _single_file_prediction(path, family, prediction)
        modules = _build_modules(family, configs, sources, [path] * len(sources), device, dtype)
    native = stated.get("native_size") or native_size(family, pred)
    return _checkpoint(path, family, modules, pred, reason, native, [None] * len(texts), dict(family.scheduler))


def _single_file_family(source: TensorSource) -> Family:
    """The file's family, once every part it needs is there; an SDXL refiner or a partial file is refused."""
    keys = source.keys()
    if REFINER_PREFIX + "token_embedding.weight" in keys:
        raise CheckpointError(f"{source.path}: an SDXL refiner checkpoint (one OpenCLIP bigG text encoder at "
                              f"{REFINER_PREFIX}); mini-ldm draws with SDXL base 1.0 (sd_xl_base_1.0.safetensors)")
    family = single_file_family(keys)
    parts = {"UNet": UNET_PREFIX, "VAE": VAE_PREFIX, **{spec.what: spec.file_prefix for spec in family.encoders}}
    lacking = [what for what, prefix in parts.items() if not any(k.startswith(prefix) for k in keys)]
    if len(lacking) == len(parts):
        raise CheckpointError(f"{source.path}: has no UNet, VAE or text encoder weights, so it is not a Stable "
                              "Diffusion checkpoint (LoRA and VAE-only files are not supported; a VAE goes to --vae)")
    if lacking:
        raise CheckpointError(f"{source.path}: part of an {family.label} checkpoint (no {', no '.join(lacking)}); "
                              "use the complete checkpoint file or its diffusers folder (a VAE alone goes to --vae)")
    return family


def _single_file_text(source: TensorSource, spec):
    """(one text encoder's tensors under Hugging Face names, its layers) from a single file."""
    raw = Prefixed(source, spec.file_prefix)
    if spec.open_clip:
        layers = count(raw.keys(), r"transformer\.resblocks\.(\d+)\.") - spec.dropped_file_layers
        return open_clip_tensors(raw, layers, projection=spec.pooled), layers
    src = hf_text_tensors(raw)  # with or without `text_model.`, depending on the saver's version
    return src, count(src.keys(), r"encoder\.layers\.(\d+)\.")


def _stated_config(source: TensorSource) -> dict:
    try:
        stated = json.loads(source.metadata.get(CONFIG_METADATA, "{}"))
    except ValueError:
        raise CheckpointError(f"{source.path}: its {CONFIG_METADATA} metadata is not JSON") from None
    return stated if isinstance(stated, dict) else {}


def _single_file_prediction(path: Path, family: Family, prediction: str):
    if prediction in ("epsilon", "v"):
        return prediction, "--prediction"
    name = path.name.lower()
    if re.search(r"768-v|v-pred|vpred|v_pred", name) or (family.v_file_name and re.search(family.v_file_name, name)):
        return "v", f"auto: the file name '{path.name}' names a 768 v-prediction model"
    yaml = path.with_suffix(".yaml")
    if yaml.exists() and re.search(r"parameterization:\s*['\"]?v['\"]?\s*$", yaml.read_text(errors="ignore"), re.M):
        return "v", f"auto: {yaml.name} says parameterization: v"
    return "epsilon", "auto: epsilon unless the file name says v-prediction (use --prediction v for v models)"


# --- diffusers folders --------------------------------------------------------------------------


def _load_folder(path: Path, device, dtype) -> Checkpoint:
    family = _folder_family(path)
    parts = ("unet", "vae", *(spec.folder for spec in family.encoders))
    unet_json, vae_json, *text_jsons = (_read_json(path / part / "config.json") for part in parts)
    scheduler_json = _scheduler_config(path)
    errors = dict(missing=f"the diffusers folder lacks {{key}}; is it an {family.label} model?",
                  unexpected=f"not an {family.label} diffusers folder (unexpected config values or tensor shapes)")
    with ExitStack() as stack:
        with _unfit_inputs_as_errors(path, **errors):
            raw = [TensorSource(_weights_file(path / part), stack) for part in parts]
            sources = (diffusers_unet_tensors(raw[0], unet_json), diffusers_vae_tensors(raw[1]),
                       *(hf_text_tensors(src) for src in raw[2:]))
            configs = _folder_configs(family, sources, unet_json, vae_json, text_jsons, dtype)
        modules = _build_modules(family, configs, sources, [path / part for part in parts], device, dtype)
    pred = "v" if scheduler_json.get("prediction_type") == "v_prediction" else "epsilon"
    native = native_size(family, pred, unet_json.get("sample_size", family.native_size // 8), modules[1].downscale)
    tokenizers = [path / spec.tokenizer_folder if (path / spec.tokenizer_folder / "vocab.json").exists() else None
                  for spec in family.encoders]
    return _checkpoint(path, family, modules, pred, "scheduler/scheduler_config.json", native, tokenizers,
                       scheduler_json or dict(family.scheduler))


def _folder_family(path: Path) -> Family:
    """The folder's family, once it has every part that family needs; an SDXL refiner is refused."""
    _check_diffusers_folder(path)
    if (path / "text_encoder_2").is_dir() and not (path / "text_encoder").is_dir():
        raise CheckpointError(f"{path}: an SDXL refiner folder (text_encoder_2 without text_encoder); mini-ldm draws "
                              "with SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0)")
    family = folder_family({part: _read_json(path / part / "config.json") for part in ("unet", "text_encoder")})
    for spec in family.encoders:
        if not (path / spec.folder).is_dir():
            raise CheckpointError(f"{path}: an {family.label} diffusers folder without {spec.folder}/ (its "
                                  f"{spec.what}); copy the model's complete folder")
    return family


def _folder_configs(family: Family, sources, unet_json: dict, vae_json: dict, text_jsons: list, dtype) -> tuple:
    """UNet, VAE and text encoder configs: shapes from the tensors, the rest from the folder's config.json files."""
    unet_src, vae_src, *text_srcs = sources
    # diffusers' "attention_head_dim" is really the number of heads (unless num_attention_heads is set).
    heads = unet_json.get("num_attention_heads") or unet_json.get("attention_head_dim", 8)
    heads = [heads] * len(unet_json["block_out_channels"]) if isinstance(heads, int) else list(heads)
    upcast = bool(unet_json.get("upcast_attention")) or _upcast_attention(family, dtype)
    return (unet_config(unet_src, family, heads=heads, upcast=upcast),
            vae_config(vae_src, scale=vae_json.get("scaling_factor", family.vae_scale)),
            *(text_config(src, spec, text_json["num_hidden_layers"], text_json["num_attention_heads"],
                          text_json.get("hidden_act"))
              for src, spec, text_json in zip(text_srcs, family.encoders, text_jsons)))


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
