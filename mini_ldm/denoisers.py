"""The denoiser a sampler calls: `denoise(x, i)` -> the clean-latent estimate x0 at step i.

It is built once per job from small named pieces, each wrapping the one before:

    UNetPrediction          the UNet at step i: scale the VE sample to the VP input it was trained on;
      + InpaintingChannels  a 9-channel inpainting UNet also sees the mask and the masked image's latents
    ClassifierFreeGuidance  one UNet batch over the negative prompt and every weighted sub-prompt, combined
                            as uncond + sum_k cfg * w_k * (cond_k - uncond)
    Denoiser                the model's prediction (epsilon or v) -> x0
      + KeepKnownLatents    base-model inpainting: outside the mask, the init image's latents are re-imposed

Guidance combines the UNet's raw predictions, not the x0 estimates (they are equal in exact arithmetic,
as x0 is affine in the prediction): this is diffusers' order of operations, so images match it to the bit.
"""
import torch

from . import samplers
from .errors import UserError
from .samplers import Schedule


class UNetPrediction:
    """The UNet at step i of a schedule: VE sample x (B, 4, h, w) and context -> its raw prediction, float32."""

    def __init__(self, unet, schedule: Schedule, dtype: torch.dtype):
        self.unet, self.schedule, self.dtype = unet, schedule, dtype
        self.finite = []  # per call: a 0-d bool tensor, kept on the device so that no step waits for the GPU

    def __call__(self, x: torch.Tensor, i: int, context: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """`groups` copies of x go through the UNet in one batch, one per context group."""
        sigma, t = self.schedule.sigmas[i], self.schedule.timesteps[i]
        inp = (x * samplers.model_input_scale(sigma)).to(self.dtype)
        inp = torch.cat([inp] * groups) if groups > 1 else inp
        out = self.unet(inp, t.to(x.device), context).float()
        self.finite.append(torch.isfinite(out).all())
        return out

    def raise_if_non_finite(self):
        """After sampling, before decoding: a NaN or infinite UNet output at any step would decode to a black
        image, so it is an error naming the first such step (checked once, not at every step)."""
        if not self.finite:
            return
        finite = torch.stack(self.finite).cpu()
        if bool(finite.all()):
            return
        step, steps = int((~finite).nonzero()[0]) + 1, len(self.schedule.timesteps)
        hint = ("run again with --dtype fp32" if self.dtype != torch.float32 else
                "the checkpoint's UNet weights may be damaged")
        raise UserError(f"sampling step {step} of {steps}: the UNet's output is NaN or infinite in "
                        f"{str(self.dtype).removeprefix('torch.')}; {hint}")


class InpaintingChannels:
    """A UNet trained for inpainting takes 9 input channels: the 4 latent ones, then the mask at latent
    size and the latents of the masked image (`extra`, (n, 5, h, w)), as diffusers' inpainting pipeline."""

    def __init__(self, unet, extra: torch.Tensor):
        self.unet, self.extra = unet, extra

    def __call__(self, inp, t, context):
        extra = self.extra.repeat(inp.shape[0] // self.extra.shape[0], 1, 1, 1)
        return self.unet(torch.cat([inp, extra], dim=1), t, context)


class ClassifierFreeGuidance:
    """uncond + sum_k scale_k * (cond_k - uncond) with scale_k = cfg * weight_k, from one UNet batch.

    negative: (1, L, width) context of the negative prompt; terms: [(context (1, L, width), weight)]; each
    is repeated for the n images of the batch.
    As diffusers, guidance of 1 or less with a plain prompt runs the prompt alone (no negative pass); a
    composed or weighted prompt is defined by its guidance formula, so it always needs the negative one.
    """

    def __init__(self, prediction: UNetPrediction, negative, terms: list, cfg: float, n: int):
        self.prediction = prediction
        self.guided = cfg > 1.0 or len(terms) != 1 or terms[0][1] != 1.0
        if self.guided:  # (n * (1 + len(terms)), L, width): n negatives, then n of each sub-prompt
            self.context = torch.cat([negative] * n + [c for c, _ in terms for _ in range(n)])
            self.scales = [w * cfg for _, w in terms]  # a Python float, so weight 1 leaves cfg bit-identical
        else:
            self.context = terms[0][0].expand(n, -1, -1)
        self.groups = 1 + len(terms) if self.guided else 1

    def __call__(self, x, i) -> torch.Tensor:
        out = self.prediction(x, i, self.context, self.groups)
        if not self.guided:
            return out
        uncond, *conds = out.chunk(self.groups)
        guided = uncond
        for scale, cond in zip(self.scales, conds):
            guided = guided + scale * (cond - uncond)
        return guided


class Denoiser:
    """A prediction function (x, i) -> epsilon or v, turned into the x0 estimate samplers step with."""

    def __init__(self, predict, schedule: Schedule, prediction_type: str):
        self.predict, self.schedule, self.prediction_type = predict, schedule, prediction_type

    def __call__(self, x, i) -> torch.Tensor:
        sigma = self.schedule.sigmas[i]
        return samplers.denoised_from_model_output(self.predict(x, i), x, sigma, self.prediction_type)


class KeepKnownLatents:
    """Inpainting with a base model: outside the mask (keep = 1) the sample is the init image's latents,
    noised to the current step, and the x0 estimate there is the clean init latents. Re-imposing the clean
    init in x0 too keeps every sampler's state outside the mask on the init image's own trajectory (for
    euler_a with its fresh noise as well), so nothing drifts there between steps."""

    def __init__(self, denoise, keep, init_latents, noise, schedule: Schedule):
        self.denoise, self.schedule = denoise, schedule
        self.keep, self.repaint = keep, 1.0 - keep  # (1, 1, h, w) each
        self.init_latents, self.noise = init_latents, noise  # (n, 4, h, w) each

    def __call__(self, x, i) -> torch.Tensor:
        known = samplers.add_noise(self.init_latents, self.noise, self.schedule.sigmas[i])
        x = self.keep * known + self.repaint * x
        return self.finish(self.denoise(x, i))

    def finish(self, latents) -> torch.Tensor:
        """The init image's latents outside the mask, `latents` inside."""
        return self.keep * self.init_latents + self.repaint * latents
