"""Shared pieces of the benchmarks: random-weight SD models in the diffusers folder layout, machine facts.

    folder = random_model("sd2", "full")         # built once, then reused from the cache folder
    facts = machine()                            # versions, CPU model, threads: for the results JSON

The models have the real Stable Diffusion architecture and sizes (so the timings are those of the real
thing) but random weights, because benchmarks must run offline and timing does not depend on the values:
  full   SD 2.0-base (UNet 865M, OpenCLIP-H text encoder 23 layers x 1024, VAE 84M) or SD 1.5
         (UNet 860M, CLIP-L 12 layers x 768), configs as in the public repos' config.json files.
  small  the same layout at half the UNet/VAE width and half the text-encoder depth (quick runs).
  tiny   a few million parameters, only to check that the scripts run.
Weights use PyTorch's default initialisation (diffusers modules: nn.Conv2d/nn.Linear kaiming-uniform;
the text encoder: transformers' CLIP init, normal(0, 0.02)-style), from torch.manual_seed(seed).
GroupNorm/LayerNorm keep activations O(1) through every block, so losses stay finite.
The tokenizer is the real CLIP BPE vocabulary shipped in mini_ldm/vocab (written by tests/tiny_models.py).
"""
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# family -> text encoder (width, layers, heads, mlp width, activation, projection_dim) at full size
TEXT = {
    "sd1": (768, 12, 12, 3072, "quick_gelu", 768),
    "sd2": (1024, 23, 16, 4096, "gelu", 512),
}
# size -> (UNet channels, VAE channels, text-encoder layer divisor, SD2 UNet heads per level)
SIZES = {
    "full": ((320, 640, 1280, 1280), (128, 256, 512, 512), 1, (5, 10, 20, 20)),
    "small": ((160, 320, 640, 640), (64, 128, 256, 256), 2, (5, 10, 20, 20)),
    "tiny": ((32, 64, 64, 64), (32, 32, 64, 64), 12, (1, 2, 2, 2)),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINI_LDM_BENCH_CACHE", Path(tempfile.gettempdir()) / "mini-ldm-bench"))


def _unet_config(family: str, size: str) -> dict:
    channels = SIZES[size][0]
    sd2 = family == "sd2"
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=channels,
        layers_per_block=2,
        norm_num_groups=32,
        cross_attention_dim=TEXT[family][0],
        # SD1: 8 heads everywhere; SD2-base's config lists heads per level, channels // 64 at full size
        attention_head_dim=SIZES[size][3] if sd2 else 8,
        use_linear_projection=sd2,
    )


def _vae_config(size: str) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=SIZES[size][1],
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )


def _text_config(family: str, size: str):
    from transformers import CLIPTextConfig

    width, layers, heads, mlp, act, proj = TEXT[family]
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=width, intermediate_size=mlp,
        num_hidden_layers=max(1, layers // SIZES[size][2]), num_attention_heads=heads, hidden_act=act,
        layer_norm_eps=1e-5, projection_dim=proj, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )


def _partial_folder(root: Path, what: str, log) -> Path:
    """An empty `<root>.partial` to build into (renamed to root when whole, so a killed build is never reused)."""
    import shutil

    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    log(f"building {what} in {root} (once) ...")
    return tmp


def random_model(family: str = "sd2", size: str = "full", seed: int = 0, cache_dir=None, log=print) -> Path:
    """A random-weight SD model as a diffusers folder; built on first use, reused afterwards."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from devkit.tiny_models import _write_json, _write_tokenizer, scheduler_config

    assert family in TEXT and size in SIZES, (family, size)
    root = Path(cache_dir or default_cache_dir()) / f"{family}-{size}-seed{seed}"
    if (root / "model_index.json").is_file():
        return root
    tmp = _partial_folder(root, f"a random {family} {size} model", log)
    torch.manual_seed(seed)
    UNet2DConditionModel(**_unet_config(family, size)).save_pretrained(tmp / "unet")
    AutoencoderKL(**_vae_config(size)).save_pretrained(tmp / "vae")
    cfg = _text_config(family, size)
    text = CLIPTextModel(cfg)
    cfg.save_pretrained(tmp / "text_encoder")
    # the public repos store `text_model.*` keys (newer transformers may drop the prefix when saving)
    tensors = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.state_dict().items()}
    save_file({k: v.contiguous() for k, v in tensors.items() if not k.endswith("position_ids")},
              str(tmp / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    del text, tensors
    _write_tokenizer(tmp / "tokenizer", family)
    (tmp / "scheduler").mkdir()
    _write_json(tmp / "scheduler" / "scheduler_config.json", scheduler_config("epsilon"))
    _write_json(tmp / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.10.0.dev0",
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    tmp.rename(root)
    return root


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "torch_threads": threads, "mkldnn": torch.backends.mkldnn.is_available()}


def use_threads(threads: int | None) -> int:
    """Run torch on `threads` threads (None: as many as torch chose); returns the number, for machine()."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def command_line(script: str, argv: list | None = None) -> str:
    """The command that ran benchmark `script` (its __file__) with `argv` (None: this process's arguments)."""
    return " ".join(["python", f"benchmarks/{Path(script).name}"] + (sys.argv[1:] if argv is None else list(argv)))


def run_facts(script: str, threads: int, argv: list | None = None) -> dict:
    """What every timing's results JSON records of its run: the machine, the load at the end, the command."""
    return {"machine": machine(threads), "load_average_at_end": os.getloadavg(), "command": command_line(script, argv)}


def write_json(path: Path, obj):
    """`obj` as indented JSON; a value JSON has no type for (a Path among the settings) is written as its str."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


# --- SDXL -----------------------------------------------------------------------------------------
# size -> (UNet channels, heads per level (diffusers' attention_head_dim), transformer depth per level,
#          VAE channels, CLIP-L layers, bigG layers). The text widths stay SDXL's own (768 and 1280), so an
# embedding trained on any size has the real [n, 768] + [n, 1280] layout.
SDXL_SIZES = {
    "full": ((320, 640, 1280), (5, 10, 20), (1, 2, 10), (128, 256, 512, 512), 12, 32),
    "reduced": ((160, 320, 640), (5, 10, 20), (1, 2, 10), (64, 128, 256, 256), 6, 16),
    "tiny": ((32, 64, 128), (1, 1, 2), (1, 1, 2), (32, 32, 64, 64), 1, 1),
}
SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000,
                  "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading",
                  "use_karras_sigmas": False}


def random_sdxl(size: str = "reduced", seed: int = 0, cache_dir=None, log=print) -> Path:
    """A random-weight SDXL base as a diffusers folder (StableDiffusionXLPipeline loads it); built once."""
    from devkit.tiny_models import _write_tokenizer
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_ch, heads, depth, vae_ch, clip_layers, bigg_layers = SDXL_SIZES[size]
    root = Path(cache_dir or default_cache_dir()) / f"sdxl-{size}-seed{seed}"
    if (root / "model_index.json").is_file():
        return root
    tmp = _partial_folder(root, f"a random SDXL {size} model", log)
    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=unet_ch,
        layers_per_block=2, transformer_layers_per_block=depth, attention_head_dim=heads, cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32).save_pretrained(tmp / "unet")
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=vae_ch, layers_per_block=2, latent_channels=4, norm_num_groups=32,
                  sample_size=1024, scaling_factor=0.13025).save_pretrained(tmp / "vae")
    for name, cls, (width, layers, heads_, act) in (
            ("text_encoder", CLIPTextModel, (768, clip_layers, 12, "quick_gelu")),
            ("text_encoder_2", CLIPTextModelWithProjection, (1280, bigg_layers, 20, "gelu"))):
        cfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_size=width,
                             intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads_,
                             hidden_act=act, layer_norm_eps=1e-5, projection_dim=width, pad_token_id=1,
                             bos_token_id=0, eos_token_id=2)
        cfg.save_pretrained(tmp / name)
        tensors = {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
                   for k, v in cls(cfg).state_dict().items()}
        save_file({k: v.contiguous() for k, v in tensors.items() if not k.endswith("position_ids")},
                  str(tmp / name / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(tmp / "tokenizer", "sd1")  # CLIP-L pads with end-of-text ...
    _write_tokenizer(tmp / "tokenizer_2", "sdxl")  # ... bigG with "!" (id 0)
    (tmp / "scheduler").mkdir()
    write_json(tmp / "scheduler" / "scheduler_config.json", SDXL_SCHEDULER)
    write_json(tmp / "model_index.json", {
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0", "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})
    tmp.rename(root)
    return root


def max_level_difference(a: list, b: list) -> int:
    """The largest difference, in levels of 255, between the images of two lists of PNG paths, pair by pair."""
    import numpy as np
    from PIL import Image

    worst = 0
    for pa, pb in zip(a, b):
        with Image.open(pa) as x, Image.open(pb) as y:
            d = np.abs(np.asarray(x.convert("RGB")).astype(int) - np.asarray(y.convert("RGB")).astype(int))
            worst = max(worst, int(d.max()))
    return worst
