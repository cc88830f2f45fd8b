"""The dataset job: thousands of labelled images from a prompts file, resumable, across ranks (torchrun).

  rows.py      the prompts file (or --prompt/--count) -> rows: prompt, count, folder, per-row settings
  request.py   the options (--count, --batch, ...) and what is checked before the model loads: rows, folder, disk
  plan.py      rows -> one image per (row, index), seed base + i, file name; its PNG text and manifest row
  folder.py    the output folder brought in line: lock, recorded seed, other settings refused or --overwrite,
               which images are complete and which to draw
  drawing.py   batches of one row drawn, PNG + manifest row written, stop after the batch, the progress bar
  job.py       generate_dataset / run_dataset: the steps above across the processes
  manifest.py  metadata.csv: what made each image (model, embeddings by hash, settings), checked on resume
  ranks.py     RANK/WORLD_SIZE/LOCAL_RANK from torchrun: which images are this process's; gloo/nccl

The entry point, generate_dataset(sd, output, ...), is imported on first use (mini_ldm/lazy.py): sample.py checks a job's
options through request.py before torch is imported.
"""

from ..lazy import exports

__getattr__, __dir__ = exports(__name__, {"generate_dataset": ".job"})
