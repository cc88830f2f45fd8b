"""Samplers against diffusers' schedulers: same timesteps, sigmas, model inputs, random draws, latents.

Both sides drive the same deterministic fake UNet (a fixed random channel mix with a timestep-dependent
part), start from the same seed, and record what the model is called with at every step.
"""
import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)

from mini_ldm.samplers import (SCHEDULERS, add_noise, alphas_cumprod, alphas_cumprod_from_config,
                               denoised_from_model_output, make_schedule, model_input_scale, sample, truncate)

# scheduler/scheduler_config.json as the public SD 1.x / 2.x repos ship it (no timestep_spacing key).
SD_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False, "prediction_type": "epsilon",
    "trained_betas": None,
}
# diffusers 0.42 + numpy 2.x warn on every set_timesteps; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v"}  # diffusers name -> ours
SHAPE = (2, 4, 8, 8)


def diffusers_scheduler(name, prediction_type="epsilon"):
    cfg = dict(SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    if name == "ddim":
        return DDIMScheduler.from_config(cfg)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(cfg)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(cfg)
    return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                   use_karras_sigmas=name == "dpm++2m_karras")


class FakeUNet:
    """(x, t) -> output of a UNet's shape: the input plus tanh of a t-dependent channel mix, a spatial
    shift and a per-channel sinusoid in t. Records every call."""

    def __init__(self, channels=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(channels, channels, generator=g) * 0.6
        self.w_t = torch.randn(channels, channels, generator=g) * 0.4
        self.freq = torch.rand(channels, generator=g) * 0.02
        self.phase = torch.rand(channels, generator=g) * 6.0
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((x.clone(), torch.as_tensor(t).clone()))
        tt = torch.as_tensor(t, dtype=torch.float32)
        w = self.w + torch.cos(tt / 300.0) * self.w_t
        mix = torch.einsum("oc,bchw->bohw", w, x)
        bias = torch.sin(tt * self.freq + self.phase)[None, :, None, None]
        # Mostly the input, which is roughly what a noise predictor returns on noisy latents, so the
        # x0 estimates stay O(1) as in real use instead of blowing up; the rest makes it non-trivial.
        return 0.8 * x + 0.3 * torch.tanh(mix) + 0.2 * bias + 0.1 * x.roll(1, dims=-1)


def run_diffusers(sched, model, latents, timesteps, gen):
    """StableDiffusionPipeline's denoising loop (extra_step_kwargs: eta 0 for DDIM, the generator)."""
    for t in timesteps:
        out = model(sched.scale_model_input(latents, t), t)
        kwargs = {"eta": 0.0} if isinstance(sched, DDIMScheduler) else {}
        latents = sched.step(out, t, latents, generator=gen, **kwargs).prev_sample
    return latents


def run_ours(name, schedule, model, x, prediction, gen):
    def denoise(x, i):
        sigma = schedule.sigmas[i]
        out = model(x * model_input_scale(sigma), schedule.timesteps[i])
        return denoised_from_model_output(out, x, sigma, prediction)

    steps_seen = []
    out = sample(name, denoise, x, schedule, gen, callback=steps_seen.append)
    assert steps_seen == list(range(len(schedule.timesteps)))
    return out


def expected_sigmas(name, sched):
    if name == "ddim":  # DDIM keeps alpha_bar; its VE sigmas are those of its timesteps, then of t=0
        acp = sched.alphas_cumprod[torch.cat([sched.timesteps, torch.zeros(1, dtype=torch.long)])]
        return ((1 - acp) / acp) ** 0.5
    return sched.sigmas


def assert_same_calls(theirs, ours):
    assert len(theirs) == len(ours)
    for (x_d, t_d), (x_o, t_o) in zip(theirs, ours):
        assert t_d.dtype == t_o.dtype and torch.equal(t_d, t_o)
        torch.testing.assert_close(x_o, x_d, rtol=1e-5, atol=1e-5)


def test_alphas_cumprod_is_diffusers():
    acp = alphas_cumprod()
    assert acp.dtype == torch.float32
    assert torch.equal(acp, diffusers_scheduler("euler").alphas_cumprod)


@pytest.mark.parametrize("config", [
    {},  # SD's values for every missing key
    SD_SCHEDULER_CONFIG,
    {"beta_schedule": "linear"},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 500},
    {"beta_schedule": "scaled_linear", "beta_start": 0.001, "beta_end": 0.015, "num_train_timesteps": 800},
])
def test_alphas_cumprod_from_config_is_diffusers(config):
    ours = alphas_cumprod_from_config(config)
    # diffusers' own defaults for missing keys are DDPM's (linear 0.0001..0.02), not SD's: fill in SD's.
    complete = {key: SD_SCHEDULER_CONFIG[key] for key in ("beta_start", "beta_end", "num_train_timesteps",
                                                          "beta_schedule")} | config
    for cls in (EulerDiscreteScheduler, DDIMScheduler):
        assert torch.equal(ours, cls.from_config(complete).alphas_cumprod), cls.__name__


@pytest.mark.parametrize("config,needle", [
    ({"beta_schedule": "squaredcos_cap_v2"}, "squaredcos_cap_v2"),
    ({"beta_schedule": "sigmoid"}, "sigmoid"),
    ({"trained_betas": [0.001] * 1000}, "trained_betas"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"beta_start": "0.001"}, "beta_start '0.001' is not a number"),
])
def test_alphas_cumprod_from_config_refuses_what_it_cannot_reproduce(config, needle):
    with pytest.raises(ValueError, match=needle):
        alphas_cumprod_from_config(config)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedule_matches_diffusers(name):
    # Bitwise: timesteps (value and dtype) and sigmas, for every step count users plausibly pick.
    sched = diffusers_scheduler(name)
    for steps in list(range(1, 151)) + [200, 250, 333, 500, 999]:
        sched.set_timesteps(steps)
        ours = make_schedule(name, steps, alphas_cumprod())
        assert ours.timesteps.dtype == sched.timesteps.dtype, steps
        assert torch.equal(ours.timesteps, sched.timesteps), steps
        assert ours.sigmas.dtype == torch.float32 and ours.sigmas.shape == (steps + 1,)
        if name == "ddim":
            torch.testing.assert_close(ours.sigmas, expected_sigmas(name, sched), rtol=1e-6, atol=0)
            assert ours.init_noise_sigma == pytest.approx((1 + ours.sigmas[0].item() ** 2) ** 0.5)
        else:
            assert torch.equal(ours.sigmas, sched.sigmas), steps
            if name.startswith("euler"):
                assert ours.init_noise_sigma == float(sched.init_noise_sigma)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("steps", [4, 7, 20, 25])
def test_txt2img_loop_matches_diffusers(name, prediction_type, steps):
    seed = 1234 + steps
    sched = diffusers_scheduler(name, prediction_type)
    sched.set_timesteps(steps)
    model_d = FakeUNet()
    gen_d = torch.Generator().manual_seed(seed)
    latents = torch.randn(SHAPE, generator=gen_d) * sched.init_noise_sigma  # randn_tensor on the CPU
    latents_d = run_diffusers(sched, model_d, latents, sched.timesteps, gen_d)

    schedule = make_schedule(name, steps)
    assert torch.equal(schedule.timesteps, sched.timesteps)
    torch.testing.assert_close(schedule.sigmas, expected_sigmas(name, sched), rtol=1e-6, atol=0)
    model_o = FakeUNet()
    gen_o = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=gen_o) * schedule.init_noise_sigma
    latents_o = run_ours(name, schedule, model_o, x, PREDICTIONS[prediction_type], gen_o)

    assert_same_calls(model_d.calls, model_o.calls)
    torch.testing.assert_close(latents_o, latents_d, rtol=1e-5, atol=1e-5)
    # euler_a draws one noise tensor per step; the others draw nothing. Either way both generators
    # must end in the same state, so whatever the caller draws next is the same too.
    assert torch.equal(gen_o.get_state(), gen_d.get_state())


def test_euler_a_consumes_generator_per_step():
    schedule = make_schedule("euler_a", 5)
    gen = torch.Generator().manual_seed(0)
    sample("euler_a", lambda x, i: 0.5 * x, torch.zeros(SHAPE), schedule, gen)
    ref = torch.Generator().manual_seed(0)
    for _ in range(5):
        torch.randn(SHAPE, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_euler_a_list_of_generators_matches_diffusers():
    # One generator per batch row (what a pipeline does for per-image seeds): rows drawn separately.
    sched = diffusers_scheduler("euler_a")
    sched.set_timesteps(6)
    gens_d = [torch.Generator().manual_seed(s) for s in (1, 2)]
    latents = torch.cat([torch.randn((1, *SHAPE[1:]), generator=g) for g in gens_d]) * sched.init_noise_sigma
    model_d = FakeUNet()
    latents_d = run_diffusers(sched, model_d, latents, sched.timesteps, gens_d)

    schedule = make_schedule("euler_a", 6)
    gens_o = [torch.Generator().manual_seed(s) for s in (1, 2)]
    x = torch.cat([torch.randn((1, *SHAPE[1:]), generator=g) for g in gens_o]) * schedule.init_noise_sigma
    latents_o = run_ours("euler_a", schedule, FakeUNet(), x, "epsilon", gens_o)
    torch.testing.assert_close(latents_o, latents_d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("steps,strength", [(10, 0.3), (25, 0.75), (20, 1.0)])
def test_img2img_truncate_matches_diffusers(name, steps, strength):
    # StableDiffusionImg2ImgPipeline: get_timesteps (+ set_begin_index), then prepare_latents'
    # scheduler.add_noise(init_latents, noise, timesteps[:1]), then the usual loop.
    prediction_type = "v_prediction" if name in ("euler", "dpm++2m") else "epsilon"
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    sched = diffusers_scheduler(name, prediction_type)
    sched.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    gen_d = torch.Generator().manual_seed(99)
    noise = torch.randn(SHAPE, generator=gen_d)
    latents = sched.add_noise(x0, noise, timesteps[:1].repeat(SHAPE[0]))
    model_d = FakeUNet()
    latents_d = run_diffusers(sched, model_d, latents, timesteps, gen_d)

    schedule = truncate(make_schedule(name, steps), strength)
    assert torch.equal(schedule.timesteps, timesteps)
    gen_o = torch.Generator().manual_seed(99)
    x = add_noise(x0, torch.randn(SHAPE, generator=gen_o), schedule.sigmas[0])
    model_o = FakeUNet()
    latents_o = run_ours(name, schedule, model_o, x, PREDICTIONS[prediction_type], gen_o)

    assert_same_calls(model_d.calls, model_o.calls)
    torch.testing.assert_close(latents_o, latents_d, rtol=1e-5, atol=1e-5)
    assert torch.equal(gen_o.get_state(), gen_d.get_state())


def test_truncate_edges():
    s = make_schedule("euler", 10)
    full = truncate(s, 1.0)
    assert torch.equal(full.sigmas, s.sigmas) and full.init_noise_sigma == s.init_noise_sigma
    short = truncate(s, 0.25)  # int(2.5) = 2 steps kept
    assert torch.equal(short.timesteps, s.timesteps[8:]) and torch.equal(short.sigmas, s.sigmas[8:])
    assert len(truncate(s, 0.0).timesteps) == 0


def test_errors():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_schedule("plms", 10)
    with pytest.raises(ValueError, match="steps"):
        make_schedule("euler", 0)
    for diffusers_name in ("sample", "v_prediction"):  # ours are normalised to "epsilon"/"v" at load time
        with pytest.raises(ValueError, match="prediction"):
            denoised_from_model_output(torch.zeros(1), torch.zeros(1), 1.0, diffusers_name)
