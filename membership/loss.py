"""Each image's denoising loss, as Textual Inversion training measured it, on draws every image shares.

The pieces are training's own: the images read and cropped by ti.data (shorter side to the resolution, centre
crop), encoded once by the VAE into ti.data's LatentCache (its posterior mean, as ti/validation.py scores held-out
images), noised by samplers.noised_for_training, compared with samplers.training_target (the noise, or v), prompts
from the training templates (ti.templates.render) through prompt.encode_first_windows with the learned vectors
spliced in. What differs from a training step is only the randomness: every image is scored at the same
timesteps with the same noise tensors and the same template per draw, so two images' losses differ because of
the images, not because of the draws (paired comparisons, far less noisy than independent ones).
(The trainer's own `_predict` is a method bound to its trainable parameters; `predict` below is its no-grad
twin for fixed vectors.)
"""
from dataclasses import dataclass

import torch

from mini_ldm import prompt as prompting
from mini_ldm import samplers
from mini_ldm.errors import UserError
from mini_ldm.unet import added_conditioning
from ti.data import LatentCache, load_dataset
from ti.templates import render


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

    def encode(images):  # CPU float32 in [-1, 1] -> the VAE's latent distribution, on the CPU
        mean, logvar = sd.vae.encode(images.to(sd.device, sd.dtype))
        return mean.float().cpu(), logvar.float().cpu()

    return LatentCache.build(items, encode, batch, progress=progress)


def predict(sd, x0, noise, t, prompts: list, sizes):
    """The frozen UNet's prediction and its training target (B, 4, h, w), float32: Trainer._predict without
    gradients, the learned vectors taken from sd.learned."""
    x0 = x0.to(sd.device) * sd.vae.cfg.scale
    noise, t = noise.to(sd.device), t.to(sd.device)
    alpha_bar = sd.alphas_cumprod.to(sd.device)[t].view(-1, 1, 1, 1)
    noisy = samplers.noised_for_training(x0, noise, alpha_bar)  # sqrt(a) x0 + sqrt(1 - a) noise
    target = samplers.training_target(x0, noise, alpha_bar, sd.prediction)  # the noise, or v
    distinct = list(dict.fromkeys(prompts))  # each distinct prompt through the encoder(s) once
    cond = prompting.encode_first_windows(sd.encoders, distinct, sd.learned, sd.device)
    rows = torch.tensor([distinct.index(p) for p in prompts], device=sd.device)
    context = cond.context[rows]  # (B, 77, width)
    y = None if cond.pooled is None else added_conditioning(cond.pooled[rows], sizes.to(sd.device))  # SDXL
    return sd.unet(noisy.to(sd.dtype), t, context, y).float(), target


@torch.no_grad()
def image_losses(sd, cache: LatentCache, draws: Draws, templates: list, word: str, batch: int, bar) -> torch.Tensor:
    """(N, T) float64: image i's mean squared error at timestep j, averaged over the D shared draws, with `word`
    (the learned token, or the reference text) in the templates. Draw (j, d) always uses template
    (j * D + d) mod len(templates), so every image sees the same prompts."""
    n, steps, per = len(cache), len(draws.timesteps), draws.per_timestep
    rows = [(i, j, d) for i in range(n) for j in range(steps) for d in range(per)]  # image-major
    errors = torch.empty(len(rows), dtype=torch.float64)
    side = cache.mean.shape[-1] * sd.vae.downscale  # SDXL: each image's size conditioning at this size
    timesteps = torch.tensor(draws.timesteps)
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        i, j, d = (torch.tensor(column) for column in zip(*chunk))
        prompts = [render(templates[(jj * per + dd) % len(templates)], word, cache.caption(ii)) for ii, jj, dd in chunk]
        out, target = predict(sd, cache.mean[i], draws.noise[j, d], timesteps[j], prompts,
                              cache.size_conditioning(i, side))
        errors[start:start + len(chunk)] = (out - target).pow(2).mean(dim=(1, 2, 3)).double().cpu()
        bar.update(len(chunk))
    return errors.view(n, steps, per).mean(-1)
