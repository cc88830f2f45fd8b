"""Prompt -> conditioning -> sampling loop over the UNet -> VAE decode -> images.

`StableDiffusion` owns the four parts of a checkpoint (tokenizer, text encoder, UNet, VAE) and the
learned tokens registered with it; `sample` is the whole process. For a plain prompt it reproduces
diffusers' StableDiffusionPipeline step for step: same initial noise from a CPU generator, same
scheduler arithmetic (see samplers.py), same classifier-free guidance, same decoding to 8 bits.

On top of that, the paper's workflows (it ran them in AUTOMATIC1111):
  composable prompts  "A:0.7 AND B:0.3": one guidance term per sub-prompt, all in one UNet batch
  long prompts        several 77-token windows, concatenated (prompt.tokenize_chunks)
  img2img             init_image + strength: re-run the last `strength` of the schedule from the
                      encoded image, with diffusers' StableDiffusionImg2ImgPipeline's random draws
  inpainting          + mask: outside the mask the latents are the init image's, noised to each step;
                      after decoding, the init image's pixels are pasted back outside the blurred mask.
                      A 9-channel inpainting UNet gets mask + masked-image latents as extra input instead.
  interpolate         one image per alpha between two prompts (weights) or two learned tokens (vectors)
"""
import inspect
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from . import images as imaging
from . import prompt as prompting
from . import samplers
from .errors import UserError

INTERPOLATE_MODES = ("prompt", "vectors")


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
    def encode_prompt(self, text: str, learned: dict | None = None) -> torch.Tensor:
        """Prompt text -> context (1, 77 * windows, width) in the model's dtype; one window up to 75 tokens."""
        chunks = prompting.tokenize_chunks(self.tokenizer, text, self.learned if learned is None else learned)
        return prompting.encode_chunks(self.text_encoder, chunks, self.device)

    def _conditioning(self, parts: list, negative_prompt: str, learned: dict):
        """Contexts of the negative prompt and of each weighted sub-prompt, padded to one length.

        Sub-prompts of weight 0 are dropped: they add nothing to the guidance, and without them
        "A:1 AND B:0" is exactly the image of "A". Windows differ in number when prompts differ in
        length; the shorter ones are padded with windows of the empty prompt (as AUTOMATIC1111 does).
        """
        negative = self.encode_prompt(negative_prompt, learned)
        terms = [(self.encode_prompt(text, learned), w) for text, w in parts if w != 0]
        longest = max([negative.shape[1]] + [c.shape[1] for c, _ in terms])
        if any(c.shape[1] != longest for c in [negative] + [c for c, _ in terms]):
            empty = self.encode_prompt("", learned)

            def pad(c):
                return torch.cat([c] + [empty] * ((longest - c.shape[1]) // empty.shape[1]), dim=1)

            negative, terms = pad(negative), [(pad(c), w) for c, w in terms]
        return negative, terms

    # --- sampling ------------------------------------------------------------------------------

    def _check_size(self, height, width):
        # Whole latent pixels; the UNet's up path resizes to meet its skips when a level halved an odd size.
        for name, value in (("--height", height), ("--width", width)):
            if value <= 0 or value % self._size_step:
                raise UserError(f"{name} {value}: must be a positive multiple of {self._size_step}")

    @property
    def _size_step(self) -> int:
        return self.vae.downscale

    @property
    def is_inpainting_model(self) -> bool:
        """A UNet trained for inpainting takes 9 channels: latents + mask + masked-image latents."""
        return self.unet.cfg.in_channels == 9

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/f, W/f), float32: a sample of the VAE's posterior,
        mean + std * randn, the randn drawn from `generator` on the CPU as diffusers draws it."""
        mean, logvar = self.vae.encode(pixels.to(self.device, self.dtype))
        eps = torch.randn(mean.shape, generator=generator).to(self.device)
        return (mean.float() + torch.exp(0.5 * logvar.float()) * eps) * self.vae.cfg.scale

    @torch.no_grad()
    def sample(self, prompt, negative_prompt: str = "", *, seed=None, steps=30, cfg=3.0, scheduler="euler_a",
               height=None, width=None, n=1, progress=True, init_image=None, strength=0.75, mask=None,
               mask_blur=4):
        """Text (and optionally an image) to images. Returns (list of PIL images, SampleSettings).

        prompt: text, with "A:w AND B:w" for composed prompts, or a list of (text, weight) pairs.
        init_image: a PIL image or path for img2img; strength in [0, 1] is the fraction of the schedule
            that is re-run (0 gives the image back through the VAE, 1 re-runs it all).
        mask: a PIL image or path, white = repaint (needs init_image); mask_blur feathers its edge in pixels.
        """
        return self._sample(prompt, negative_prompt, seed=seed, steps=steps, cfg=cfg, scheduler=scheduler,
                            height=height, width=width, n=n, progress=progress, init_image=init_image,
                            strength=strength, mask=mask, mask_blur=mask_blur, learned=self.learned)

    @torch.no_grad()
    def _sample(self, prompt, negative_prompt, *, seed, steps, cfg, scheduler, height, width, n, progress,
                init_image, strength, mask, mask_blur, learned, extra=None):
        if scheduler not in samplers.SCHEDULERS:
            raise UserError(f"--scheduler {scheduler}: unknown; choose one of {', '.join(samplers.SCHEDULERS)}")
        if steps < 1 or n < 1:
            raise UserError("--steps and --n must be at least 1")
        if mask is not None and init_image is None:
            raise UserError("--mask needs --init-image: the mask says which part of that image to repaint")
        if init_image is not None and not 0.0 <= strength <= 1.0:
            raise UserError(f"--strength {strength}: must be between 0 and 1")
        if mask_blur < 0:
            raise UserError(f"--mask-blur {mask_blur}: must be 0 or more pixels")
        seed = secrets.randbelow(2**32) if seed is None else int(seed)

        image = None
        if init_image is not None:
            image = imaging.open_image(init_image, "--init-image", "RGB")
            fit_h, fit_w = imaging.fit_size(image, self._size_step)
            height, width = height or fit_h, width or fit_w
        height, width = height or self.native_size, width or self.native_size
        self._check_size(height, width)

        parts = prompting.parse_and(prompt) if isinstance(prompt, str) else [(t, float(w)) for t, w in prompt]
        text = prompt if isinstance(prompt, str) else prompting.format_and(parts)
        settings = SampleSettings(text, negative_prompt, seed, steps, cfg, scheduler, height, width, n,
                                  dict(extra or {}))
        negative, terms = self._conditioning(parts, negative_prompt, learned)
        # As diffusers: guidance 1 or less runs a plain prompt alone. A composed or weighted prompt is
        # defined by its guidance formula, so it always needs the negative prompt's prediction.
        guided = cfg > 1.0 or len(terms) != 1 or terms[0][1] != 1.0
        if guided:
            context = torch.cat([negative] * n + [c for c, _ in terms for _ in range(n)])
            scales = [w * cfg for _, w in terms]  # a Python float, so weight 1 leaves cfg bit-identical
        else:
            context = terms[0][0].expand(n, -1, -1)
        groups = 1 + len(terms) if guided else 1

        schedule = samplers.make_schedule(scheduler, steps, self.alphas_cumprod)
        generator = torch.Generator("cpu").manual_seed(seed)
        f = self.vae.downscale
        shape = (n, 4, height // f, width // f)
        job = _Job()
        if image is None:
            noise = torch.randn(shape, generator=generator)  # on the CPU: same on any device
            x = noise.to(self.device) * schedule.init_noise_sigma
            if self.is_inpainting_model:  # text-to-image on an inpainting UNet: repaint everything
                blank = torch.ones((1, 1, height, width))
                job.unet_extra = self._inpainting_input(torch.zeros((1, 3, height, width)), blank, generator, n)
        else:
            image = imaging.resize(image, height, width)
            settings.extra["Denoising strength"] = strength
            x, schedule = self._start_from_image(job, image, mask, mask_blur, strength, schedule, generator, shape)
            if mask is not None:
                settings.extra["Mask blur"] = mask_blur

        def denoise(x, i):
            sigma, t = schedule.sigmas[i], schedule.timesteps[i]
            if job.keep is not None:  # outside the mask: the init image's latents, noised to this step
                x = job.keep * samplers.add_noise(job.init_latents, job.noise, sigma) + job.repaint * x
            inp = (x * samplers.model_input_scale(sigma)).to(self.dtype)
            if job.unet_extra is not None:
                inp = torch.cat([inp, job.unet_extra], dim=1)
            out = self.unet(torch.cat([inp] * groups) if groups > 1 else inp, t.to(self.device), context).float()
            if guided:
                uncond, *texts = out.chunk(groups)
                out = uncond
                for scale, text in zip(scales, texts):
                    out = out + scale * (text - uncond)
            denoised = samplers.denoised_from_model_output(out, x, sigma, self.prediction)
            if job.keep is not None:
                # The clean init outside the mask keeps every sampler's state there on the init image's own
                # noised trajectory (for euler_a with fresh noise), so nothing drifts between steps.
                denoised = job.keep * job.init_latents + job.repaint * denoised
            return denoised

        if len(schedule.timesteps) == 0:
            latents = x  # img2img at strength 0: nothing to re-run (not even DDIM's final rescale)
        else:
            with tqdm(total=len(schedule.timesteps), desc="sampling", disable=not progress, leave=False) as bar:
                latents = samplers.sample(scheduler, denoise, x, schedule, generator,
                                          callback=lambda i: bar.update(1))
        if job.keep is not None:
            latents = job.keep * job.init_latents + job.repaint * latents
        images = self.decode(latents)
        if job.alpha is not None:  # outside the (blurred) mask, the init image's own pixels
            images = [imaging.composite(im, image, job.alpha) for im in images]
        return images, settings

    def _start_from_image(self, job, image, mask, mask_blur, strength, schedule, generator, shape):
        """img2img / inpainting start: fill `job`, return (start sample, truncated schedule).

        The random draws come in diffusers' order: the VAE posterior sample of the init image, then the
        noise, then (inpainting UNet only) the posterior sample of the masked image.
        """
        n, _, h, w = shape
        pixels = imaging.to_tensor(image)
        if mask is not None:
            binary = imaging.binary_mask(imaging.open_image(mask, "--mask", "L"), image.height, image.width)
            job.alpha = imaging.blur_mask(binary, mask_blur)
        truncated = samplers.truncate(schedule, strength)
        full = len(truncated.timesteps) == len(schedule.timesteps)
        init = None
        # An inpainting UNet at strength 1 starts from pure noise (it sees the image through its extra
        # input), as diffusers' StableDiffusionInpaintPipeline; everything else starts from the image.
        if not (self.is_inpainting_model and full):
            init = self.encode_image(pixels, generator).expand(n, -1, -1, -1)
        noise = torch.randn(shape, generator=generator).to(self.device)
        if init is None:
            x = noise * truncated.init_noise_sigma
        elif len(truncated.timesteps) == 0:
            x = init  # strength 0 (or too small to re-run one step): the image through the VAE
        else:
            x = samplers.add_noise(init, noise, truncated.sigmas[0])
        if self.is_inpainting_model:
            job.unet_extra = self._inpainting_input(pixels, binary if mask is not None else
                                                    torch.ones((1, 1, image.height, image.width)), generator, n)
        elif mask is not None:
            keep = 1.0 - imaging.latent_mask(binary, self.vae.downscale).to(self.device)
            job.keep, job.repaint = keep, 1.0 - keep
            job.init_latents, job.noise = init, noise
        return x, truncated

    def _inpainting_input(self, pixels, binary, generator, n):
        """The 5 extra channels of an inpainting UNet: the mask at latent size (nearest) and the latents of
        the image with the repainted part set to 0 (grey), as diffusers' StableDiffusionInpaintPipeline."""
        masked = self.encode_image(pixels * (binary < 0.5), generator)
        small = F.interpolate(binary, size=masked.shape[-2:]).to(self.device)
        return torch.cat([small, masked], dim=1).to(self.dtype).repeat(n, 1, 1, 1)

    # --- interpolation -------------------------------------------------------------------------

    def interpolate(self, a: str, b: str, alphas=(0, 0.25, 0.5, 0.75, 1), *, mode="prompt", prompt=None,
                    negative_prompt="", seed=None, **kwargs):
        """One image per alpha, all from the same seed, going from A (alpha 0) to B (alpha 1).

        mode "prompt" (the paper's way): A and B are prompts, drawn as "A:1-alpha AND B:alpha".
        mode "vectors": A and B are learned tokens with the same number of vectors; the prompt (default:
            A alone; otherwise a text containing A) is drawn with A's vectors replaced by
            (1 - alpha) * A + alpha * B.
        Other keyword arguments go to `sample` (steps, cfg, scheduler, init_image, mask, ...), n excepted.
        Returns (images, settings), one of each per alpha.
        """
        if mode not in INTERPOLATE_MODES:
            raise UserError(f"--interpolate-mode {mode}: choose one of {', '.join(INTERPOLATE_MODES)}")
        if kwargs.get("n", 1) != 1:
            raise UserError("--n: interpolation draws one image per alpha; leave --n at 1")
        kwargs.pop("n", None)
        alphas = [float(x) for x in alphas]
        if not alphas:
            raise UserError("--alphas: give at least one value, e.g. 0,0.5,1")
        seed = secrets.randbelow(2**32) if seed is None else int(seed)  # one seed for the whole strip
        # sample()'s own keyword defaults, so the two cannot drift apart
        options = {name: p.default for name, p in inspect.signature(StableDiffusion.sample).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY}
        options["seed"] = seed
        unknown = set(kwargs) - set(options)
        if unknown:
            raise TypeError(f"interpolate() got unexpected keyword arguments {sorted(unknown)}")
        options.update(kwargs)
        images, settings = [], []
        if mode == "prompt":
            if prompt is not None:
                raise UserError("--prompt: not used with --interpolate-mode prompt (A and B are the prompts)")
            for text in (a, b):
                if _looks_like_token(text) and self._find_learned(text) is None:
                    raise UserError(f"--interpolate {text}: not a learned token; {self._known_tokens()}")
            for alpha in alphas:
                parts = [(a, round(1.0 - alpha, 6)), (b, alpha)]
                extra = {"Interpolate": f"{a} -> {b}", "Interpolate mode": mode, "Alpha": alpha}
                ims, s = self._sample(parts, negative_prompt, learned=self.learned, extra=extra, **options)
                images += ims
                settings.append(s)
            return images, settings

        names = [self._find_learned(t) for t in (a, b)]
        for text, name in zip((a, b), names):
            if name is None:
                raise UserError(f"--interpolate {text}: not a learned token; {self._known_tokens()}")
        va, vb = (self.learned[name] for name in names)
        if len(va) != len(vb):
            raise UserError(f"--interpolate-mode vectors: {names[0]} has {len(va)} vectors and {names[1]} "
                            f"{len(vb)}; blending needs the same number (use --interpolate-mode prompt)")
        prompt = names[0] if prompt is None else prompt
        if names[0] not in prompting.split_learned(prompt, self.learned)[1::2]:
            raise UserError(f"--prompt {prompt!r}: must contain {names[0]}, whose vectors are blended with {names[1]}")
        for alpha in alphas:
            learned = dict(self.learned)
            learned[names[0]] = (1.0 - alpha) * va + alpha * vb
            extra = {"Interpolate": f"{names[0]} -> {names[1]}", "Interpolate mode": mode, "Alpha": alpha}
            ims, s = self._sample(prompt, negative_prompt, learned=learned, extra=extra, **options)
            images += ims
            settings.append(s)
        return images, settings

    def _find_learned(self, text: str):
        """The registered name of learned token `text` (matched like in prompts: case-insensitively)."""
        by_lower = {name.lower(): name for name in self.learned}
        return by_lower.get(text.strip().lower())

    def _known_tokens(self) -> str:
        if not self.learned:
            return "no learned tokens are loaded (use --embeddings)"
        return "loaded: " + ", ".join(sorted(self.learned))

    @torch.no_grad()
    def decode(self, latents) -> list:
        """Latents (B, 4, h, w) -> list of 8-bit RGB PIL images, one VAE pass per image to bound memory."""
        images = []
        for z in latents:
            pixels = self.vae.decode((z[None] / self.vae.cfg.scale).to(self.dtype)).float()
            pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()[0]
            images.append(Image.fromarray((pixels * 255).round().astype(np.uint8)))
        return images


class _Job:
    """What the sampling loop needs besides the prompt, for img2img and inpainting (None when unused)."""

    def __init__(self):
        self.unet_extra = None    # (n, 5, h, w) mask + masked-image latents for a 9-channel UNet
        self.keep = None          # (1, 1, h, w) 1 where the init image's latents are kept (outside the mask)
        self.repaint = None       # 1 - keep
        self.init_latents = None  # (n, 4, h, w) the init image's latents
        self.noise = None         # (n, 4, h, w) the noise the start sample was made with
        self.alpha = None         # (1, 1, H, W) the blurred pixel mask for the final composite


def _looks_like_token(text: str) -> bool:
    """"<effusion>": one word in angle brackets, the usual spelling of a learned token."""
    text = text.strip()
    return len(text) > 2 and text[0] == "<" and text[-1] == ">" and not any(c.isspace() for c in text)


def _schedule_kwargs(config: dict) -> dict:
    """The training noise schedule from a diffusers scheduler config (SD's defaults otherwise)."""
    keys = {"beta_start": "beta_start", "beta_end": "beta_end", "num_train_timesteps": "num_train_timesteps"}
    return {ours: config[theirs] for theirs, ours in keys.items() if theirs in config}
