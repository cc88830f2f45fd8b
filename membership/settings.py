"""PrivacySettings: privacy.py's options, the source of its flags and of docs/privacy.md's table."""
from dataclasses import dataclass
from pathlib import Path

from mini_ldm.model_settings import DTYPE_NAMES
from mini_ldm.errors import UserError
from mini_ldm.settings import check_positive, check_seed, device_option, option

REFERENCES = ("init", "empty")


@dataclass
class PrivacySettings:
    embeddings: Path | None = option(None, "the embedding file to audit, or a folder of them (one per concept)",
                                     metavar="FILE", shown="(required)")
    members: Path | None = option(None, "the images the embedding was trained on; with several tokens one "
                                        "subfolder per token, named as train.py --concepts names them",
                                  metavar="DIR", shown="(required)")
    held_out: Path | None = option(None, "real images of the same kind the embedding never saw (flat, or one "
                                         "subfolder per token like --members)", metavar="DIR", shown="(required)")
    output: Path = option(Path("privacy"), "folder for membership.json, scores.csv and membership.png",
                          metavar="DIR", shown="privacy/")
    templates: str | None = option(None, "prompt templates of the training run: a built-in name (name, object, "
                                         "style, filewords) or a file, as train.py --template",
                                   shown="the file's recorded template, else name")
    timesteps: str = option("50,100,200,300,500,700", "the timesteps every image is scored at (comma-separated)",
                            metavar="T,T,...")
    draws: int = option(8, "noise draws per timestep (the same draws for every image)", metavar="N")
    seed: int = option(0, "seed of the shared noise draws", metavar="N")
    reference: str | None = option(None, "the calibration's prompt: the token replaced by the file's init text, "
                                         "or removed (empty)", choices=REFERENCES,
                                   shown="init when the file records an init text, else empty")
    resolution: int | None = option(None, "image size in pixels, as in training (shorter side resized, centre "
                                          "crop)", shown="the model's native size")
    batch: int = option(8, "rows (image, timestep, draw) per UNet forward pass", metavar="N")
    device: str | None = device_option()
    dtype: str | None = option(None, "model precision", choices=DTYPE_NAMES,
                               shown="bf16 on a CUDA GPU that has it, else fp32 (as training)")

    def check(self) -> "PrivacySettings":
        """Refuse bad numbers before anything is read."""
        for flag, value in (("--embeddings", self.embeddings), ("--members", self.members),
                            ("--held-out", self.held_out)):
            if value is None:
                raise UserError(f"{flag}: required (see privacy.py --help)")
        check_positive("--draws", self.draws)
        check_positive("--batch", self.batch)
        check_seed(self.seed)
        if self.resolution is not None:
            check_positive("--resolution", self.resolution)
        self.timestep_list()
        return self

    def timestep_list(self) -> list[int]:
        try:
            values = [int(part) for part in self.timesteps.split(",")]
        except ValueError:
            raise UserError(f"--timesteps {self.timesteps}: give whole numbers separated by commas, e.g. "
                            "50,100,200,300,500,700") from None
        if len(set(values)) != len(values) or any(v < 0 for v in values):
            raise UserError(f"--timesteps {self.timesteps}: each timestep once, none below 0")
        return values
