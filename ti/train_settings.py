"""TrainSettings: everything that defines a Textual Inversion run; the input of `Trainer`, the source of
train.py's flags, and what the embedding's metadata records. Defaults follow the paper (de Wilde et al.
2024): 64 vectors, AdamW at lr 0.005, batch 1."""
import math
from dataclasses import dataclass
from pathlib import Path

from mini_ldm.errors import UserError
from mini_ldm.model_settings import DTYPE_NAMES
from mini_ldm.settings import check_positive, check_seed, option
from mini_ldm.tokenizer import MAX_LENGTH

from .templates import BUILTIN_TEMPLATES

DEFAULT_VAL_EVERY = 250


@dataclass
class TrainSettings:
    data: Path | None = option(None, "folder of training images, searched recursively (png, jpg, jpeg, bmp, "
                                     "tif/tiff, webp; 8- or 16-bit grayscale, RGB(A), palette; 16-bit images are "
                                     "scaled by their own min/max; 2-D DICOM through its window, one image per "
                                     "frame, with requirements-medical.txt; 3-D volumes: run prepare.py first); a "
                                     ".txt beside an image is its caption for --template filewords", metavar="DIR", shown="(required)")
    token: str | None = option(None, "the new prompt word, one word without spaces", shown="<data-folder-name>")
    vectors: int = option(64, "vectors per token (the paper's best)")
    init_text: str | None = option(None, "initialise the vectors from this text's token embeddings (vector i from "
                                         "token i*len/vectors)", flag="--init", metavar="TEXT",
                                   shown="small random vectors")
    steps: int = option(10_000, "optimisation steps in total (the paper trained 50k-100k)")
    lr: float = option(0.005, "AdamW learning rate (the paper's)")
    batch: int = option(1, "images per step")
    grad_accum: int = option(1, "batches whose gradients add up to one step")
    resolution: int | None = option(None, "training size in pixels; the shorter side is resized to it, then "
                                          "cropped square", shown="the model's native size")
    crop: str = option("center", "square crop; random picks one crop per image, fixed by --seed",
                       choices=("center", "random"))
    flip: bool = option(False, "also train on horizontal mirrors (off by default: laterality matters in chest X-rays)")
    template: str = option("name", "prompt templates: " + ", ".join(BUILTIN_TEMPLATES) + " (name is the token "
                                   "alone), or a file of lines with [name] and [filewords]")
    seed: int = option(0, "seed for every random draw of the run")
    dtype: str | None = option(None, "model precision; the vectors and AdamW state stay fp32; fp16 uses loss "
                                     "scaling", choices=DTYPE_NAMES, aliases=("--precision",),
                               shown="bf16 on a CUDA GPU that has it, else fp32")
    compile: bool = option(False, "compile the UNet with torch.compile (inductor; on a CPU it needs a C compiler; "
                                  "the first step is slow while it compiles)")
    gradient_checkpointing: bool = option(False, "recompute the UNet's blocks in the backward pass: less memory "
                                                 "on small cards, the same gradients, slower steps")
    save_every: int = option(500, "also save <token>-<step>.safetensors every N steps (0: only at the end)")
    preview_every: int = option(0, "every N steps, draw a 4-image preview grid of the token with a fixed seed, "
                                   "beside the output (0: off)")
    preview_prompt: str = option("[name]", "prompt of the preview")
    preview_steps: int = option(20, "sampling steps of the preview")
    output: Path | None = option(None, "the embedding file; a loss CSV, its plot and the resume state go beside it "
                                       "(with --concepts: the folder of all the run's files)", metavar="PATH",
                                 shown="embeddings/<token>.safetensors; with --concepts embeddings/")
    concepts: bool = option(False, "every immediate subfolder of --data that holds images is a concept of its own, "
                                   "token <subfolder>; one run trains them all, one batch per concept per step")
    token_prefix: str | None = option(None, "with --concepts: tokens are <P-subfolder>", metavar="P")
    init_file: Path | None = option(None, "with --concepts: lines 'subfolder: init text' (--init covers the "
                                          "folders it does not name)", metavar="FILE")
    val_images: int = option(0, "hold out N images per concept, chosen with --seed and never trained on, for a "
                                "validation loss at fixed timesteps and noise (0: no validation)", metavar="N")
    val_data: Path | None = option(None, "held-out images for the validation loss instead of --val-images (with "
                                         "--concepts: one subfolder per concept)", metavar="DIR")
    val_every: int | None = option(None, "validate every S steps", metavar="S", shown="250 with validation")
    val_timesteps: int = option(8, "timesteps of the validation loss, evenly spaced over the schedule")
    early_stop: int = option(0, "stop a concept after P validations without a new best; its best vectors are "
                                "<name>.safetensors, the last <name>-last.safetensors (0: off)", metavar="P")
    early_stop_delta: float = option(0.001, "a new best is lower than the best so far by more than this fraction "
                                            "of it")
    base_model: str = ""  # the checkpoint's name, recorded in the embedding's metadata

    def check(self) -> "TrainSettings":
        """Refuse what cannot be honoured before a model is loaded or an image encoded. Returns self."""
        for flag, value in (("--steps", self.steps), ("--batch", self.batch), ("--grad-accum", self.grad_accum),
                            ("--preview-steps", self.preview_steps)):
            check_positive(flag, value)
        for flag, value in (("--save-every", self.save_every), ("--preview-every", self.preview_every)):
            check_positive(flag, value, allow_zero=True)
        if not (self.lr > 0 and math.isfinite(self.lr)):  # AdamW refuses <= 0 with a traceback; nan fails too
            raise UserError(f"--lr {self.lr}: must be a positive number, e.g. 0.005")
        check_vectors(self.vectors)
        if check_seed(self.seed) is None:
            raise UserError(f"--seed {self.seed}: training needs a fixed seed (a whole number, 0 or more)")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise UserError(f"--token {self.token!r}: must be one word, without spaces (e.g. <chest-xray>)")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise UserError(f"--dtype {self.dtype}: choose one of {', '.join(DTYPE_NAMES)}")
        self._check_concepts()
        self._check_validation()
        return self

    @property
    def validation(self) -> bool:
        return self.val_images > 0 or self.val_data is not None

    @property
    def val_interval(self) -> int:
        """Steps between validations; 0 without validation."""
        return (self.val_every or DEFAULT_VAL_EVERY) if self.validation else 0

    def _check_concepts(self):
        if self.concepts and self.token is not None:
            raise UserError(f"--token {self.token}: with --concepts each subfolder names its own token; use "
                            "--token-prefix P for <P-subfolder>")
        for flag, value in (("--token-prefix", self.token_prefix), ("--init-file", self.init_file)):
            if value is not None and not self.concepts:
                raise UserError(f"{flag} {value}: only with --concepts (one token per subfolder of --data)")
        if self.token_prefix is not None and (not self.token_prefix or any(c.isspace() or c in "<>"
                                                                           for c in self.token_prefix)):
            raise UserError(f"--token-prefix {self.token_prefix!r}: must be one word without spaces or <>")

    def _check_validation(self):
        check_positive("--val-images", self.val_images, allow_zero=True)
        check_positive("--val-timesteps", self.val_timesteps)
        check_positive("--early-stop", self.early_stop, allow_zero=True)
        if self.val_every is not None:
            check_positive("--val-every", self.val_every)
        if self.val_images and self.val_data is not None:
            raise UserError(f"--val-images {self.val_images} and --val-data {self.val_data}: choose one source of "
                            "held-out images")
        if not self.validation:
            for flag, value in (("--early-stop", self.early_stop), ("--val-every", self.val_every)):
                if value:
                    raise UserError(f"{flag} {value}: needs a validation loss; add --val-images N (hold out N "
                                    "images per concept) or --val-data DIR")
        if not (0 <= self.early_stop_delta < 1):
            raise UserError(f"--early-stop-delta {self.early_stop_delta}: must be a fraction from 0 to below 1, "
                            "e.g. 0.001")


def check_vectors(vectors: int, max_length: int = MAX_LENGTH):
    room = max_length - 2
    if not 1 <= vectors <= room:
        raise UserError(f"--vectors {vectors}: must be between 1 and {room} (one {max_length}-token window)")
