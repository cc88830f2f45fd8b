"""The denoiser a sampler calls: `denoise(x, i)` -> the clean-latent estimate x0 at step i.

`Denoiser` is the one piece that knows the schedule: it looks up step i's noise level sigma and UNet
timestep t once, and hands them to the pieces it is built from, each of which takes only what it needs:

    ScaledUNet              the UNet on a VE sample at noise level sigma: scaled to the VP input it was
                            trained on, called with timestep t; its raw output (epsilon or v), float32
      + InpaintingChannels  a 9-channel inpainting UNet also sees the mask and the masked image's latents
    ClassifierFreeGuidance  one UNet batch over the negative prompt and every weighted sub-prompt, combined
                            as uncond + sum_k cfg * w_k * (cond_k - uncond)
    KeepKnownLatents        base-model inpainting: outside the mask, the init image's latents are re-imposed
    Denoiser                guidance's output (epsilon or v) -> x0

Guidance combines the UNet's raw predictions, not the x0 estimates (they are equal in exact arithmetic,
as x0 is affine in the prediction): this is diffusers' order of operations, so images match it to the bit.
"""
import torch

from . import samplers
from .errors import UserError
from .prompt import Conditioning
from .samplers import Schedule


class ScaledUNet:
    """The UNet on VE samples x (B, 4, h, w) at noise level sigma -> its raw prediction, float32."""

    def __init__(self, unet, dtype: torch.dtype):
        self.unet, self.dtype = unet, dtype
        self.finite = []  # per call: a 0-d bool tensor, kept on the device so that no step waits for the GPU

    def __call__(self, x: torch.Tensor, sigma, t, cond: Conditioning, groups: int = 1) -> torch.Tensor:
        """`groups` copies of x go through the UNet in one batch, one per group of `cond`'s rows."""
        inp = (x * samplers.model_input_scale(sigma)).to(self.dtype)
        inp = torch.cat([inp] * groups) if groups > 1 else inp
        out = self.unet(inp, t, cond.context, cond.y).float()
        self.finite.append(torch.isfinite(out).all())
        return out

    def raise_if_non_finite(self, steps: int):
        """After sampling, before decoding: a NaN or infinite UNet output at any step would decode to a black
        image, so it is an error naming the first such step (checked once, not at every step)."""
        if not self.finite:
            return
        finite = torch.stack(self.finite).cpu()
        if bool(finite.all()):
            return
        step = int((~finite).nonzero()[0]) + 1
        hint = ("run again with --dtype fp32" if self.dtype != torch.float32 else
                "the checkpoint's UNet weights may be damaged")
        raise UserError(f"sampling step {step} of {steps}: the UNet's output is NaN or infinite in "
                        f"{str(self.dtype).removeprefix('torch.')}; {hint}")


class InpaintingChannels:
    """A UNet trained for inpainting takes 9 input channels: the 4 latent ones, then the mask at latent
    size and the latents of the masked image (`extra`, (n, 5, h, w)), as diffusers' inpainting pipeline."""

    def __init__(self, unet, extra: torch.Tensor):
        self.unet, self.extra = unet, extra  # (n, 5, h, w)
        self.rows = extra  # extra for every row of the UNet batch: made at the first call, then reused

    def __call__(self, inp, t, context, y=None):
        if self.rows.shape[0] != inp.shape[0]:  # the guidance batch: n rows per prompt (a sampler's is fixed)
            self.rows = self.extra.repeat(inp.shape[0] // self.extra.shape[0], 1, 1, 1)
        return self.unet(torch.cat([inp, self.rows], dim=1), t, context, y)


class ClassifierFreeGuidance:
    """uncond + sum_k scale_k * (cond_k - uncond) with scale_k = cfg * weight_k, from one UNet batch.

    negative: the negative prompt's prompt.Conditioning; terms: [(Conditioning, weight)], one row each, holding
    all the UNet takes (SDXL's added conditioning too), repeated for the n images of the batch.
    As diffusers, guidance of 1 or less with a plain prompt runs the prompt alone (no negative pass); a
    composed or weighted prompt is defined by its guidance formula, so it always needs the negative one.
    """

    def __init__(self, unet: ScaledUNet, negative: Conditioning, terms: list, cfg: float, n: int):
        self.unet = unet
        self.guided = cfg > 1.0 or len(terms) != 1 or terms[0][1] != 1.0
        # (n * (1 + len(terms)), L, width): n negatives, then n of each sub-prompt
        rows = [negative] * n + [c for c, _ in terms for _ in range(n)] if self.guided else [terms[0][0]] * n
        self.cond = Conditioning.cat(rows)
        self.scales = [w * cfg for _, w in terms]  # a Python float, so weight 1 leaves cfg bit-identical
        self.groups = 1 + len(terms) if self.guided else 1

    def __call__(self, x, sigma, t) -> torch.Tensor:
        out = self.unet(x, sigma, t, self.cond, self.groups)
        if not self.guided:
            return out
        uncond, *conds = out.chunk(self.groups)
        guided = uncond
        for scale, cond in zip(self.scales, conds):
            guided = guided + scale * (cond - uncond)
        return guided


class KeepKnownLatents:
    """Inpainting with a base model: outside the mask (keep = 1) the sample is the init image's latents,
    noised to the current level, and the x0 estimate there is the clean init latents. Re-imposing the clean
    init in x0 too keeps every sampler's state outside the mask on the init image's own trajectory (for
    euler_a with its fresh noise as well), so nothing drifts there between steps."""

    def __init__(self, keep, init_latents, noise):
        self.keep, self.repaint = keep, 1.0 - keep  # (1, 1, h, w) each
        self.init_latents, self.noise = init_latents, noise  # (n, 4, h, w) each

    def impose(self, x, sigma) -> torch.Tensor:
        """The sample x at noise level sigma with the known part replaced by the init latents noised to sigma."""
        return self.keep * samplers.add_noise(self.init_latents, self.noise, sigma) + self.repaint * x

    def finish(self, latents) -> torch.Tensor:
        """The init image's latents outside the mask, `latents` inside."""
        return self.keep * self.init_latents + self.repaint * latents


class Denoiser:
    """guidance(x, sigma, t) -> epsilon or v, turned into the x0 estimate samplers step with; the one place
    that turns the sampler's step index into sigma and the UNet's timestep."""

    def __init__(self, guidance: ClassifierFreeGuidance, schedule: Schedule, prediction: str, device,
                 keep_known: KeepKnownLatents | None = None):
        self.guidance, self.prediction = guidance, prediction  # prediction: "epsilon" or "v"
        # The sigmas stay on the CPU (the samplers' scalar arithmetic); the timesteps go to the UNet's device once
        # here, not at every step, where a copy from the CPU would make the host wait for the GPU each time.
        self.sigmas, self.timesteps = schedule.sigmas, schedule.timesteps.to(device)
        self.keep_known = keep_known

    def __call__(self, x, i) -> torch.Tensor:
        sigma, t = self.sigmas[i], self.timesteps[i]
        if self.keep_known is not None:
            x = self.keep_known.impose(x, sigma)
        denoised = samplers.denoised_from_model_output(self.guidance(x, sigma, t), x, sigma, self.prediction)
        return denoised if self.keep_known is None else self.keep_known.finish(denoised)
