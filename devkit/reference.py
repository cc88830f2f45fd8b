"""Images from a diffusers pipeline, as the parity tests compare them: one scheduler swapped in, a seeded CPU
generator, uint8 pixels."""
import numpy as np
import torch


def reference_images(pipe, scheduler: tuple, config, prompt: str, negative: str, steps: int, cfg: float,
                     height: int, width: int, n: int, seed: int) -> np.ndarray:
    """`scheduler` = (diffusers class name, from_config overrides), built on `config` (the repo's own, never a
    previous from_config's). Returns (n, H, W, 3) uint8."""
    import diffusers

    cls, overrides = scheduler
    pipe.scheduler = getattr(diffusers, cls).from_config(config, **overrides)
    out = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=cfg, height=height,
               width=width, num_images_per_prompt=n, generator=torch.Generator("cpu").manual_seed(seed),
               output_type="np").images
    return (out * 255).round().astype(np.uint8)
