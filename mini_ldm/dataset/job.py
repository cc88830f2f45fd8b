"""Synthetic datasets: thousands of images from one command, resumable, split across processes, with a manifest.

    report = sd.generate_dataset("prostate/", prompts_file="prompts.csv", seed=1, steps=30)
    report = sd.generate_dataset("xrays/", prompt="<effusion>", count=1000, seed=1, batch=4)

A job is a list of rows (a prompt, a count, a folder, optional settings of its own): one row for --count,
one per line of a prompts file. Before anything is drawn it is planned into items: image i has its file,
its row and its seed (the row's own `seed` column + k, else base + the images of earlier rows + k). An
image is a function of its item alone: `StableDiffusion.sample_seeds` draws it from its own CPU generator,
so it depends neither on the batch size, nor on the images sharing its batch, nor on the number of
processes, nor on restarts.

Running a job (one process, or K under torchrun):
  1. rank 0 reads what DIR already holds (metadata.csv and its parts): it takes the base seed recorded there
     when --seed is not given, refuses a different setting (naming the first difference) or, with
     --overwrite, removes the old images; the others wait for its word;
  2. each process takes items i with i % K == rank, keeps those whose PNG decodes and carries the expected
     parameters, and draws the rest in batches, appending each image's manifest row once the PNG is written;
  3. after a barrier, rank 0 rewrites metadata.csv from the plan, sorted, in one atomic rename.
"""
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import hashes
from .. import prompt as prompting
from ..cli import check_writable
from . import manifest
from .rows import check_learned_tokens, job_rows
from ..errors import UserError
from ..png import parameters_text, parse_parameters, save_png
from .ranks import Group
from ..sample_settings import SampleSettings
from ..settings import SEED_LIMIT, check_positive, option

CUDA_BATCHES = (8, 4, 2, 1)  # tried in turn on CUDA when --batch is not given: the first that fits is kept
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
class Item:
    index: int                # position in the job
    row: int
    seed: int
    file_name: str            # relative to the output folder, with "/"


@dataclass
class Job:
    output: Path
    rows: list
    items: list
    texts: list               # the PNG parameters text of each item
    records: list             # the manifest row of each item


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


# --- the plan: index -> (row, seed, file) ----------------------------------------------------------------

def plan(rows: list, base: int | None) -> list:
    """Every image of the job, in order; files numbered per folder, zero-padded to at least 5 digits."""
    per_folder = Counter()
    for row in rows:
        per_folder[row.folder] += row.count
    width = {folder: max(5, len(str(n - 1))) for folder, n in per_folder.items()}
    items, numbered, offset = [], Counter(), 0
    for r, row in enumerate(rows):
        for k in range(row.count):
            seed = row.seed + k if row.seed is not None else (base or 0) + offset + k
            name = f"{numbered[row.folder]:0{width[row.folder]}d}.png"
            numbered[row.folder] += 1
            items.append(Item(len(items), r, seed, f"{row.folder}/{name}" if row.folder else name))
        offset += row.count
    for item in items:
        if item.seed >= SEED_LIMIT:
            raise UserError(f"{rows[item.row].where}: {item.file_name} would get seed {item.seed}, past the "
                            f"largest, {SEED_LIMIT - 1}; choose a smaller --seed")
    return items


def recorded_base(rows: list, existing: dict):
    """The base seed an earlier run of this job recorded in its manifest, or None."""
    for item in plan(rows, 0):
        if rows[item.row].seed is None and item.file_name in existing:
            try:
                return int(existing[item.file_name]["seed"]) - item.seed
            except ValueError:
                continue
    return None


def build_job(sd, output: Path, rows: list, base, model_hash: str, token_hashes: dict) -> Job:
    """The plan with each image's PNG text and manifest row, made the same way on every process."""
    items = plan(rows, base)
    resolved = [sd.resolved(replace(row.settings, seed=0)) for row in rows]
    used = [_embeddings_field(sd, row.settings, token_hashes) for row in rows]
    texts, records = [], []
    for item in items:
        s = replace(resolved[item.row], seed=item.seed)
        texts.append(parameters_text(s))
        records.append({"file_name": item.file_name, "prompt": s.prompt, "negative_prompt": s.negative_prompt,
                        "seed": str(item.seed), "steps": str(s.steps), "cfg": str(float(s.cfg)),
                        "scheduler": s.scheduler, "width": str(s.width), "height": str(s.height),
                        "model": sd.model_name, "model_hash": model_hash, "embeddings": used[item.row]})
    return Job(Path(output), rows, items, texts, records)


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
    path = sd.checkpoint.path
    model = hashes.model_hash(path) if path is not None else ""
    files = {name.lower(): Path(p) for name, p in (embedding_files or {}).items() if p is not None}
    tokens = {}
    for row in rows:
        for name in _used_tokens(sd, row.settings):
            source = files.get(name.lower())
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
    planned = {record["file_name"]: record for record in job.records}
    for file_name in sorted(existing):
        if file_name not in planned:
            raise UserError(f"--output {job.output}: its manifest lists {file_name}, which this job does not make "
                            "(fewer images or other folders?); use --overwrite, or another --output")
        found = manifest.first_difference(existing[file_name], planned[file_name])
        if found is not None:
            raise UserError(_difference_message(job, file_name, *found))


def parameters_difference(job: Job, item: Item, found: str) -> str:
    """The message for a PNG at an item's path that was made with other settings (or is not ours)."""
    old, new = parse_parameters(found or ""), parse_parameters(job.texts[item.index])
    for key in new:
        if old.get(key) != new[key]:
            return _difference_message(job, item.file_name, key, old.get(key), new[key])
    return _difference_message(job, item.file_name, "parameters", found, job.texts[item.index])


def _remove_old(job: Job, existing: dict) -> None:
    """--overwrite: the images the old manifest lists, the planned files, and the manifests."""
    inside = job.output.resolve()
    for name in set(existing) | {item.file_name for item in job.items}:
        path = job.output / name
        if path.suffix == ".png" and path.resolve().is_relative_to(inside):  # never what a foreign list names
            path.unlink(missing_ok=True)
    for path in manifest.files(job.output):
        path.unlink()


def _tidy(job: Job, existing: dict) -> None:
    """Make the folders; drop temporary files a killed run left; one clean metadata.csv of the old rows (no
    parts, no half-written last line) for this run's rows to be appended to."""
    folders = {job.output} | {job.output / row.folder for row in job.rows}
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob(".*.tmp"):
            if tmp.name.startswith((".metadata.csv.", ".metadata.rank")) or ".png." in tmp.name:
                tmp.unlink(missing_ok=True)
    if existing or manifest.files(job.output):
        manifest.write_sorted(job.output, existing.values())


def prepare(sd, output: Path, rows: list, seed, overwrite: bool, embedding_files) -> tuple:
    """Rank 0, before any image is drawn: (base seed, model hash, token hashes), the folder checked and tidied."""
    try:
        existing = manifest.read(output)
    except UserError:
        if not overwrite:
            raise
        existing = {}
    base = seed if seed is not None else recorded_base(rows, existing)
    if base is None and any(row.seed is None for row in rows):
        base = secrets.randbelow(2**32)
    model_hash, token_hashes = content_hashes(sd, rows, embedding_files)
    job = build_job(sd, output, rows, base, model_hash, token_hashes)
    if overwrite:
        _remove_old(job, existing)
        existing = {}
    else:
        check_existing(job, existing)
    _tidy(job, existing)
    return base, model_hash, token_hashes


def scan(job: Job, mine: list) -> tuple:
    """(items to draw, number kept, error message or None) for this process's items."""
    todo, kept = [], 0
    for item in mine:
        state, found = image_state(job.output / item.file_name, job.texts[item.index])
        if state == "complete":
            kept += 1
        elif state == "redraw":
            todo.append(item)
        else:
            return todo, kept, parameters_difference(job, item, found)
    return todo, kept, None


# --- drawing --------------------------------------------------------------------------------------------

class StopAfterBatch:
    """Ctrl-C (SIGINT) or SIGTERM (what SLURM sends before it ends a job): finish the batch being drawn and its
    files, then stop. The handlers are put back at once, so a second Ctrl-C stops immediately."""

    def __enter__(self):
        self.requested, self.old = False, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self._restore()
        print("stopping after this batch (everything written so far is kept; run the same command to go on)",
              file=sys.stderr)

    def _restore(self):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        self.old = {}

    def __exit__(self, *exc):
        self._restore()


def batches(todo: list, size: int):
    """Runs of up to `size` items of one row, in order (an image's batch never changes what it is)."""
    run = []
    for item in todo:
        if run and (len(run) == size or run[-1].row != item.row):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def draw(sd, job: Job, todo: list, batch: int | None, appender, stop: StopAfterBatch, on_batch) -> int:
    """Draw and write `todo`; returns how many were written. Without a batch size: 1 on the CPU, and on CUDA
    8 first, halved after each out-of-memory error until one fits (retrying the same images: they do not
    depend on the batch size)."""
    size = batch or (CUDA_BATCHES[0] if sd.device.type == "cuda" else 1)
    pending, written = list(todo), 0
    while pending and not stop.requested:
        chunk = next(batches(pending, size))
        try:
            images, _ = sd.sample_seeds(job.rows[chunk[0].row].settings, [item.seed for item in chunk])
        except torch.cuda.OutOfMemoryError:
            if batch is not None or size == 1:
                raise
            size //= 2
            torch.cuda.empty_cache()
            print(f"out of GPU memory; going on with --batch {size}", file=sys.stderr)
            continue
        for item, image in zip(chunk, images):
            save_png(image, job.output / item.file_name, job.texts[item.index])
            appender.add(job.records[item.index])
        del pending[:len(chunk)]
        written += len(chunk)
        on_batch(written)
    return written


class Progress:
    """Rank 0's bar over the whole job: its own images, the rows the other ranks appended to their parts."""

    def __init__(self, job: Job, group: Group, kept: int, enabled: bool):
        self.job, self.group = job, group
        self.kept = kept
        self.bar = tqdm(total=len(job.items), initial=kept, unit="img", desc="dataset", dynamic_ncols=True,
                        disable=not enabled or group.rank != 0, smoothing=0.1)

    def __call__(self, written_here: int) -> None:
        others = sum(manifest.count_rows(manifest.part_path(self.job.output, r)) for r in range(1, self.group.size))
        self.bar.update(self.kept + written_here + others - self.bar.n)

    def close(self):
        self.bar.close()


def _on_rank0(group: Group, work):
    """work() on rank 0; its result, or its error as a UserError, on every rank."""
    result, error = None, None
    if group.rank == 0:
        try:
            result = work()
        except (UserError, OSError) as e:
            error = str(e)
        except BaseException:
            group.broadcast((None, "rank 0 failed while preparing the job (see its traceback)"))
            raise
    result, error = group.broadcast((result, error))
    if error is not None:
        raise UserError(error)
    return result


def _checked_scan(group: Group, job: Job) -> tuple:
    """This rank's items to draw, and the number kept over the whole job; the first rank's error, everywhere."""
    mine = job.items[group.rank::group.size]
    todo, kept, error = scan(job, mine)
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
    if batch is not None:
        check_positive("--batch", batch)
    rows = job_rows(settings, count, prompts_file)
    check_learned_tokens(sd, rows)
    output = Path(output)
    check_writable(output, "--output", is_file=False)  # a file, a path under a file, a read-only folder
    group = Group(sd.device)
    try:
        return _run(sd, output, rows, settings.seed if settings.seed != -1 else None, batch, overwrite,
                    embedding_files, group, progress, log)
    finally:
        group.close()


def _run(sd, output, rows, seed, batch, overwrite, embedding_files, group, progress, log) -> DatasetReport:
    t0 = time.time()
    base, model_hash, token_hashes = _on_rank0(group, lambda: prepare(sd, output, rows, seed, overwrite,
                                                                      embedding_files))
    job = build_job(sd, output, rows, base, model_hash, token_hashes)
    if group.rank == 0:
        if base is not None:
            log(f"seed {base}")
        log(f"{len(job.items)} images into {output}/" + (f" on {group.size} processes" if group.size > 1 else ""))
    todo, kept = _checked_scan(group, job)
    appender = manifest.Appender(output / manifest.NAME if group.size == 1 else manifest.part_path(output, group.rank))
    bar = Progress(job, group, kept, progress)
    try:
        with StopAfterBatch() as stop:
            written = draw(sd, job, todo, batch, appender, stop, bar)
    finally:
        appender.close()
        bar.close()
    report = DatasetReport(output, base, len(job.items), written, kept, time.time() - t0, stop.requested)
    if stop.requested:  # no barrier: the other processes may be stopping too, or gone
        log(f"interrupted: {report.line()} on this process; run the same command again to go on")
        return report
    group.barrier()
    if group.rank == 0:
        manifest.write_sorted(output, job.records)
    report.written = sum(group.gather(written))
    report.seconds = time.time() - t0
    if group.rank == 0:
        log(report.line())
    return report
