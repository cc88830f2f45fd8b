"""Noise schedule and samplers: DDIM, Euler, Euler ancestral, DPM++ 2M (Karras), as plain functions.

Everything runs in the 'VE' parametrisation of k-diffusion: a noisy sample is x = x0 + sigma * eps, and
the UNet is called on x / sqrt(sigma^2 + 1), which is exactly the 'VP' latent the model was trained on
(x_vp = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps, with sigma^2 = (1 - alpha_bar) / alpha_bar).
A caller wraps its eps- or v-model once into `denoise(x, i) -> x0 estimate`, and each sampler is a
short loop over a sigma sequence.

The schedules reproduce diffusers' schedulers built `from_config` on the scheduler_config.json the public
SD repos ship (PNDM config: scaled_linear betas 0.00085..0.012, steps_offset 1, set_alpha_to_one false,
no timestep_spacing key), step for step:

  name              diffusers class                      spacing   UNet timesteps        diffusers' state
  "ddim"            DDIMScheduler, eta 0                 leading   int, k*(1000//n)+1    VP
  "euler"           EulerDiscreteScheduler               linspace  float32, fractional   VE
  "euler_a"         EulerAncestralDiscreteScheduler      linspace  float32, fractional   VE
  "dpm++2m"         DPMSolverMultistepScheduler          linspace  int, rounded          VP
  "dpm++2m_karras"  same, use_karras_sigmas=True         karras    int, sigma->t rounded VP

Relation to diffusers' `latents` at step i: for euler/euler_a ours is the same tensor; for ddim and
dpm++ (which keep the VP sample) ours is latents * sqrt(1 + sigmas[i]^2). `sample()` converts back at
the end, so what it returns is what diffusers hands the VAE.
"""
from dataclasses import dataclass, replace

import torch

from .sample_settings import SCHEDULERS

BETA_SCHEDULES = ("scaled_linear", "linear")
# SD's training schedule, as its scheduler_config.json says (also alphas_cumprod's defaults)
SD_SCHEDULE_NUMBERS = {"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


def alphas_cumprod(beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                   beta_schedule="scaled_linear") -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1, float32 as diffusers computes it. SD trained with 'scaled_linear'
    betas (linear in sqrt(beta)); 'linear' is linear in beta."""
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported (only {' and '.join(BETA_SCHEDULES)})")
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod_from_config(config: dict) -> torch.Tensor:
    """The training noise schedule a diffusers scheduler_config.json describes; SD's values for missing keys.

    Raises ValueError for what the samplers cannot reproduce rather than silently using SD's schedule.
    """
    if config.get("trained_betas") is not None:
        raise ValueError("trained_betas (an explicit list of betas) is not supported")
    if config.get("rescale_betas_zero_snr"):  # alpha_bar_T = 0 puts sigma_max at infinity
        raise ValueError("rescale_betas_zero_snr is not supported")
    numbers = {key: config.get(key, default) for key, default in SD_SCHEDULE_NUMBERS.items()}
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} {value!r} is not a number")
    return alphas_cumprod(**numbers, beta_schedule=config.get("beta_schedule", "scaled_linear"))


_alphas_cumprod = alphas_cumprod  # make_schedule's argument shadows the name


@dataclass
class Schedule:
    sigmas: torch.Tensor     # (steps+1,) float32 VE noise levels; last is 0, or sigma(t=0) for ddim
    timesteps: torch.Tensor  # (steps,) what the UNet is given at step i (float32 or int64, as diffusers)
    init_noise_sigma: float  # x = randn * init_noise_sigma is the VE starting sample for txt2img: diffusers'
                             # value for euler/euler_a (sigma_max); sqrt(1 + sigma_max^2) for ddim/dpm++,
                             # whose diffusers value 1.0 scales a VP sample (see _init_noise_sigma)
    name: str = ""           # the sampler this schedule was made for (truncate needs it)


# ---------------------------------------------------------------------------------------------------
# Schedules. The float arithmetic mirrors numpy's (float64 linspace/interp, float32 results), because
# diffusers builds its schedules with numpy and we want the very same numbers, not merely close ones.

def _np_linspace(stop: float, num: int) -> torch.Tensor:
    """numpy.linspace(0, stop, num) in float64: arange * (stop / (num-1)), last element set to stop.
    (torch.linspace fills from both ends and can differ in the last bit, which moves a .round().)"""
    y = torch.arange(num, dtype=torch.float64)
    if num == 1:
        return y  # [0.]
    y = y * (stop / (num - 1))
    y[-1] = stop
    return y


def _interp(t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """numpy.interp(t, arange(len(table)), table) in float64: piecewise-linear lookup by timestep."""
    t = t.double()
    table = table.double()
    lo = t.floor().long().clamp(0, len(table) - 2)
    w = t - lo
    return (table[lo + 1] - table[lo]) * w + table[lo]


def _sigma_to_t(sigmas: torch.Tensor, train_sigmas: torch.Tensor) -> torch.Tensor:
    """Continuous timestep of each sigma: linear interpolation in log-sigma between the two training
    timesteps that bracket it (diffusers' `_sigma_to_t`), float64."""
    log_train = train_sigmas.log().double()                       # increasing in t
    log_s = sigmas.double().clamp(min=1e-10).log()
    lo = ((log_train[None, :] <= log_s[:, None]).sum(1) - 1).clamp(0, len(log_train) - 2)
    low, high = log_train[lo], log_train[lo + 1]
    w = ((low - log_s) / (low - high)).clamp(0, 1)
    return (1 - w) * lo + w * (lo + 1)


def _init_noise_sigma(name: str, sigma0: float) -> float:
    # Euler/Euler a with linspace spacing start from randn * sigma_max (diffusers' init_noise_sigma).
    # DDIM and DPM-Solver start from a unit-variance VP sample (their init_noise_sigma is 1.0); in VE
    # that is randn * sqrt(1 + sigma_0^2), the exact spread of x0 + sigma_0 * eps for unit-variance x0.
    return sigma0 if name in ("euler", "euler_a") else (1.0 + sigma0**2) ** 0.5


def make_schedule(name: str, steps: int, alphas_cumprod: torch.Tensor | None = None,
                  steps_offset: int = 1, spacing: str | None = None) -> Schedule:
    """Timesteps and sigmas of diffusers' `name` scheduler after `set_timesteps(steps)`.

    alphas_cumprod: (T,) alpha_bar per training timestep; SD's scaled_linear schedule if None.
    steps_offset: the config's steps_offset (1 in SD configs); only 'leading' spacing uses it.
    spacing: the config's timestep_spacing. "leading" (SDXL base's config) changes euler, euler_a and dpm++2m;
    anything else keeps each scheduler's default (the SD 1/2 configs have no such key).
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    acp = (_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).float().cpu()
    T = len(acp)
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    train_sigmas = ((1 - acp) / acp) ** 0.5  # (T,) float32, sigma of each training timestep

    if name == "ddim":
        # 'leading' spacing: every (T // steps)-th timestep, shifted by steps_offset: 1000//4 -> 751, 501, 251, 1.
        # The step after the last one lands on "alpha_bar_prev = alpha_bar[0]" (set_alpha_to_one false),
        # so DDIM ends at the small nonzero sigma(t=0) ~ 0.029, not at 0.
        ratio = T // steps
        timesteps = torch.arange(steps - 1, -1, -1, dtype=torch.int64) * ratio + steps_offset
        if timesteps[0] >= T:  # steps == T with offset 1: diffusers would index alpha_bar[T] and fail
            raise ValueError(f"ddim supports at most {T - 1} steps with steps_offset {steps_offset}")
        sigmas = torch.cat([train_sigmas[timesteps], train_sigmas[:1]])
    elif name in ("euler", "euler_a") and spacing == "leading":
        # every (T // steps)-th timestep from steps_offset up, as float32 (SDXL: 1000//4 -> 751, 501, 251, 1)
        timesteps = (torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (T // steps) + steps_offset).float()
        sigmas = torch.cat([_interp(timesteps, train_sigmas).float(), torch.zeros(1)])
        # diffusers starts leading-spaced Euler from a unit-variance VP sample, as DDIM
        return Schedule(sigmas, timesteps, (1.0 + sigmas[0].item() ** 2) ** 0.5, name)
    elif name in ("euler", "euler_a"):
        # 'linspace' spacing in float32, so the UNet gets fractional timesteps (e.g. 957.375) and the
        # sigmas are linearly interpolated between training timesteps.
        timesteps = _np_linspace(T - 1, steps).float().flip(0)
        sigmas = torch.cat([_interp(timesteps, train_sigmas).float(), torch.zeros(1)])
    else:
        # DPM-Solver 'linspace': steps+1 points over 0..T-1, rounded to ints, the final 0 dropped.
        timesteps = _np_linspace(T - 1, steps + 1).round().flip(0)[:-1].long()
        if spacing == "leading":  # steps+1 points T // (steps+1) apart, the last (0) dropped, + steps_offset
            timesteps = torch.arange(steps, 0, -1, dtype=torch.int64) * (T // (steps + 1)) + steps_offset
        if name == "dpm++2m":
            sigmas = train_sigmas[timesteps]
        else:
            # Karras et al. rho=7 ramp from sigma(T-1) to sigma(0); the UNet is told the (rounded)
            # timestep whose log-sigma interpolation matches, while the solver uses the exact sigma.
            lo, hi = train_sigmas[0].item(), train_sigmas[-1].item()
            ramp = _np_linspace(1.0, steps)
            karras = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7   # float64
            timesteps = _sigma_to_t(karras, train_sigmas).round().long()
            sigmas = karras.float()
        sigmas = torch.cat([sigmas, torch.zeros(1)])
    return Schedule(sigmas.float(), timesteps, _init_noise_sigma(name, sigmas[0].item()), name)


def truncate(schedule: Schedule, strength: float) -> Schedule:
    """Keep the last int(steps * strength) steps, as diffusers' img2img `get_timesteps` does
    (with `set_begin_index(t_start)`, so the scheduler continues from that entry of its own full
    schedule; a multistep solver restarts at first order, which our samplers do for any sigmas).
    The start sample is then add_noise(x0, noise, truncated.sigmas[0]), not randn * init_noise_sigma."""
    steps = len(schedule.timesteps)
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    sigmas = schedule.sigmas[t_start:]
    return replace(schedule, sigmas=sigmas, timesteps=schedule.timesteps[t_start:],
                   init_noise_sigma=_init_noise_sigma(schedule.name, sigmas[0].item()))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """Forward diffusion to noise level sigma, VE: x0 + sigma * noise. (diffusers' VP schedulers return
    this divided by sqrt(1 + sigma^2).)"""
    return x0 + noise * sigma


def noised_for_training(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The forward process in the VP form the UNet is trained on: sqrt(a) x0 + sqrt(1 - a) noise,
    a = alpha_bar at each sample's timestep, shaped to broadcast (B, 1, 1, 1). It is add_noise's sample
    divided by sqrt(1 + sigma^2), sigma^2 = (1 - a) / a."""
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def training_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction: str) -> torch.Tensor:
    """What the UNet should output for noised_for_training(x0, noise, alpha_bar): the noise for an epsilon
    model, v = sqrt(a) noise - sqrt(1 - a) x0 for a v model."""
    if prediction == "epsilon":
        return noise
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


# ---------------------------------------------------------------------------------------------------
# The model wrapper: what the caller does around its UNet.

def model_input_scale(sigma):
    """The UNet sees x / sqrt(sigma^2 + 1): the VE sample mapped back to the VP latent it was trained on."""
    return 1 / (sigma**2 + 1) ** 0.5


def denoised_from_model_output(output: torch.Tensor, x: torch.Tensor, sigma, prediction: str = "epsilon"):
    """x0 estimate from the UNet output at VE sample x (the UNet was called on x * model_input_scale(sigma)).

    epsilon: x = x0 + sigma * eps, so x0 = x - sigma * eps.
    v:       v = alpha * eps - s * x0 with alpha = 1/sqrt(sigma^2+1), s = sigma * alpha, and the UNet
             input x_vp = alpha * x; solving gives x0 = alpha * x_vp - s * v = x/(sigma^2+1) - s * v.
    """
    if prediction == "epsilon":
        return x - sigma * output
    if prediction == "v":
        return output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    raise ValueError(f"prediction must be 'epsilon' or 'v', got {prediction!r}")


def randn(shape, generator, dtype, device) -> torch.Tensor:
    """Noise drawn like diffusers' randn_tensor: on the generator's device (the CPU for a CPU generator,
    then moved), all at once for one generator, or one batch row per generator for a list."""
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            generator = generator[0]
        else:
            rows = [torch.randn((1, *shape[1:]), generator=g, dtype=dtype, device=g.device) for g in generator]
            return torch.cat(rows).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)


# ---------------------------------------------------------------------------------------------------
# Samplers: pure functions of (denoise, x, sigmas). denoise(x, i) -> x0 estimate at sigmas[i].

@torch.no_grad()
def sample_euler(denoise, x, sigmas, callback=None):
    """Euler steps of the probability-flow ODE dx/dsigma = (x - x0) / sigma.

    This is also DDIM with eta 0: DDIM's update x_prev = sqrt(a') x0 + sqrt(1-a') eps, divided by
    sqrt(a'), reads x'_ve = x0 + sigma' * eps with eps = (x_ve - x0) / sigma, which is exactly
    x_ve + (x_ve - x0) / sigma * (sigma' - sigma). So 'ddim' is this function on DDIM's own sigmas.
    """
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, i)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoise, x, sigmas, generator=None, callback=None):
    """Euler a: an Euler step down to sigma_down, then fresh noise of std sigma_up back up to sigmas[i+1]
    (sigma_down^2 + sigma_up^2 = sigmas[i+1]^2). One draw per step, including the last (sigma_up = 0),
    shaped and typed like the model output, as diffusers draws it; the generator ends in the same state."""
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, i)
        s, s_next = sigmas[i], sigmas[i + 1]
        sigma_up = (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5
        sigma_down = (s_next**2 - sigma_up**2) ** 0.5
        x = x + (x - denoised) / s * (sigma_down - s)
        x = x + randn(denoised.shape, generator, denoised.dtype, denoised.device) * sigma_up
        if callback is not None:
            callback(i)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise, x, sigmas, callback=None):
    """DPM-Solver++(2M), multistep second order in lambda = -log(sigma).

    First order (the first step, where there is no history, and the last, onto sigma 0):
        x' = (sigma'/sigma) x + (1 - sigma'/sigma) x0, the exact solution for a constant x0.
    Otherwise x0 is extrapolated linearly in lambda from this and the previous estimate:
        x0_d = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h.
    Identical to diffusers' dpmsolver++ 'midpoint' update written in VP space (divide both sides by
    alpha_t = 1/sqrt(1+sigma^2)).
    """
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, i)
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            x = denoised
        else:
            ratio = s_next / s                      # = exp(-h)
            if old_denoised is None:
                d = denoised
            else:
                h = (s / s_next).log()
                h_last = (sigmas[i - 1] / s).log()
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = ratio * x + (1 - ratio) * d
        old_denoised = denoised
        if callback is not None:
            callback(i)
    return x


def sample(name: str, denoise, x: torch.Tensor, schedule: Schedule, generator=None, callback=None):
    """Run sampler `name` from the VE sample x at schedule.sigmas[0]; returns the latents for the VAE.

    denoise(x, i): x0 estimate at sigmas[i]; the caller calls its UNet on x * model_input_scale(sigmas[i])
    with timestep schedule.timesteps[i] and converts with denoised_from_model_output.
    generator: only euler_a draws from it (a torch.Generator or a list, one per batch row).
    """
    sigmas = schedule.sigmas
    if name in ("ddim", "euler"):
        x = sample_euler(denoise, x, sigmas, callback)
    elif name == "euler_a":
        x = sample_euler_ancestral(denoise, x, sigmas, generator, callback)
    elif name in ("dpm++2m", "dpm++2m_karras"):
        x = sample_dpmpp_2m(denoise, x, sigmas, callback)
    else:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    # Back to the VP latent: a no-op when the last sigma is 0; DDIM stops at sigma(t=0) > 0, where
    # diffusers returns sqrt(alpha_bar_0) * x0 + sqrt(1 - alpha_bar_0) * eps = x / sqrt(1 + sigma^2).
    return x * model_input_scale(sigmas[-1]) if sigmas[-1] > 0 else x
