"""`mini_ldm.load`: a checkpoint path -> a ready StableDiffusion (the flags that choose it: model_settings.py)."""

import torch

from .checkpoint import load_checkpoint
from .errors import CheckpointError, UserError
from .model_settings import PREDICTIONS
from .pipeline import StableDiffusion
from .settings import check_device_name
from .tokenizer import CLIPTokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # model_settings.DTYPE_NAMES, the --dtype choices


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_autocast_dtype(device) -> str:
    """Training's precision when none is asked for: bf16 autocast on a CUDA GPU that has it (as fast as fp16
    without its overflow), fp32 elsewhere."""
    return "bf16" if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def check_device(device: str) -> torch.device:
    """A device string that this machine can use, or a one-line error."""
    if isinstance(device, str):
        check_device_name(device)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this PyTorch build sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype, device) -> torch.dtype:
    """'fp16'/'bf16'/'fp32', a torch.dtype, or None: fp16 on CUDA, fp32 elsewhere."""
    if dtype is None:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load(path, device=None, dtype=None, prediction="auto", vae=None) -> StableDiffusion:
    """Load a single-file checkpoint (.safetensors, or .ckpt read without unpickling code) or a diffusers folder.

    prediction: "auto", "epsilon" or "v"; only used for single files (a folder's scheduler config says).
    vae: another VAE to decode and encode with (a file or a diffusers vae/ folder), e.g. SDXL's fp16-fix VAE.
    """
    device = device or default_device()
    check_device(device)
    if prediction not in PREDICTIONS:
        raise UserError(f"--prediction {prediction}: choose auto, epsilon or v")
    dtype = resolve_dtype(dtype, device)
    ckpt = load_checkpoint(path, device=device, dtype=dtype, prediction=prediction, vae=vae)
    tokenizers = [_tokenizer(folder, spec.pad_id) for folder, spec in zip(ckpt.tokenizer_dirs, ckpt.family.encoders)]
    return StableDiffusion(ckpt, tokenizers, device, dtype)


def _tokenizer(folder, pad_id: int) -> CLIPTokenizer:
    """A diffusers folder's own tokenizer/ files, or the shipped CLIP vocabulary padded with `pad_id` (the
    family's: OpenAI CLIP pads the 77-token window with end-of-text, OpenCLIP with id 0)."""
    if folder is None:
        return CLIPTokenizer.default(pad_id=pad_id)
    try:
        return CLIPTokenizer.from_folder(folder)
    except (ValueError, OSError) as e:  # a broken tokenizer/ folder: missing merges.txt, bad JSON
        raise CheckpointError(f"{folder}: not a usable CLIP tokenizer ({e})") from None
