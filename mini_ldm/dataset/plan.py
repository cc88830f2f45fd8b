"""The plan of a dataset job: image i of the job (a `JobImage`) with its row, its seed and its file, worked out
on demand from the rows (`Plan`), and what each image's PNG text and manifest row are made from (`Job`).
"""
import bisect
from dataclasses import dataclass, replace
from pathlib import Path

from .. import hashes
from .. import prompt_text
from ..errors import UserError
from ..png import parameters_text
from ..sample_settings import SampleSettings
from ..settings import SEED_LIMIT
from . import manifest

@dataclass(frozen=True)
class JobImage:
    """One image of a job: its place in the job, its row, its seed and its file."""
    index: int                # position in the job
    row: int
    seed: int
    file_name: str            # relative to the output folder, with "/"


def image_name(number: int) -> str:
    """00000.png, ..., 99999.png, 100000.png: at least 5 digits, wider only when the number needs it, so a job
    that grows keeps the names it has."""
    return f"{number:05d}.png"


class Plan:
    """Every image of a job, in order, worked out on demand from the rows (files numbered on per folder)."""

    def __init__(self, rows: list, base: int | None):
        self.rows, self.base = rows, base
        self.starts = [0]            # the job index of each row's first image
        self.numbers = []            # the folder number of each row's first image
        in_folder = {}
        for row in rows:
            self.numbers.append(in_folder.get(row.folder, 0))
            in_folder[row.folder] = self.numbers[-1] + row.count
            self.starts.append(self.starts[-1] + row.count)
        self.folder_rows = {folder: [r for r, row in enumerate(rows) if row.folder == folder] for folder in in_folder}
        for r, row in enumerate(rows):
            last = self._seed(r, row.count - 1)
            if last >= SEED_LIMIT:
                raise UserError(f"{row.where}: its last image would get seed {last}, past the largest, "
                                f"{SEED_LIMIT - 1}; choose a smaller --seed")

    def __len__(self) -> int:
        return self.starts[-1]

    def _seed(self, r: int, k: int) -> int:
        row = self.rows[r]
        return row.seed + k if row.seed is not None else (self.base or 0) + self.starts[r] + k

    def _image(self, r: int, k: int) -> JobImage:
        folder, name = self.rows[r].folder, image_name(self.numbers[r] + k)
        return JobImage(self.starts[r] + k, r, self._seed(r, k), f"{folder}/{name}" if folder else name)

    def __getitem__(self, index: int) -> JobImage:
        r = bisect.bisect_right(self.starts, index) - 1
        return self._image(r, index - self.starts[r])

    def images(self, first: int = 0, step: int = 1):
        """Images first, first + step, ... (one process's share), made as they are asked for."""
        return (self[i] for i in range(first, len(self), step))

    def find(self, file_name: str) -> JobImage | None:
        """The image written to `file_name`, or None when the job makes no such file."""
        folder, _, name = file_name.rpartition("/")
        stem = name.removesuffix(".png")
        if folder not in self.folder_rows or not stem.isdigit() or image_name(int(stem)) != name:
            return None
        number = int(stem)
        for r in self.folder_rows[folder]:
            if self.numbers[r] <= number < self.numbers[r] + self.rows[r].count:
                return self._image(r, number - self.numbers[r])
        return None

    def in_manifest_order(self):
        """Every image, folders by name, numbers in order within a folder (manifest.order)."""
        for folder in sorted(self.folder_rows, key=lambda f: f + "/" if f else ""):
            for r in self.folder_rows[folder]:
                for k in range(self.rows[r].count):
                    yield self._image(r, k)


@dataclass
class Job:
    """A planned job with what each image's PNG text and manifest row are made from."""
    output: Path
    plan: Plan
    model_hash: str
    resolved: list            # each row's settings as sample() records them (seed aside)
    used: list                # each row's embeddings column
    model: str                # the model's name, for the manifest

    def text(self, image: JobImage) -> str:
        """The PNG parameters text image `image` carries."""
        return parameters_text(replace(self.resolved[image.row], seed=image.seed))

    def record(self, image: JobImage) -> dict:
        """Its manifest row."""
        s = self.resolved[image.row]
        return {"file_name": image.file_name, "prompt": s.prompt, "negative_prompt": s.negative_prompt,
                "seed": str(image.seed), "steps": str(s.steps), "cfg": str(float(s.cfg)),
                "scheduler": s.scheduler, "width": str(s.width), "height": str(s.height),
                "model": self.model, "model_hash": self.model_hash, "embeddings": self.used[image.row]}


def recorded_base(rows: list, existing: dict):
    """The base seed an earlier run of this job recorded in its manifest, or None."""
    at_zero = Plan(rows, 0)
    for file_name in sorted(existing, key=manifest.order):
        image = at_zero.find(file_name)
        if image is not None and rows[image.row].seed is None:
            try:
                return int(existing[file_name]["seed"]) - image.seed
            except ValueError:
                continue
    return None


def build_job(sd, output: Path, rows: list, base) -> Job:
    """The plan with what each image's PNG text and manifest row are made from, the same on every process."""
    model_hash, token_hashes = content_hashes(sd, rows)
    resolved = [sd.resolved(replace(row.settings, seed=0)) for row in rows]
    used = [_embeddings_field(sd, row.settings, token_hashes) for row in rows]
    return Job(Path(output), Plan(rows, base), model_hash, resolved, used, sd.model_name)


def _used_tokens(sd, settings: SampleSettings) -> list:
    names = []
    for text in (settings.prompt, settings.negative_prompt):
        names += [n for n in prompt_text.split_learned(text, sd.learned)[1::2] if n not in names]
    return names


def _embeddings_field(sd, settings: SampleSettings, token_hashes: dict) -> str:
    return " ".join(f"{name}:{token_hashes[name]}" for name in _used_tokens(sd, settings))


def content_hashes(sd, rows: list) -> tuple:
    """(model hash, {learned token the job uses: hash}): sha256[:10] of the files (or of the vectors when
    they were not loaded from a file). Computed once per job, on rank 0."""
    model = hashes.model_hash(sd.checkpoint.path)
    tokens = {}
    for row in rows:
        for name in _used_tokens(sd, row.settings):
            loaded = sd.embeddings.get(name)
            source = loaded.source if loaded is not None else None
            digest = hashes.file_sha256(source) if source is not None else hashes.tensor_sha256(sd.learned[name])
            tokens[name] = digest[:hashes.SHORT]
    return model, tokens
