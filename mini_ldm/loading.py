"""`mini_ldm.load`: a checkpoint path -> a ready StableDiffusion."""
import torch

from .checkpoint import load_checkpoint
from .errors import UserError
from .pipeline import StableDiffusion
from .tokenizer import CLIPTokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype, device) -> torch.dtype:
    """'fp16'/'bf16'/'fp32', a torch.dtype, or None: fp16 on CUDA, fp32 elsewhere."""
    if dtype is None:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load(path, device=None, dtype=None, prediction="auto") -> StableDiffusion:
    """Load a single-file checkpoint (.safetensors, or .ckpt read without unpickling code) or a diffusers folder.

    prediction: "auto", "epsilon" or "v"; only used for single files (a folder's scheduler config says).
    """
    device = device or default_device()
    if prediction not in ("auto", "epsilon", "v"):
        raise UserError(f"--prediction {prediction}: choose auto, epsilon or v")
    ckpt = load_checkpoint(path, device=device, dtype=resolve_dtype(dtype, device), prediction=prediction)
    if ckpt.tokenizer_dir is not None:
        tokenizer = CLIPTokenizer.from_folder(ckpt.tokenizer_dir)
    else:  # SD1 pads the 77-token window with EOS, SD2 (OpenCLIP) with id 0
        tokenizer = CLIPTokenizer.default(pad_id=49407 if ckpt.family == "sd1" else 0)
    return StableDiffusion(ckpt, tokenizer, device, resolve_dtype(dtype, device))
