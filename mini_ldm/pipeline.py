"""Prompt -> conditioning -> sampling loop over the UNet -> VAE decode -> images.

`StableDiffusion` owns the four parts of a checkpoint (tokenizer, text encoder, UNet, VAE) and the
learned tokens registered with it; `sample` is the whole text-to-image process. It reproduces
diffusers' StableDiffusionPipeline step for step: same initial noise from a CPU generator, same
scheduler arithmetic (see samplers.py), same classifier-free guidance, same decoding to 8 bits.
"""
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import prompt as prompting
from . import samplers
from .errors import UserError


@dataclass
class SampleSettings:
    """Everything that determines an image, as written into the PNG's parameters."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 30
    cfg: float = 3.0
    scheduler: str = "euler_a"
    height: int = 512
    width: int = 512
    n: int = 1
    extra: dict = field(default_factory=dict)


class StableDiffusion:
    def __init__(self, checkpoint, tokenizer, device, dtype):
        self.checkpoint = checkpoint
        self.tokenizer = tokenizer
        self.text_encoder, self.unet, self.vae = checkpoint.text_encoder, checkpoint.unet, checkpoint.vae
        self.family, self.prediction = checkpoint.family, checkpoint.prediction
        self.native_size = checkpoint.native_size
        self.device, self.dtype = torch.device(device), dtype
        self.learned = {}  # token -> float32 [n, width]: Textual Inversion vectors usable in prompts
        self.alphas_cumprod = samplers.alphas_cumprod(**_schedule_kwargs(checkpoint.scheduler_config))

    @property
    def width(self) -> int:
        """Width of the text encoder's token embeddings (768 for SD1, 1024 for SD2)."""
        return self.text_encoder.cfg.width

    def add_learned_token(self, token: str, vectors: torch.Tensor):
        if vectors.ndim != 2 or vectors.shape[1] != self.width:
            raise UserError(f"learned token {token}: vectors of shape {tuple(vectors.shape)} do not fit the "
                            f"{self.family} model, which expects [n, {self.width}]")
        self.learned[token] = vectors.float().cpu()

    # --- conditioning --------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """Prompt text -> context (1, 77, width) in the model's dtype."""
        tokens = prompting.tokenize(self.tokenizer, text, self.learned)
        return prompting.encode(self.text_encoder, tokens, self.device)

    # --- sampling ------------------------------------------------------------------------------

    def _check_size(self, height, width):
        # Each UNet level halves the latent, and the up path must meet the skips at equal sizes.
        step = self.vae.downscale * 2 ** (len(self.unet.cfg.channel_mult) - 1)
        for name, value in (("--height", height), ("--width", width)):
            if value <= 0 or value % step:
                raise UserError(f"{name} {value}: must be a positive multiple of {step}")

    @torch.no_grad()
    def sample(self, prompt: str, negative_prompt: str = "", *, seed=None, steps=30, cfg=3.0,
               scheduler="euler_a", height=None, width=None, n=1, progress=True):
        """Text to image. Returns (list of PIL images, SampleSettings)."""
        if scheduler not in samplers.SCHEDULERS:
            raise UserError(f"--scheduler {scheduler}: unknown; choose one of {', '.join(samplers.SCHEDULERS)}")
        if steps < 1 or n < 1:
            raise UserError("--steps and --n must be at least 1")
        seed = secrets.randbelow(2**32) if seed is None else int(seed)
        height, width = height or self.native_size, width or self.native_size
        self._check_size(height, width)
        settings = SampleSettings(prompt, negative_prompt, seed, steps, cfg, scheduler, height, width, n)

        cond = self.encode_prompt(prompt)
        guided = cfg > 1.0  # as diffusers: guidance 1 or less runs the prompt alone
        context = torch.cat([self.encode_prompt(negative_prompt)] * n + [cond] * n) if guided else cond.expand(n, -1, -1)

        schedule = samplers.make_schedule(scheduler, steps, self.alphas_cumprod)
        generator = torch.Generator("cpu").manual_seed(seed)
        f = self.vae.downscale
        noise = torch.randn((n, 4, height // f, width // f), generator=generator)  # on the CPU: same on any device
        x = noise.to(self.device) * schedule.init_noise_sigma

        def denoise(x, i):
            sigma, t = schedule.sigmas[i], schedule.timesteps[i]
            inp = (x * samplers.model_input_scale(sigma)).to(self.dtype)
            out = self.unet(torch.cat([inp, inp]) if guided else inp, t.to(self.device), context).float()
            if guided:
                uncond, text = out.chunk(2)
                out = uncond + cfg * (text - uncond)
            return samplers.denoised_from_model_output(out, x, sigma, self.prediction)

        with tqdm(total=steps, desc="sampling", disable=not progress, leave=False) as bar:
            latents = samplers.sample(scheduler, denoise, x, schedule, generator, callback=lambda i: bar.update(1))
        return self.decode(latents), settings

    @torch.no_grad()
    def decode(self, latents) -> list:
        """Latents (B, 4, h, w) -> list of 8-bit RGB PIL images, one VAE pass per image to bound memory."""
        images = []
        for z in latents:
            pixels = self.vae.decode((z[None] / self.vae.cfg.scale).to(self.dtype)).float()
            pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()[0]
            images.append(Image.fromarray((pixels * 255).round().astype(np.uint8)))
        return images


def _schedule_kwargs(config: dict) -> dict:
    """The training noise schedule from a diffusers scheduler config (SD's defaults otherwise)."""
    keys = {"beta_start": "beta_start", "beta_end": "beta_end", "num_train_timesteps": "num_train_timesteps"}
    return {ours: config[theirs] for theirs, ours in keys.items() if theirs in config}
