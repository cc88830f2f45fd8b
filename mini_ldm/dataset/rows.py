"""What a dataset job draws: its rows, one per prompt, from --count or a prompts CSV, checked before any
model is loaded (bad input fails here, with nothing written).

A row is a prompt, how many images of it, the folder they go to, and the settings of its own; a prompts file
has a header row, the columns prompt,count and optionally negative_prompt,folder,cfg,steps,scheduler,seed,
and an empty cell takes the command line's value. A word in angle brackets is meant as a learned token
and must be loaded (`check_learned_tokens`).
"""
import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

from . import manifest
from ..errors import UserError
from ..sample_settings import SCHEDULERS, SampleSettings
from ..settings import check_positive, check_seed

REQUIRED = ("prompt", "count")
OPTIONAL = ("negative_prompt", "folder", "cfg", "steps", "scheduler", "seed")


@dataclass
class Row:
    settings: SampleSettings  # prompt, negative prompt, steps, cfg, scheduler, size; seed None
    count: int
    folder: str               # "" for a --count job: the output folder itself
    seed: int | None          # the row's own seed column
    where: str                # "--prompt" or "prompts.csv line 3", for messages



def job_rows(settings: SampleSettings, count=None, prompts_file=None) -> list:
    """The checked rows of a job, before any model is loaded (bad input fails here, nothing written)."""
    settings = replace(settings, cfg=float(settings.cfg))  # a SampleSettings is checked when made
    for flag, value in (("--init-image", settings.init_image), ("--mask", settings.mask)):
        if value is not None:
            raise UserError(f"{flag}: a dataset job (--count, --prompts-file) draws text-to-image only")
    if settings.n != 1:
        raise UserError(f"--n {settings.n}: a dataset job draws --count images; --batch sets images per UNet call")
    if (count is None) == (prompts_file is None):
        raise UserError("a dataset job needs --count N (one prompt) or --prompts-file CSV (labelled rows), not both")
    if prompts_file is not None:
        if settings.prompt:
            raise UserError("--prompt: with --prompts-file the prompts come from the file's prompt column")
        return read_prompts_file(prompts_file, settings)
    if not settings.prompt:
        raise UserError("--prompt is required with --count")
    check_positive("--count", count)
    return [Row(replace(settings, seed=None), count, "", None, "--prompt")]


def read_prompts_file(path, defaults: SampleSettings) -> list:
    """Rows of a prompts CSV (header row first); empty cells take the flags' values."""
    path = Path(path)
    records = _csv_records(path)
    header = [name.strip() for name in records[0][1]]
    for name in header:
        if name not in REQUIRED + OPTIONAL:
            raise UserError(f"--prompts-file {path}: unknown column {name!r}; the columns are "
                            f"{','.join(REQUIRED)} and optionally {','.join(OPTIONAL)}")
    for name in REQUIRED:
        if name not in header:
            raise UserError(f"--prompts-file {path}: no {name!r} column in the header {','.join(header)!r}; "
                            f"it needs {','.join(REQUIRED)}")
    if len(set(header)) != len(header):
        raise UserError(f"--prompts-file {path}: a column is named twice in the header {','.join(header)!r}")
    rows = []
    for line, cells in records[1:]:
        where = f"{path.name} line {line}"
        if len(cells) > len(header):
            raise UserError(f"{where}: {len(cells)} cells, but the header names {len(header)} columns")
        cells = dict(zip(header, [c.strip() for c in cells] + [""] * (len(header) - len(cells))))
        rows.append(_row(cells, len(rows) + 1, where, defaults))
    if not rows:
        raise UserError(f"--prompts-file {path}: no rows under the header")
    return rows


def _csv_records(path: Path) -> list:
    """[(line number, cells)] of the non-blank records, the header first."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"--prompts-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompts-file {path}: cannot be read as UTF-8 text ({e})") from None
    reader = csv.reader(io.StringIO(text))
    try:
        records = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except csv.Error as e:
        raise UserError(f"--prompts-file {path} line {reader.line_num}: not valid CSV ({e})") from None
    if not records:
        raise UserError(f"--prompts-file {path}: empty; the first row names the columns, e.g. prompt,count,folder")
    return records


def _row(cells: dict, number: int, where: str, defaults: SampleSettings) -> Row:
    if not cells["prompt"]:
        raise UserError(f"{where}: empty prompt")
    count = _number(cells, "count", int, where)
    if count is None or count < 1:
        raise UserError(f"{where}: count {cells['count']!r} must be a whole number of at least 1")
    steps = _number(cells, "steps", int, where)
    if steps is not None and steps < 1:
        raise UserError(f"{where}: steps {steps} must be at least 1")
    cfg = _number(cells, "cfg", float, where)
    if cfg is not None and not math.isfinite(cfg):
        raise UserError(f"{where}: cfg {cells['cfg']} must be a finite number, e.g. 3")
    scheduler = cells.get("scheduler") or defaults.scheduler
    if scheduler not in SCHEDULERS:
        raise UserError(f"{where}: scheduler {scheduler!r} is unknown; choose one of {', '.join(SCHEDULERS)}")
    seed = _number(cells, "seed", int, where)
    seed = check_seed(seed, f"{where}: seed") if seed != -1 else None
    folder = cells.get("folder") or str(number)
    if folder in (".", "..") or folder.startswith(".") or any(c in folder for c in "/\\:"):
        raise UserError(f"{where}: folder {folder!r} must be a plain folder name (no '/', '\\', ':' or leading '.')")
    if folder.casefold() == manifest.NAME.casefold():  # the job's own files all start with '.', but this one
        raise UserError(f"{where}: folder {folder!r} is the name of the job's own manifest; choose another folder")
    settings = replace(defaults, prompt=cells["prompt"], seed=None, scheduler=scheduler,
                       negative_prompt=cells.get("negative_prompt") or defaults.negative_prompt,
                       steps=steps if steps is not None else defaults.steps,
                       cfg=float(cfg) if cfg is not None else defaults.cfg)
    return Row(settings, count, folder, seed, where)


def _number(cells: dict, column: str, kind, where: str):
    """The cell as an int or float; None when the column is absent or the cell empty."""
    text = cells.get(column, "")
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise UserError(f"{where}: {column} {text!r} is not {what}") from None


def check_learned_tokens(sd, rows: list) -> None:
    """A word in angle brackets ("<cancer>") is meant as a learned token: refuse one that is not loaded."""
    for row in rows:
        for text in (row.settings.prompt, row.settings.negative_prompt):
            sd.check_learned_words(text, row.where)
