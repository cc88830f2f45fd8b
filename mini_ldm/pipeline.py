"""Prompt -> conditioning -> sampling loop over the UNet -> VAE decode -> images.

`StableDiffusion` owns the four parts of a checkpoint (tokenizer, text encoder, UNet, VAE) and the
learned tokens registered with it. `sample` is the whole process, and reads as its five stages:
resolve the settings, encode the prompts, start (starts.py), run the sampler over a denoiser built from
named pieces (denoisers.py), decode. For a plain prompt it reproduces diffusers' StableDiffusionPipeline
step for step: same initial noise from a CPU generator, same scheduler arithmetic (samplers.py), same
classifier-free guidance, same decoding to 8 bits.

On top of that, the paper's workflows (it ran them in AUTOMATIC1111):
  composable prompts  "A:0.7 AND B:0.3": one guidance term per sub-prompt, all in one UNet batch
  long prompts        several 77-token windows, concatenated (prompt.tokenize)
  img2img             init_image + strength: re-run the last `strength` of the schedule from the
                      encoded image, with diffusers' StableDiffusionImg2ImgPipeline's random draws
  inpainting          + mask: outside the mask the latents are the init image's, noised to each step;
                      after decoding, the init image's pixels are pasted back outside the blurred mask.
                      A 9-channel inpainting UNet gets mask + masked-image latents as extra input instead.
  interpolate         one image per alpha between two prompts (weights) or two learned tokens (vectors)
"""
import copy
import secrets
import sys
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import images as imaging
from . import prompt as prompting
from . import prompt_text
from . import samplers, starts
from .denoisers import ClassifierFreeGuidance, Denoiser, InpaintingChannels, ScaledUNet
from .errors import UserError
from .sample_settings import INTERPOLATE_MODES, SampleSettings
from .vae import posterior_std


class StableDiffusion:
    def __init__(self, checkpoint, tokenizers: list, device, dtype):
        """`tokenizers`: one per text encoder of the checkpoint, in its family's order."""
        self.checkpoint = checkpoint
        self.model_family = checkpoint.family  # families.Family: what this model's family does differently
        self.tokenizers, self.text_encoders = list(tokenizers), list(checkpoint.text_encoders)
        self.unet, self.vae = checkpoint.unet, checkpoint.vae
        self.prediction = checkpoint.prediction
        self.native_size = checkpoint.native_size
        self.model_name = checkpoint.path.stem
        self.device, self.dtype = torch.device(device), dtype
        self.learned = {}  # token -> float32 [n, width]: Textual Inversion vectors usable in prompts
        self.embeddings = {}  # token -> the loaded Embedding its vectors came from (.source: the file)
        self.alphas_cumprod = samplers.alphas_cumprod_from_config(checkpoint.scheduler_config)

    @property
    def family(self) -> str:
        """The family's name ("sd1", "sd2", "sdxl"), as messages and embedding files say it."""
        return self.model_family.name

    # The first pair (SD 1/2: the only one; SDXL: CLIP ViT-L) and the second (SDXL's OpenCLIP bigG, else None),
    # by name, for callers that name them; the pipeline itself goes through `encoders`.
    tokenizer = property(lambda self: self.tokenizers[0])
    text_encoder = property(lambda self: self.text_encoders[0])
    tokenizer_2 = property(lambda self: (self.tokenizers[1:] or [None])[0])
    text_encoder_2 = property(lambda self: (self.text_encoders[1:] or [None])[0])

    @property
    def widths(self) -> tuple:
        """Widths of the text encoders' token embeddings: (768,) SD1, (1024,) SD2, (768, 1280) SDXL."""
        return tuple(text_encoder.cfg.width for _, text_encoder in self.encoders)

    @property
    def width(self) -> int:
        """Width of a learned token's vectors: the encoders' widths side by side (SDXL: 768 + 1280 = 2048)."""
        return sum(self.widths)

    def add_learned_token(self, token: str, vectors: torch.Tensor):
        """`vectors` [n, width]; on SDXL the CLIP-L part [n, 768] and the bigG part [n, 1280] side by side."""
        if vectors.ndim != 2 or vectors.shape[1] != self.width:
            raise UserError(f"learned token {token}: vectors of shape {tuple(vectors.shape)} do not fit the "
                            f"{self.family} model, which expects [n, {' + '.join(map(str, self.widths))}]")
        self.learned[token] = vectors.float().cpu()
        self.embeddings.pop(token, None)  # vectors given directly: no file names them

    def add_embedding(self, embedding):
        """A loaded embedding (embeddings.Embedding): its token usable in prompts, and the embedding kept, so
        that what records an image's making (a dataset's manifest) can name the file it came from."""
        self.add_learned_token(embedding.token, embedding.vectors)
        self.embeddings[embedding.token] = embedding

    # --- conditioning --------------------------------------------------------------------------

    @property
    def encoders(self) -> list:
        """[(tokenizer, text encoder)]: one pair on SD 1/2, two on SDXL (CLIP ViT-L, then OpenCLIP bigG)."""
        return list(zip(self.tokenizers, self.text_encoders))

    @torch.no_grad()
    def encode_prompt(self, text: str, learned: dict | None = None) -> torch.Tensor:
        """Prompt text -> context (1, 77 * windows, width) in the model's dtype; one window up to 75 tokens."""
        return self.conditioning(text, learned).context

    @torch.no_grad()
    def conditioning(self, text: str, learned: dict | None = None) -> prompting.Conditioning:
        """Prompt text -> context and (SDXL) pooled vector."""
        learned = self.learned if learned is None else learned
        return prompting.encode_prompt(self.encoders, text, learned, self.device)

    def _conditioning(self, parts: list, negative_prompt: str, learned: dict):
        """Contexts of the negative prompt and of each weighted sub-prompt, padded to one length.

        Sub-prompts of weight 0 are dropped: they add nothing to the guidance, and without them
        "A:1 AND B:0" is exactly the image of "A". Windows differ in number when prompts differ in
        length; the shorter ones are padded with windows of the empty prompt (as AUTOMATIC1111 does).
        """
        negative = self.conditioning(negative_prompt, learned)
        terms = [(self.conditioning(text, learned), w) for text, w in parts if w != 0]
        longest = max([negative.context.shape[1]] + [c.context.shape[1] for c, _ in terms])
        if any(c.context.shape[1] != longest for c in [negative] + [c for c, _ in terms]):
            empty = self.encode_prompt("", learned)

            def pad(c):
                windows = [empty] * ((longest - c.context.shape[1]) // empty.shape[1])
                return replace(c, context=torch.cat([c.context] + windows, dim=1))

            negative, terms = pad(negative), [(pad(c), w) for c, w in terms]
        if self.model_family.zero_empty_negative and negative_prompt == "":
            # SDXL base's force_zeros_for_empty_prompt: no negative prompt is the zero conditioning, not ""'s
            negative = negative.zeros()
        return negative, terms

    def unet_conditioning(self, cond: prompting.Conditioning, sizes: torch.Tensor) -> prompting.Conditioning:
        """`cond` with all the UNet takes besides the context: on a family with size conditioning (SDXL), the
        added conditioning from the pooled vectors and `sizes` (B, 6, prompt.size_numbers); sampling, training
        and validation all come here."""
        return prompting.with_sizes(cond, sizes) if self.model_family.size_conditioning else cond

    def _guidance_rows(self, parts: list, settings: SampleSettings, learned: dict):
        """The negative prompt's and each weighted sub-prompt's Conditioning with all the UNet takes, for images
        drawn at the settings' size (SDXL: uncropped, at their own size, as diffusers conditions them)."""
        negative, terms = self._conditioning(parts, settings.negative_prompt, learned)
        size = (settings.height, settings.width)
        sizes = prompting.size_numbers(prompting.uncropped(*size), size)  # (1, 6)
        return self.unet_conditioning(negative, sizes), [(self.unet_conditioning(c, sizes), w) for c, w in terms]

    # --- images and the model's inputs ---------------------------------------------------------

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
        return (mean.float() + posterior_std(logvar) * eps) * self.vae.cfg.scale

    # --- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, prompt=None, negative_prompt: str | None = None, *, settings: SampleSettings | None = None,
               learned: dict | None = None, progress: bool = True, **options):
        """Text (and optionally an image) to images. Returns (list of PIL images, the SampleSettings used).

        Either `settings`, or the prompt and SampleSettings' fields as keywords (seed, steps, cfg, scheduler,
        height, width, n, init_image, strength, mask, mask_blur). The prompt is text, with "A:w AND B:w" for
        composed prompts, or a list of (text, weight) pairs. `learned` ({token: vectors}) replaces the
        registered learned tokens for this call.
        """
        parts = None
        if prompt is not None and not isinstance(prompt, str):
            parts = [(text, float(w)) for text, w in prompt]
            prompt = prompt_text.format_and(parts)
        if settings is None:
            fields = {"prompt": prompt or "", "negative_prompt": negative_prompt or "", **options}
            settings = SampleSettings(**fields)
        elif prompt is not None or negative_prompt is not None or options:
            raise TypeError("sample(): pass either settings or the prompt and options, not both")
        return self._run(settings, parts, self.learned if learned is None else learned, progress)

    @torch.no_grad()
    def sample_seeds(self, settings: SampleSettings, seeds: list, *, learned: dict | None = None,
                     progress: bool = False):
        """One text-to-image image per seed, all in one UNet batch, each from its own CPU generator (its initial
        noise and every ancestral draw), as diffusers' pipelines do with a list of generators. Image k is the
        image `sample(settings with seed=seeds[k], n=1)` draws, up to the round-off of batching: it depends
        neither on the batch size nor on which seeds share its batch. Returns (images, one SampleSettings per
        image, with its seed and n=1: what its PNG records)."""
        if settings.init_image is not None:
            raise UserError("--init-image: a dataset job (--count, --prompts-file) draws text-to-image only")
        seeds = [int(seed) for seed in seeds]
        batch = replace(settings, n=len(seeds), seed=seeds[0])
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        images, used = self._run(batch, None, self.learned if learned is None else learned, progress, generators)
        return images, [replace(used, seed=seed, n=1) for seed in seeds]

    def _run(self, settings: SampleSettings, parts, learned: dict, progress: bool, generator=None):
        """`generator`: None for one CPU generator seeded with settings.seed, or a list of one per image."""
        settings, image = self._resolve(settings)
        parts = parts or prompt_text.parse_and(settings.prompt)
        negative, terms = self._guidance_rows(parts, settings, learned)
        generator = generator if generator is not None else torch.Generator("cpu").manual_seed(settings.seed)
        start = self._start(settings, image, generator)
        unet = ScaledUNet(self.unet if start.unet_extra is None else InpaintingChannels(self.unet, start.unet_extra),
                          self.dtype)
        guidance = ClassifierFreeGuidance(unet, negative, terms, settings.cfg, settings.n)
        denoise = Denoiser(guidance, start.schedule, self.prediction, self.device, start.keep_known)
        if len(start.schedule.timesteps) == 0:
            latents = start.x  # img2img at strength 0: nothing to re-run (not even DDIM's final rescale)
        else:
            with tqdm(total=len(start.schedule.timesteps), desc="sampling", disable=not progress, leave=False) as bar:
                latents = samplers.sample(settings.scheduler, denoise, start.x, start.schedule, generator,
                                          callback=lambda i: bar.update(1))
        unet.raise_if_non_finite(len(start.schedule.timesteps))
        if start.keep_known is not None:
            latents = start.keep_known.finish(latents)
        images, redone = self._decode_checked(latents)
        if redone:  # the PNG says so, and so does the terminal, once
            settings.extra["VAE decode"] = f"fp32 after NaN in {_dtype_name(self.dtype)}"
            print(f"notice: the VAE decoder gave NaN or infinite pixels in {_dtype_name(self.dtype)}; "
                  f"decoded {redone} image(s) again in fp32", file=sys.stderr)
        if start.feathered_mask is not None:  # outside the (blurred) mask, the init image's own pixels
            images = [starts.composite(im, start.init_image, start.feathered_mask) for im in images]
        return images, settings

    def resolved(self, settings: SampleSettings) -> SampleSettings:
        """The settings `sample` would record for text-to-image `settings`: checked, every default filled in."""
        return self._resolve(settings)[0]

    def _resolve(self, settings: SampleSettings):
        """Checked settings with every default filled in (seed, size, PNG fields), and the init image."""
        settings = copy.copy(settings)  # checked when it was made; here only defaults are filled in
        settings.extra = dict(settings.extra)
        if settings.seed is None:
            settings.seed = secrets.randbelow(2**32)
        image = None
        if settings.init_image is not None:
            image = imaging.open_image(settings.init_image, "--init-image", "RGB")
            fit_h, fit_w = imaging.fit_size(image, self.vae.downscale)
            settings.height, settings.width = settings.height or fit_h, settings.width or fit_w
        settings.height, settings.width = settings.height or self.native_size, settings.width or self.native_size
        for name, value in (("--height", settings.height), ("--width", settings.width)):
            # whole latent pixels; the UNet's up path resizes to meet its skips when a level halved an odd size
            if value % self.vae.downscale:
                raise UserError(f"{name} {value}: must be a positive multiple of {self.vae.downscale}")
        if image is not None:
            image = imaging.resize(image, settings.height, settings.width)
        settings.extra = {"Model": self.model_name, "Prediction": self.prediction, **settings.extra,
                          **self._workflow_fields(settings)}
        return settings, image

    @staticmethod
    def _workflow_fields(settings: SampleSettings) -> dict:
        fields = {}
        if settings.init_image is not None:
            fields["Denoising strength"] = settings.denoising_strength
            if not isinstance(settings.init_image, Image.Image):
                fields["Init image"] = str(getattr(settings.init_image, "name", settings.init_image))
        if settings.mask is not None:
            fields["Mask blur"] = settings.feather_px
            if not isinstance(settings.mask, Image.Image):
                fields["Mask"] = str(getattr(settings.mask, "name", settings.mask))
        return fields

    def _start(self, settings: SampleSettings, image, generator) -> starts.Start:
        f = self.vae.downscale
        shape = (settings.n, 4, settings.height // f, settings.width // f)
        config = self.checkpoint.scheduler_config
        schedule = samplers.make_schedule(settings.scheduler, settings.steps, self.alphas_cumprod,
                                          config.get("steps_offset", 1), config.get("timestep_spacing"))
        if image is None:
            return starts.txt2img(self, shape, schedule, generator)
        if settings.mask is None:
            return starts.img2img(self, image, settings.denoising_strength, schedule, generator, shape)
        mask = imaging.open_image(settings.mask, "--mask", "L")
        return starts.inpaint(self, image, mask, settings.feather_px, settings.denoising_strength, schedule,
                              generator, shape)

    # --- interpolation -------------------------------------------------------------------------

    def interpolate(self, a: str, b: str, alphas=(0, 0.25, 0.5, 0.75, 1), *, mode="prompt",
                    settings: SampleSettings | None = None, progress: bool = True, **options):
        """One image per alpha, all from the same seed, going from A (alpha 0) to B (alpha 1).

        mode "prompt" (the paper's way): A and B are prompts, drawn as "A:1-alpha AND B:alpha".
        mode "vectors": A and B are learned tokens with the same number of vectors; the prompt (settings'
            prompt; default: A alone) is drawn with A's vectors replaced by (1 - alpha) * A + alpha * B.
        `settings` (or SampleSettings' fields as keywords) give the rest; n must stay 1.
        Returns (images, settings), one of each per alpha.
        """
        if mode not in INTERPOLATE_MODES:
            raise UserError(f"--interpolate-mode {mode}: choose one of {', '.join(INTERPOLATE_MODES)}")
        base = copy.copy(settings) if settings is not None else SampleSettings(**options)
        base.extra = dict(base.extra)
        if base.n != 1:
            raise UserError("--n: interpolation draws one image per alpha; leave --n at 1")
        alphas = [float(x) for x in alphas]
        if not alphas:
            raise UserError("--alphas: give at least one value, e.g. 0,0.5,1")
        base.seed = secrets.randbelow(2**32) if base.seed is None else base.seed  # one seed for the whole strip
        jobs = self._prompt_blends(a, b, alphas, base) if mode == "prompt" else self._vector_blends(a, b, alphas, base)
        images, used = [], []
        for alpha, (parts, learned, names) in zip(alphas, jobs):
            extra = {**base.extra, "Interpolate": f"{names[0]} -> {names[1]}", "Interpolate mode": mode, "Alpha": alpha}
            prompt = prompt_text.format_and(parts) if parts else base.prompt
            ims, s = self._run(replace(base, prompt=prompt, extra=extra), parts, learned, progress)
            images += ims
            used.append(s)
        return images, used

    def _prompt_blends(self, a, b, alphas, base):
        """(parts, learned, names) per alpha for mode "prompt": "A:1-alpha AND B:alpha"."""
        if base.prompt:
            raise UserError("--prompt: not used with --interpolate-mode prompt (A and B are the prompts)")
        for text in (a, b):
            meant_as_token = prompt_text.bracketed_words(text) == [text.strip()]
            if meant_as_token and prompt_text.find_learned(self.learned, text) is None:
                raise UserError(f"--interpolate {text}: not a learned token; {self._known_tokens()}")
        return [([(a, round(1.0 - alpha, 6)), (b, alpha)], self.learned, (a, b)) for alpha in alphas]

    def _vector_blends(self, a, b, alphas, base):
        """(parts, learned, names) per alpha for mode "vectors": A's vectors blended with B's in the prompt."""
        names = [prompt_text.find_learned(self.learned, t) for t in (a, b)]
        for text, name in zip((a, b), names):
            if name is None:
                raise UserError(f"--interpolate {text}: not a learned token; {self._known_tokens()}")
        va, vb = (self.learned[name] for name in names)
        if len(va) != len(vb):
            raise UserError(f"--interpolate-mode vectors: {names[0]} has {len(va)} vectors and {names[1]} "
                            f"{len(vb)}; blending needs the same number (use --interpolate-mode prompt)")
        base.prompt = base.prompt or names[0]
        if names[0] not in prompt_text.split_learned(base.prompt, self.learned)[1::2]:
            raise UserError(f"--prompt {base.prompt!r}: must contain {names[0]}, whose vectors are blended with "
                            f"{names[1]}")
        blends = [{**self.learned, names[0]: (1.0 - alpha) * va + alpha * vb} for alpha in alphas]
        return [(None, learned, names) for learned in blends]

    def check_learned_words(self, text: str, where: str, learned: dict | None = None) -> None:
        """A word in angle brackets is meant as a learned token: refuse one that is not loaded (in `learned`,
        default the registered ones), naming `where` it was written and the tokens that are."""
        for word in prompt_text.bracketed_words(text):
            if prompt_text.find_learned(self.learned if learned is None else learned, word) is None:
                raise UserError(f"{where}: {word} is not a learned token; {self._known_tokens()}")

    def _known_tokens(self) -> str:
        if not self.learned:
            return "no learned tokens are loaded (use --embeddings)"
        return "loaded: " + ", ".join(sorted(self.learned))

    @torch.no_grad()
    def decode(self, latents) -> list:
        """Latents (B, 4, h, w) -> list of 8-bit RGB PIL images, one VAE pass per image to bound memory."""
        return self._decode_checked(latents)[0]

    def _decode_checked(self, latents) -> tuple:
        """(images, how many were decoded again in fp32). In half precision the VAE decoder can overflow
        into NaN (a black image); such an image is decoded again with an fp32 copy of the VAE, never
        handed back black. NaN in fp32 too is an error."""
        images, redone = [], 0
        for z in latents:
            pixels = self._decode_pixels(self.vae, z[None], self.dtype)
            finite = bool(torch.isfinite(pixels).all())  # one host sync per image
            if not finite and self.dtype != torch.float32:
                pixels, redone = self._decode_pixels(self._vae_fp32(), z[None], torch.float32), redone + 1
                finite = bool(torch.isfinite(pixels).all())
            if not finite:
                raise UserError("the VAE decoder gave NaN or infinite pixels even in fp32; the checkpoint's VAE "
                                "weights may be damaged")
            pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()[0]
            images.append(Image.fromarray((pixels * 255).round().astype(np.uint8)))
        return images, redone

    @torch.no_grad()
    def _decode_pixels(self, vae, latents, dtype) -> torch.Tensor:
        return vae.decode((latents / vae.cfg.scale).to(dtype)).float()

    def _vae_fp32(self):
        """An fp32 copy of the VAE, made the first time a half-precision decode fails, then kept."""
        if getattr(self, "_fp32_vae", None) is None:
            self._fp32_vae = copy.deepcopy(self.vae).float()
        return self._fp32_vae


def _dtype_name(dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))

