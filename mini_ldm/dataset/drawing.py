"""Drawing a process's share of a dataset job: batches of one row's images, each PNG and its manifest row
written as soon as its batch is drawn, a stop after the batch on Ctrl-C or SIGTERM, and rank 0's progress bar.
"""
import sys

import torch
from tqdm.auto import tqdm

from ..cli import StopSignals
from ..png import save_png
from . import manifest
from .plan import Job
from .ranks import Group

CUDA_BATCHES = (8, 4, 2, 1)  # tried in turn on CUDA when --batch is not given: the first that fits is kept


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


def next_batch(job: Job, todo, start: int, size: int) -> list:
    """The images at todo[start:start + size], up to the first of another row (a batch draws one row's
    settings; an image's batch never changes what it is)."""
    batch = [job.plan[todo[start]]]
    for index in todo[start + 1:start + size]:
        image = job.plan[index]
        if image.row != batch[0].row:
            break
        batch.append(image)
    return batch


def draw(sd, job: Job, todo, batch: int | None, appender, stop: StopAfterBatch, on_batch) -> int:
    """Draw and write the images at the indices `todo`; returns how many were written. Without a batch size: 1
    on the CPU, and on CUDA 8 first, halved after each out-of-memory error until one fits (retrying the same
    images: they do not depend on the batch size)."""
    size = batch or (CUDA_BATCHES[0] if sd.device.type == "cuda" else 1)
    done, written = 0, 0
    while done < len(todo) and not stop.requested:
        chunk = next_batch(job, todo, done, size)
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
