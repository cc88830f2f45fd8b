"""The dataset job: thousands of labelled images from a prompts file, resumable, across ranks (torchrun).

  rows.py      the prompts file (or --prompt/--count) -> rows: prompt, count, folder, per-row settings
  job.py       rows -> one image per (row, index), seed base + i; skip what is done, write PNG + metadata.csv
  manifest.py  manifest.json: what made the folder (model, embeddings by hash, settings), checked on resume
  ranks.py     RANK/WORLD_SIZE/LOCAL_RANK from torchrun: which images are this process's; gloo/nccl
"""

from .job import generate_dataset  # noqa: F401,E402  (the entry point: generate_dataset(sd, output, ...))
