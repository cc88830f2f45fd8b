"""A held-out validation loss that only moves when the vectors do.

A Textual Inversion training loss is dominated by the random timestep and noise of each step. Here every
held-out image is scored at the same timesteps (evenly spaced over the schedule) with noise drawn ONCE per
(image, timestep) from a generator of its own, so the training generator's stream is untouched and two
evaluations differ only because the vectors changed (Voronov et al., "Is This Loss Informative?", 2023).
The latent is the image's posterior mean (no sampling). Each concept is scored on its own in chunks of a
fixed size, so its value does not depend on the other concepts or on which of them are still training.
"""
from dataclasses import dataclass

import torch

from mini_ldm.errors import UserError

CHUNK = 8  # rows per no-grad forward: fixed, so the numbers do not depend on anything else
SEED_OFFSET = 0x7A11D  # the validation generator's seed is the run's seed plus this


def fixed_timesteps(count: int, schedule_length: int) -> list[int]:
    """`count` timesteps evenly spaced over the schedule, at the middles of equal bins: 8 of 1000 ->
    62, 187, ..., 937."""
    if not 1 <= count <= schedule_length:
        raise UserError(f"--val-timesteps {count}: must be between 1 and {schedule_length} (the model's schedule)")
    return [int((j + 0.5) * schedule_length / count) for j in range(count)]


@dataclass
class HeldOut:
    """One concept's fixed validation rows, image-major: image i at timestep j is row i * T + j."""
    x0: torch.Tensor  # (N*T, 4, h, w) unscaled latents (posterior means)
    t: torch.Tensor  # (N*T,)
    noise: torch.Tensor  # (N*T, 4, h, w)
    captions: list  # (N*T,)
    images: torch.Tensor  # (N*T,) which held-out image each row is (its recorded size and crop, on SDXL)


def held_out_rows(caches: list, timesteps: list[int], seed: int) -> list:
    """A HeldOut per cache (None where a concept has no held-out images), all noise from one generator."""
    g = torch.Generator("cpu").manual_seed((seed + SEED_OFFSET) % 2**64)
    rows = []
    for cache in caches:
        if cache is None:
            rows.append(None)
            continue
        n, k = len(cache), len(timesteps)
        x0 = cache.mean.float().repeat_interleave(k, 0)
        noise = torch.randn(x0.shape, generator=g)
        captions = [cache.caption(i) for i in range(n) for _ in range(k)]
        images = torch.arange(n).repeat_interleave(k)
        rows.append(HeldOut(x0, torch.tensor(timesteps * n), noise, captions, images))
    return rows


@torch.no_grad()
def validation_loss(held: HeldOut, squared_errors) -> float:
    """Mean over every row of `squared_errors(x0, noise, t, captions, rows)` (a (B,) tensor of per-row
    mean squared errors, made by the trainer with its model and the current vectors), summed in float64."""
    total = 0.0
    for start in range(0, len(held.t), CHUNK):
        rows = slice(start, start + CHUNK)
        errors = squared_errors(held.x0[rows], held.noise[rows], held.t[rows], held.captions[rows], rows)
        total += errors.double().sum().item()
    return total / len(held.t)
