#!/usr/bin/env python
"""Full-size parity check: our image vs diffusers', same seed, on a random-weight SD checkpoint.

Builds (once, under --root) a full-size random SD 1.5 / 2.0-base / 2.1-768-v model as a diffusers folder
and as a single LDM-layout file, draws one image with StableDiffusionPipeline from the folder, then the
same with mini_ldm from both layouts, and prints the largest and mean absolute pixel differences
(8-bit levels). Optionally registers Textual Inversion files in both (e.g. the paper's).

    python benchmarks/parity_fullsize.py --family sd2 --scheduler dpm++2m_karras
    python benchmarks/parity_fullsize.py --family sd2 --prediction v --size 768 --scheduler euler --steps 2
    python benchmarks/parity_fullsize.py --family sd2 --embedding ../shared/paper-embeddings/chexpert_pleural_effusion.pt \
        --prompt "chexpert_pleural_effusion, frontal view"

Needs diffusers/transformers (requirements-dev.txt), about 12 GB of RAM and minutes per image on a CPU.
"""
import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from devkit import tiny_models  # noqa: E402  (its writers; the sizes are replaced below)

SCHEDULERS = {"ddim": ("DDIMScheduler", {}), "euler": ("EulerDiscreteScheduler", {}),
              "euler_a": ("EulerAncestralDiscreteScheduler", {}), "dpm++2m": ("DPMSolverMultistepScheduler", {}),
              "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True})}
FILE_NAMES = {("sd1", "epsilon"): "v1-5-pruned-emaonly.safetensors", ("sd2", "epsilon"): "512-base-ema.safetensors",
              ("sd2", "v"): "v2-1_768-ema-pruned.safetensors"}


def full_size(family: str, size: int):
    """Point tiny_models' builders at SD's real sizes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    sd2 = family == "sd2"

    def unet(_family, prediction):
        return UNet2DConditionModel(
            sample_size=size // 8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2, cross_attention_dim=1024 if sd2 else 768,
            attention_head_dim=(5, 10, 20, 20) if sd2 else 8, use_linear_projection=sd2,
            upcast_attention=sd2 and prediction == "v_prediction")

    def vae():
        return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                             sample_size=size)

    tiny_models._unet, tiny_models._vae = unet, vae
    tiny_models.TEXT = {"sd1": (768, 12, "quick_gelu"), "sd2": (1024, 23, "gelu")}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=("sd1", "sd2"), default="sd2")
    p.add_argument("--prediction", choices=("epsilon", "v"), default="epsilon")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="euler_a")
    p.add_argument("--prompt", default="frontal chest x-ray, pleural effusion!")
    p.add_argument("--negative-prompt", default="blurry")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--embedding", type=Path, default=None, help="a Textual Inversion file to use in both")
    p.add_argument("--root", type=Path, default=Path("/tmp/mini-ldm-parity"))
    a = p.parse_args()

    import diffusers
    import mini_ldm
    from mini_ldm.embeddings import read_embedding

    folder = a.root / f"{a.family}-{a.prediction}"
    single = a.root / f"{a.family}-{a.prediction}-single" / FILE_NAMES.get((a.family, a.prediction), "model.safetensors")
    if not folder.exists():
        full_size(a.family, a.size)
        tiny_models.make_diffusers_folder(folder, a.family, "v_prediction" if a.prediction == "v" else "epsilon")
        gc.collect()
        tiny_models.make_single_file(folder, single)

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    cls, overrides = SCHEDULERS[a.scheduler]
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **overrides)
    emb = read_embedding(a.embedding) if a.embedding else None
    if emb:
        pipe.load_textual_inversion(str(a.embedding), token=emb.token)
    t = time.time()
    ref = pipe(a.prompt, negative_prompt=a.negative_prompt, num_inference_steps=a.steps, guidance_scale=a.cfg,
               height=a.size, width=a.size, generator=torch.Generator("cpu").manual_seed(a.seed), output_type="np").images
    ref = (ref[0] * 255).round().astype(np.uint8)
    print(f"diffusers: {time.time() - t:.0f}s")
    del pipe
    gc.collect()
    for path in (folder, single):
        sd = mini_ldm.load(path, device="cpu", dtype="fp32")
        if emb:
            sd.add_learned_token(emb.token, emb.vectors)
        t = time.time()
        images, _ = sd.sample(a.prompt, a.negative_prompt, seed=a.seed, steps=a.steps, cfg=a.cfg,
                              scheduler=a.scheduler, height=a.size, width=a.size, progress=False)
        diff = np.abs(np.asarray(images[0]).astype(int) - ref.astype(int))
        print(f"{path.name}: {sd.family} {sd.prediction}, {time.time() - t:.0f}s; "
              f"max {diff.max()} levels, mean {diff.mean():.2g}")
        del sd
        gc.collect()


if __name__ == "__main__":
    main()
