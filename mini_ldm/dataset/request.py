"""What a dataset job asks for, checked before any model is loaded: the options (--count, --batch,
--prompts-file, --overwrite), the rows, the output folder and the room on its disk. Bad input fails here,
with nothing written.
"""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..cli import check_writable
from ..errors import UserError
from ..sample_settings import SampleSettings
from ..settings import check_positive, option
from .rows import job_rows

# The least a PNG of ours takes beside its parameters text (signature, header, one tiny data chunk, end), so
# that a count the disk cannot possibly hold is refused before any work.
MIN_PNG_BYTES = 100


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
