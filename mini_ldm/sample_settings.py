"""SampleSettings: everything that determines an image; the input of `StableDiffusion.sample`, the source
of sample.py's flags, and what the PNG's parameters text records.

No torch here (nor in what this imports): sample.py checks its flags, and the files they name, before torch
is imported, so a mistake answers at once."""
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .images import check_image_file
from .settings import check_finite, check_positive, check_seed, check_utf8, option

# A documented cap, checked before the model loads: SD's attention over (side/8)^2 latent cells grows with the
# fourth power of the side, and past 4096 px (8x the 512 px training size) a run takes hours on any GPU and
# exhausts the memory of most. Larger images are better made by upscaling.
MAX_SIDE = 4096
DEFAULT_STRENGTH = 0.75
DEFAULT_MASK_BLUR = 4
SCHEDULERS = ("ddim", "euler", "euler_a", "dpm++2m", "dpm++2m_karras")  # samplers.py draws each
INTERPOLATE_MODES = ("prompt", "vectors")  # StableDiffusion.interpolate: blend the prompts, or the vectors


@dataclass
class SampleSettings:
    prompt: str = option("", "what to draw; \"A:0.7 AND B:0.3\" composes prompts, each its own guidance term; "
                             "any length (past 75 tokens it takes several windows)",
                   shown="(required unless --interpolate or --prompts-file)")
    negative_prompt: str = option("", "what to steer away from (the unconditional side of classifier-free guidance)",
                                  shown="empty")
    seed: int | None = option(None, "random seed; the same seed gives the same image on any device and in diffusers; "
                                    "-1 means random", shown="random, printed")
    steps: int = option(30, "sampling steps (the paper used 25-100)")
    cfg: float = option(3.0, "classifier-free guidance scale (the paper used 2-3); 1 or less turns guidance off")
    scheduler: str = option("euler_a", "sampler: euler_a is Euler ancestral, as in the paper",
                            choices=SCHEDULERS)
    height: int | None = option(None, f"image height in pixels, a multiple of 8 up to {MAX_SIDE}",
                                shown="the model's native size")
    width: int | None = option(None, f"image width in pixels, a multiple of 8 up to {MAX_SIDE}",
                               shown="the model's native size")
    n: int = option(1, "images drawn in one batch from the seed")
    init_image: Path | None = option(None, "img2img: start from this image instead of noise (the output takes its "
                                           "size, rounded down to a multiple of 8, unless --height/--width say "
                                           "otherwise)", metavar="PATH")
    strength: float | None = option(None, "with --init-image: the fraction of the schedule re-run, 0 (the image "
                                          "back) to 1 (all of it)", shown=str(DEFAULT_STRENGTH))
    mask: Path | None = option(None, "inpainting, with --init-image: white = repaint, black = keep; resized to "
                                     "the image if needed", metavar="PATH")
    mask_blur: int | None = option(None, "with --mask: feather the mask edge over this many pixels; beyond it "
                                         "the init image's pixels are kept exactly", shown=str(DEFAULT_MASK_BLUR))
    extra: dict = field(default_factory=dict)  # more "Key: value" pairs for the PNG (model, prediction, alpha...)

    def __post_init__(self):
        self.check()  # a SampleSettings is valid from the moment it exists: no caller has to remember to check

    def check(self) -> "SampleSettings":
        """Refuse what cannot be honoured, before any model is loaded (run when the settings are made). Returns self."""
        for flag, text in (("--prompt", self.prompt), ("--negative-prompt", self.negative_prompt),
                           ("--init-image", self.init_image), ("--mask", self.mask)):
            check_utf8(flag, text)
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"--scheduler {self.scheduler}: unknown; choose one of {', '.join(SCHEDULERS)}")
        check_positive("--steps", self.steps)
        check_positive("--n", self.n)
        check_finite("--cfg", self.cfg, "3")
        self.seed = check_seed(self.seed)
        for flag, side in (("--height", self.height), ("--width", self.width)):
            # the multiple (the VAE's factor, 8 for every SD checkpoint) is checked against the model itself
            if side is not None and not 8 <= side <= MAX_SIDE:
                raise UserError(f"{flag} {side}: must be between 8 and {MAX_SIDE} pixels (leave it out for the "
                                "model's native size)")
        for flag, value in (("--init-image", self.init_image), ("--mask", self.mask)):
            if isinstance(value, (str, Path)):  # the API may pass a PIL image instead
                check_image_file(value, flag)
        if self.init_image is None:
            for flag, value in (("--strength", self.strength), ("--mask", self.mask)):
                if value is not None:
                    raise UserError(f"{flag} needs --init-image: it says how to redraw that image")
        if self.mask is None and self.mask_blur is not None:
            raise UserError("--mask-blur needs --mask: it feathers the mask's edge")
        if self.strength is not None and not 0.0 <= self.strength <= 1.0:
            raise UserError(f"--strength {self.strength}: must be between 0 and 1")
        if self.mask_blur is not None and self.mask_blur < 0:
            raise UserError(f"--mask-blur {self.mask_blur}: must be 0 or more pixels")
        return self

    @property
    def denoising_strength(self) -> float:
        return DEFAULT_STRENGTH if self.strength is None else self.strength

    @property
    def feather_px(self) -> int:
        return DEFAULT_MASK_BLUR if self.mask_blur is None else self.mask_blur
