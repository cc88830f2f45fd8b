"""Each image's denoising loss, as Textual Inversion training measured it, on draws every image shares.

The pieces are training's own: the images read and cropped by ti.data (shorter side to the resolution, centre
crop), encoded once by the VAE into ti.data's LatentCache (its posterior mean, as ti/validation.py scores held-out
images), the prediction and target from ti.trainer.denoising_prediction (the very function training and
validation call), prompts from the training templates (ti.templates.render) with the learned vectors spliced in. What differs from a training step is only the randomness: every image is scored at the same
timesteps with the same noise tensors and the same template per draw, so two images' losses differ because of
the images, not because of the draws (paired comparisons, far less noisy than independent ones).
"""
from dataclasses import dataclass

import torch

from mini_ldm.errors import UserError
from ti.data import LatentCache, load_dataset, vae_encoder
from ti.templates import render
from ti.trainer import denoising_prediction


@dataclass
class Draws:
    """The (timestep, noise) draws every image is scored on."""
    timesteps: list  # T timesteps
    noise: torch.Tensor  # (T, D, 4, h, w)

    @property
    def per_timestep(self) -> int:
        return self.noise.shape[1]


def shared_draws(timesteps: list, draws: int, latent_shape: tuple, seed: int) -> Draws:
    """D noise tensors per timestep from one seeded CPU generator: the same seed gives the same draws."""
    g = torch.Generator("cpu").manual_seed(seed)
    return Draws(list(timesteps), torch.randn((len(timesteps), draws, *latent_shape), generator=g))


def check_timesteps(timesteps: list, schedule_length: int) -> None:
    bad = [t for t in timesteps if not 0 <= t < schedule_length]
    if bad:
        raise UserError(f"--timesteps: {bad[0]} is outside the model's schedule (0 to {schedule_length - 1})")


@torch.no_grad()
def encode_images(sd, root, paths: list, resolution: int, batch: int, progress: bool) -> LatentCache:
    """The images' latent distributions, as train.py encodes its training images (centre crop, no flip)."""
    items = load_dataset(root, resolution, crop="center", flip=False, paths=paths)
    return LatentCache.build(items, vae_encoder(sd), batch, progress=progress)


@torch.no_grad()
def image_losses(sd, cache: LatentCache, draws: Draws, templates: list, word: str, batch: int, bar) -> torch.Tensor:
    """(N, T) float64: image i's mean squared error at timestep j, averaged over the D shared draws, with `word`
    (the learned token, or the reference text) in the templates. Draw (j, d) always uses template
    (j * D + d) mod len(templates), so every image sees the same prompts."""
    n, steps, per = len(cache), len(draws.timesteps), draws.per_timestep
    # draw-major: a chunk's rows share a draw and so its template: the text encoder sees one prompt per chunk
    # (one per caption with [filewords]), not one per row
    rows = [(i, j, d) for j in range(steps) for d in range(per) for i in range(n)]
    errors = torch.empty(len(rows), dtype=torch.float64)
    side = cache.mean.shape[-1] * sd.vae.downscale  # SDXL: each image's size conditioning at this size
    timesteps = torch.tensor(draws.timesteps)
    alphas_cumprod = sd.alphas_cumprod.to(sd.device)
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        i, j, d = (torch.tensor(column) for column in zip(*chunk))
        prompts = [render(templates[(jj * per + dd) % len(templates)], word, cache.caption(ii)) for ii, jj, dd in chunk]
        out, target = denoising_prediction(sd, sd.unet, alphas_cumprod, cache.mean[i], draws.noise[j, d],
                                           timesteps[j], prompts, cache.size_conditioning(i, side), sd.learned)
        errors[start:start + len(chunk)] = (out - target).pow(2).mean(dim=(1, 2, 3)).double().cpu()
        bar.update(len(chunk))
    return errors.view(steps, per, n).mean(1).T
