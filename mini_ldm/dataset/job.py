"""Synthetic datasets: thousands of images from one command, resumable, split across processes, with a manifest.

    report = generate_dataset(sd, "prostate/", prompts_file="prompts.csv", seed=1, steps=30)
    report = generate_dataset(sd, "xrays/", prompt="<effusion>", count=1000, seed=1, batch=4)

A job is a list of rows (a prompt, a count, a folder, optional settings of its own): one row for --count,
one per line of a prompts file. Image i of the job (a `JobImage`) has its file, its row and its seed (the
row's own `seed` column + k, else base + the images of earlier rows + k), worked out on demand from the rows
(`Plan`), so a job of any size takes no memory to plan. An image is a function of its JobImage alone:
`StableDiffusion.sample_seeds` draws it from its own CPU generator, so it depends neither on the batch size,
nor on the images sharing its batch, nor on the number of processes, nor on restarts.

A job is checked in two steps: `dataset_request` (the rows, the output folder, the disk's room) before any
model is loaded, then `run_dataset` with the model:
  1. rank 0 takes DIR/.dataset.lock (a second job on DIR stops at once) and settles the folder
     (`settle_folder`): it takes the base seed recorded in metadata.csv when --seed is not given, refuses a
     different setting (naming the first difference) or, with --overwrite, removes the old images; the others
     wait for its word;
  2. each process takes images i with i % K == rank, keeps those whose PNG decodes and carries the expected
     parameters, and draws the rest in batches, appending each image's manifest row once the PNG is written;
  3. after a barrier, rank 0 rewrites metadata.csv from the plan, sorted, in one atomic rename.
"""
import bisect
import os
import secrets
import shutil
import sys
import time
from array import array
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import hashes
from .. import prompt as prompting
from ..cli import StopSignals, check_writable
from ..errors import UserError
from ..io import pid_lock
from ..png import parameters_text, parse_parameters, save_png
from ..sample_settings import SampleSettings
from ..settings import SEED_LIMIT, check_positive, option
from . import manifest
from .ranks import Group
from .rows import check_learned_tokens, job_rows

CUDA_BATCHES = (8, 4, 2, 1)  # tried in turn on CUDA when --batch is not given: the first that fits is kept
LOCK = ".dataset.lock"       # in the output folder while a job writes it (row folders never start with '.')
# The least a PNG of ours takes beside its parameters text (signature, header, one tiny data chunk, end), so
# that a count the disk cannot possibly hold is refused before any work.
MIN_PNG_BYTES = 100
# which flag (or prompts-file column) sets each manifest column / PNG field, for messages
FLAG_OF = {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "seed": "--seed", "steps": "--steps",
           "cfg": "--cfg", "scheduler": "--scheduler", "width": "--width", "height": "--height", "model": "--model",
           "model_hash": "--model", "embeddings": "--embeddings", "Prompt": "--prompt",
           "Negative prompt": "--negative-prompt", "Steps": "--steps", "Sampler": "--scheduler", "CFG scale": "--cfg",
           "Seed": "--seed", "Size": "--width/--height", "Model": "--model", "Prediction": "--prediction"}


@dataclass
class DatasetOptions:
    count: int | None = option(None, "make a dataset: this many images into the --output folder (00000.png, ...), "
                                     "image i from seed --seed + i; resumable, with metadata.csv", metavar="N")
    batch: int | None = option(None, "with --count/--prompts-file: images per UNet call; an image does not depend "
                                     "on it", shown="1 on CPU; on CUDA the first of 8, 4, 2, 1 that fits", metavar="B")
    prompts_file: Path | None = option(None, "a labelled dataset: a CSV with columns prompt,count and optionally "
                                             "negative_prompt,folder,cfg,steps,scheduler,seed; row r goes to "
                                             "--output/<folder>/", metavar="CSV")
    overwrite: bool = option(False, "with --count/--prompts-file: redraw a dataset folder made with other settings")


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
    token_hashes: dict
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


@dataclass
class DatasetReport:
    output: Path
    seed: int | None          # the base seed (None when every row has its own)
    images: int
    written: int
    skipped: int
    seconds: float
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"written {self.written}, skipped {self.skipped}, {self.seconds:.1f} s, "
                f"{self.images_per_s:.2f} images/s")


# --- the plan: base seed, hashes -----------------------------------------------------------------------

@dataclass
class DatasetRequest:
    """A job checked before any model is loaded: where, which rows, the base seed asked for, how to draw."""
    output: Path
    rows: list
    seed: int | None
    batch: int | None = None
    overwrite: bool = False


def dataset_request(settings: SampleSettings, output, count=None, prompts_file=None, batch=None,
                    overwrite: bool = False) -> DatasetRequest:
    """The job's rows and output checked (bad input fails here, nothing written, no model loaded)."""
    if batch is not None:
        check_positive("--batch", batch)
    rows = job_rows(settings, count, prompts_file)
    output = Path(output)
    if output.suffix.lower() == ".png":
        raise UserError(f"--output {output}: a dataset goes to a folder, not a .png name")
    check_writable(output, "--output", is_file=False)  # a file, a path under a file, a read-only folder
    check_room(output, rows)
    return DatasetRequest(output, rows, settings.seed if settings.seed != -1 else None, batch, overwrite)


def check_room(output: Path, rows: list) -> None:
    """Refuse a job that the disk under `output` cannot hold even at the smallest PNG per image (a count of
    10**12 would otherwise run until the disk fills): free inodes and bytes, plus the images already there."""
    total = sum(row.count for row in rows)
    existing = output
    while not existing.exists():
        existing = existing.parent
    room = os.statvfs(existing) if hasattr(os, "statvfs") else None
    files = room.f_favail if room is not None and room.f_files > 0 else None  # 0: the file system does not say
    need = sum(row.count * (MIN_PNG_BYTES + len(row.settings.prompt.encode()) +
                            len(row.settings.negative_prompt.encode())) for row in rows)
    free = shutil.disk_usage(existing).free
    if (files is None or total <= files) and need <= free:
        return
    folders = {row.folder for row in rows}  # rows may share a folder (neg/): count its images once
    there = sum(1 for folder in folders for _ in (output / folder).glob("*.png")) if output.is_dir() else 0
    if (files is None or total <= files + there) and need <= free + there * MIN_PNG_BYTES:
        return
    raise UserError(f"--output {output}: {total} images cannot fit on its disk ({free // 2**20} MiB and "
                    f"{files if files is not None else 'unknown'} files free; each PNG takes at least "
                    f"{MIN_PNG_BYTES} bytes and a file); lower --count (or the prompts file's counts)")


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


def build_job(sd, output: Path, rows: list, base, model_hash: str, token_hashes: dict) -> Job:
    """The plan with what each image's PNG text and manifest row are made from, the same on every process."""
    resolved = [sd.resolved(replace(row.settings, seed=0)) for row in rows]
    used = [_embeddings_field(sd, row.settings, token_hashes) for row in rows]
    return Job(Path(output), Plan(rows, base), model_hash, token_hashes, resolved, used, sd.model_name)


def _used_tokens(sd, settings: SampleSettings) -> list:
    names = []
    for text in (settings.prompt, settings.negative_prompt):
        names += [n for n in prompting.split_learned(text, sd.learned)[1::2] if n not in names]
    return names


def _embeddings_field(sd, settings: SampleSettings, token_hashes: dict) -> str:
    return " ".join(f"{name}:{token_hashes[name]}" for name in _used_tokens(sd, settings))


def content_hashes(sd, rows: list, embedding_files: dict | None) -> tuple:
    """(model hash, {learned token the job uses: hash}): sha256[:10] of the files (or of the vectors when
    the file is not known). Computed once per job, on rank 0."""
    model = hashes.model_hash(sd.checkpoint.path)
    files = {prompting.match_key(name): Path(p) for name, p in (embedding_files or {}).items() if p is not None}
    tokens = {}
    for row in rows:
        for name in _used_tokens(sd, row.settings):
            source = files.get(prompting.match_key(name))
            digest = hashes.file_sha256(source) if source is not None else hashes.tensor_sha256(sd.learned[name])
            tokens[name] = digest[:hashes.SHORT]
    return model, tokens


# --- what the output folder already holds -----------------------------------------------------------------

def image_state(path: Path, expected: str) -> tuple:
    """("complete", text) when the PNG decodes and carries the expected parameters; ("redraw", None) when it is
    missing or damaged; ("different", its text) when it is a whole image made with other settings."""
    if not path.is_file():
        return "redraw", None
    try:
        with Image.open(path) as im:
            im.load()
            text = im.info.get("parameters")
    except (OSError, SyntaxError, ValueError):
        return "redraw", None
    return ("complete" if text == expected else "different"), text


def _difference_message(job: Job, file_name: str, key: str, old, new) -> str:
    return (f"--output {job.output}: {file_name} was made with {key} {old!r}, this job asks for {new!r} "
            f"({FLAG_OF.get(key, key)}); use --overwrite to redraw the dataset, or another --output")


def check_existing(job: Job, existing: dict) -> None:
    """Refuse a folder whose manifest records other settings (or images this job does not make)."""
    for file_name in sorted(existing, key=manifest.order):
        image = job.plan.find(file_name)
        if image is None:
            raise UserError(f"--output {job.output}: its manifest lists {file_name}, which this job does not make "
                            "(fewer images or other folders?); use --overwrite, or another --output")
        found = manifest.first_difference(existing[file_name], job.record(image))
        if found is not None:
            raise UserError(_difference_message(job, file_name, *found))


def parameters_difference(job: Job, image: JobImage, found: str) -> str:
    """The message for a PNG at an image's path that was made with other settings (or is not ours)."""
    expected = job.text(image)
    old, new = parse_parameters(found or ""), parse_parameters(expected)
    for key in new:
        if old.get(key) != new[key]:
            return _difference_message(job, image.file_name, key, old.get(key), new[key])
    return _difference_message(job, image.file_name, "parameters", found, expected)


def _remove_old(job: Job, existing: dict) -> None:
    """--overwrite: the images the old manifest lists, the PNGs at this job's file names, and the manifests."""
    inside = job.output.resolve()
    planned = [path.relative_to(job.output).as_posix() for folder in {row.folder for row in job.plan.rows}
               for path in (job.output / folder).glob("*.png")]
    for name in set(existing) | {name for name in planned if job.plan.find(name) is not None}:
        path = job.output / name
        if path.suffix == ".png" and path.resolve().is_relative_to(inside):  # never what a foreign list names
            path.unlink(missing_ok=True)
    for path in manifest.files(job.output):
        path.unlink()


def _tidy(job: Job, existing: dict) -> None:
    """Make the folders; drop temporary files a killed run left; one clean metadata.csv of the old rows (no
    parts, no half-written last line) for this run's rows to be appended to."""
    folders = {job.output} | {job.output / row.folder for row in job.plan.rows}
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob(".*.tmp"):
            if tmp.name.startswith((".metadata.csv.", ".metadata.rank")) or ".png." in tmp.name:
                tmp.unlink(missing_ok=True)
    if existing or manifest.files(job.output):
        manifest.write_sorted(job.output, existing.values())


def settle_folder(sd, request: DatasetRequest, embedding_files) -> Job:
    """Rank 0, holding the lock, before any image is drawn: the job (base seed, hashes) and its folder checked
    against it and tidied."""
    try:
        existing = manifest.read(request.output)
    except UserError:
        if not request.overwrite:
            raise
        existing = {}
    base = request.seed if request.seed is not None else recorded_base(request.rows, existing)
    if base is None and any(row.seed is None for row in request.rows):
        base = secrets.randbelow(2**32)
    model_hash, token_hashes = content_hashes(sd, request.rows, embedding_files)
    job = build_job(sd, request.output, request.rows, base, model_hash, token_hashes)
    if request.overwrite:
        _remove_old(job, existing)
        existing = {}
    else:
        check_existing(job, existing)
    _tidy(job, existing)
    return job


def open_job(sd, request: DatasetRequest, embedding_files, locks: ExitStack) -> Job:
    """Rank 0: take the folder's lock (held in `locks` until the job ends) and settle the folder. When the
    folder is refused, the lock is let go and a folder this call made is removed again."""
    output = request.output
    made = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        held.enter_context(pid_lock(output / LOCK, output, "dataset job"))  # another job's: its folder is left alone
        try:
            job = settle_folder(sd, request, embedding_files)
        except BaseException:
            if made:  # ours alone, while we hold its lock
                shutil.rmtree(output, ignore_errors=True)
            raise
        locks.enter_context(held.pop_all())
    return job


def scan(job: Job, mine) -> tuple:
    """(indices of the images to draw, number kept, error message or None) for this process's images."""
    todo, kept = array("q"), 0  # 8 bytes per image to draw, however large the job
    for image in mine:
        state, found = image_state(job.output / image.file_name, job.text(image))
        if state == "complete":
            kept += 1
        elif state == "redraw":
            todo.append(image.index)
        else:
            return todo, kept, parameters_difference(job, image, found)
    return todo, kept, None


# --- drawing --------------------------------------------------------------------------------------------

class StopAfterBatch(StopSignals):
    """Ctrl-C or SIGTERM: finish the batch being drawn and its files, then stop. The handlers are put back at
    once, so a second Ctrl-C stops immediately."""

    def __init__(self):
        super().__init__(self._handle)
        self.requested = False

    def _handle(self, signum, frame):
        self.requested = True
        self.restore()
        print("stopping after this batch (everything written so far is kept; run the same command to go on)",
              file=sys.stderr)


def batches(job: Job, todo, size: int):
    """Runs of up to `size` images of one row, in order (an image's batch never changes what it is)."""
    run = []
    for index in todo:
        image = job.plan[index]
        if run and (len(run) == size or run[-1].row != image.row):
            yield run
            run = []
        run.append(image)
    if run:
        yield run


def draw(sd, job: Job, todo, batch: int | None, appender, stop: StopAfterBatch, on_batch) -> int:
    """Draw and write the images at the indices `todo`; returns how many were written. Without a batch size: 1
    on the CPU, and on CUDA 8 first, halved after each out-of-memory error until one fits (retrying the same
    images: they do not depend on the batch size)."""
    size = batch or (CUDA_BATCHES[0] if sd.device.type == "cuda" else 1)
    done, written = 0, 0
    while done < len(todo) and not stop.requested:
        chunk = next(batches(job, todo[done:done + size], size))
        try:
            images, _ = sd.sample_seeds(job.plan.rows[chunk[0].row].settings, [image.seed for image in chunk])
        except torch.cuda.OutOfMemoryError:
            if batch is not None or size == 1:
                raise
            size //= 2
            torch.cuda.empty_cache()
            print(f"out of GPU memory; going on with --batch {size}", file=sys.stderr)
            continue
        for image, picture in zip(chunk, images):
            save_png(picture, job.output / image.file_name, job.text(image))
            appender.add(job.record(image))
        done += len(chunk)
        written += len(chunk)
        on_batch(written)
    return written


class Progress:
    """Rank 0's bar over the whole job: its own images, the rows the other ranks appended to their parts."""

    def __init__(self, job: Job, group: Group, kept: int, enabled: bool):
        self.job, self.group = job, group
        self.kept = kept
        others = range(1, group.size) if group.rank == 0 else ()  # only rank 0 shows a bar
        self.others = [manifest.RowCounter(manifest.part_path(job.output, r)) for r in others]
        self.bar = tqdm(total=len(job.plan), initial=kept, unit="img", desc="dataset", dynamic_ncols=True,
                        disable=not enabled or group.rank != 0, smoothing=0.1)

    def __call__(self, written_here: int) -> None:
        others = sum(count() for count in self.others)
        self.bar.update(self.kept + written_here + others - self.bar.n)

    def close(self):
        self.bar.close()


def _on_rank0(group: Group, work):
    """work() on rank 0; its result, or its error as a UserError, on every rank (the others wait for it)."""
    result, error = None, None
    if group.rank == 0:
        try:
            result = work()
        except (UserError, OSError) as e:
            error = str(e)
        except BaseException:
            group.broadcast((None, "rank 0 failed while opening the job's folder (see its traceback)"))
            raise
    result, error = group.broadcast((result, error))
    if error is not None:
        raise UserError(error)
    return result


def _checked_scan(group: Group, job: Job) -> tuple:
    """This rank's images to draw, and the number kept over the whole job; the first rank's error, everywhere."""
    todo, kept, error = scan(job, job.plan.images(group.rank, group.size))
    reports = group.gather((kept, error))
    errors = [e for _, e in reports if e is not None]
    if errors:
        raise UserError(errors[0])
    return todo, sum(k for k, _ in reports)


# --- the job --------------------------------------------------------------------------------------------

def generate_dataset(sd, output, settings: SampleSettings | None = None, *, count: int | None = None,
                     prompts_file=None, batch: int | None = None, overwrite: bool = False,
                     embedding_files: dict | None = None, progress: bool = True, log=print,
                     **options) -> DatasetReport:
    """Draw a dataset into the folder `output`: `count` images of one prompt (`output/00000.png`, ...), or the
    rows of a prompts CSV (`output/<folder>/00000.png`, ...), plus `output/metadata.csv`. Image i uses seed
    settings.seed + i (a random base, printed and recorded, when the seed is None; an earlier run's base when
    the folder holds one). Running it again resumes: complete images are kept, the rest drawn.

    settings: the SampleSettings (or their fields as keywords) for every image; rows of a prompts file override
        the prompt, negative prompt, cfg, steps and scheduler. batch: images per UNet call (see `draw`).
    embedding_files: {learned token: the file it came from}, for the manifest's hashes (default: the vectors').
    Under torchrun each process draws its share. Ctrl-C stops after the current batch: the report then says
    interrupted=True. Bad input raises UserError before anything is written.
    """
    settings = settings if settings is not None else SampleSettings(**options)
    request = dataset_request(settings, output, count, prompts_file, batch, overwrite)
    return run_dataset(sd, request, embedding_files, progress, log)


def run_dataset(sd, request: DatasetRequest, embedding_files: dict | None = None, progress: bool = True,
                log=print) -> DatasetReport:
    """Draw a checked request (`dataset_request`) with the model: this process's share under torchrun."""
    check_learned_tokens(sd, request.rows)
    group = Group(sd.device)
    try:
        with ExitStack() as locks:  # rank 0's lock on the folder, held until the job ends
            return _run(sd, request, embedding_files, group, locks, progress, log)
    finally:
        group.close()


def _run(sd, request: DatasetRequest, embedding_files, group: Group, locks, progress, log) -> DatasetReport:
    t0, output = time.time(), request.output
    job = _on_rank0(group, lambda: open_job(sd, request, embedding_files, locks))  # a few rows: cheap to send
    if group.rank == 0:
        if job.plan.base is not None:
            log(f"seed {job.plan.base}")
        log(f"{len(job.plan)} images into {output}/" + (f" on {group.size} processes" if group.size > 1 else ""))
    todo, kept = _checked_scan(group, job)
    appender = manifest.Appender(output / manifest.NAME if group.size == 1 else manifest.part_path(output, group.rank))
    bar = Progress(job, group, kept, progress)
    try:
        with StopAfterBatch() as stop:
            written = draw(sd, job, todo, request.batch, appender, stop, bar)
    finally:
        appender.close()
        bar.close()
    report = DatasetReport(output, job.plan.base, len(job.plan), written, kept, time.time() - t0, stop.requested)
    if stop.requested:  # no barrier: the other processes may be stopping too, or gone
        log(f"interrupted: {report.line()} on this process; run the same command again to go on")
        return report
    group.barrier()
    if group.rank == 0:
        manifest.write_rows(output, (job.record(image) for image in job.plan.in_manifest_order()))
    report.written = sum(group.gather(written))
    report.seconds = time.time() - t0
    if group.rank == 0:
        log(report.line())
    return report
