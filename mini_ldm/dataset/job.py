"""Synthetic datasets: thousands of images from one command, resumable, split across processes, with a manifest.

    report = generate_dataset(sd, "prostate/", prompts_file="prompts.csv", seed=1, steps=30)
    report = generate_dataset(sd, "xrays/", prompt="<effusion>", count=1000, seed=1, batch=4)

A job is a list of rows (a prompt, a count, a folder, optional settings of its own): one row for --count,
one per line of a prompts file. Image i of the job (a `JobImage`) has its file, its row and its seed (the
row's own `seed` column + k, else base + the images of earlier rows + k), worked out on demand from the rows
(`Plan`), so a job of any size takes no memory to plan. An image is a function of its JobImage alone:
`StableDiffusion.sample_seeds` draws it from its own CPU generator, so it depends neither on the batch size,
nor on the images sharing its batch, nor on the number of processes, nor on restarts.

A job is checked in two steps: `dataset_request` (request.py: the rows, the output folder, the disk's room)
before any model is loaded, then `run_dataset` (here: the processes' coordination) with the model:
  1. rank 0 takes DIR/.dataset.lock (a second job on DIR stops at once) and settles the folder
     (folder.py, `settle_folder`): it takes the base seed recorded in metadata.csv when --seed is not given,
     refuses a different setting (naming the first difference) or, with --overwrite, removes the old images;
     the others wait for its word;
  2. each process takes images i with i % K == rank, keeps those whose PNG decodes and carries the expected
     parameters (folder.py, `scan`), and draws the rest in batches (drawing.py), appending each image's
     manifest row once the PNG is written;
  3. after a barrier, rank 0 rewrites metadata.csv from the plan (plan.py), sorted, in one atomic rename.
"""
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..sample_settings import SampleSettings
from . import manifest
from .drawing import Progress, StopAfterBatch, draw
from .folder import open_job, scan
from .plan import Job
from .ranks import Group
from .request import DatasetRequest, dataset_request
from .rows import check_learned_tokens


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


# --- the processes: rank 0 decides, the others follow ------------------------------------------------------

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
                     progress: bool = True, log=print, **options) -> DatasetReport:
    """Draw a dataset into the folder `output`: `count` images of one prompt (`output/00000.png`, ...), or the
    rows of a prompts CSV (`output/<folder>/00000.png`, ...), plus `output/metadata.csv`. Image i uses seed
    settings.seed + i (a random base, printed and recorded, when the seed is None; an earlier run's base when
    the folder holds one). Running it again resumes: complete images are kept, the rest drawn.

    settings: the SampleSettings (or their fields as keywords) for every image; rows of a prompts file override
        the prompt, negative prompt, cfg, steps and scheduler. batch: images per UNet call (see drawing.draw).
    The manifest names each learned token by the hash of the file it was loaded from (sd.embeddings), else
    of its vectors.
    Under torchrun each process draws its share. Ctrl-C stops after the current batch: the report then says
    interrupted=True. Bad input raises UserError before anything is written.
    """
    settings = settings if settings is not None else SampleSettings(**options)
    request = dataset_request(settings, output, count, prompts_file, batch, overwrite)
    return run_dataset(sd, request, progress, log)


def run_dataset(sd, request: DatasetRequest, progress: bool = True, log=print) -> DatasetReport:
    """Draw a checked request (`dataset_request`) with the model: this process's share under torchrun."""
    check_learned_tokens(sd, request.rows)
    group = Group(sd.device)
    try:
        with ExitStack() as locks:  # rank 0's lock on the folder, held until the job ends
            return _run(sd, request, group, locks, progress, log)
    finally:
        group.close()


def _run(sd, request: DatasetRequest, group: Group, locks, progress, log) -> DatasetReport:
    t0, output = time.time(), request.output
    job = _on_rank0(group, lambda: open_job(sd, request, locks))  # a few rows: cheap to send
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
