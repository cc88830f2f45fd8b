"""Bringing the output folder in line with the job before anything is drawn: rank 0 takes the folder's lock,
takes the base seed an earlier run recorded, refuses a folder made with other settings (naming the first
difference) or, with --overwrite, removes the old images; then each process finds which of its images are
complete and which must be drawn (`scan`).
"""
import secrets
import shutil
from array import array
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..io import pid_lock
from ..png import parse_parameters
from . import manifest
from .plan import Job, JobImage, build_job, recorded_base
from .request import DatasetRequest

LOCK = ".dataset.lock"       # in the output folder while a job writes it (row folders never start with '.')
# which flag (or prompts-file column) sets each manifest column / PNG field, for messages
FLAG_OF = {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "seed": "--seed", "steps": "--steps",
           "cfg": "--cfg", "scheduler": "--scheduler", "width": "--width", "height": "--height", "model": "--model",
           "model_hash": "--model", "embeddings": "--embeddings", "Prompt": "--prompt",
           "Negative prompt": "--negative-prompt", "Steps": "--steps", "Sampler": "--scheduler", "CFG scale": "--cfg",
           "Seed": "--seed", "Size": "--width/--height", "Model": "--model", "Prediction": "--prediction"}



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


def settle_folder(sd, request: DatasetRequest) -> Job:
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
    job = build_job(sd, request.output, request.rows, base)
    if request.overwrite:
        _remove_old(job, existing)
        existing = {}
    else:
        check_existing(job, existing)
    _tidy(job, existing)
    return job


def open_job(sd, request: DatasetRequest, locks: ExitStack) -> Job:
    """Rank 0: take the folder's lock (held in `locks` until the job ends) and settle the folder. When the
    folder is refused, the lock is let go and a folder this call made is removed again."""
    output = request.output
    made = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        held.enter_context(pid_lock(output / LOCK, output, "dataset job"))  # another job's: its folder is left alone
        try:
            job = settle_folder(sd, request)
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
