"""A dataset's manifest: DIR/metadata.csv in the Hugging Face ImageFolder convention, one row per image.

`file_name` (relative to DIR) comes first, then what made the image. While a job runs, each process
appends a row as soon as its image is written (one process: to metadata.csv itself; several: each to its
own part, `.metadata.rank<r>.csv`), so a crash loses nothing; at the end the file is rewritten from the
job's plan, sorted by file_name, in one atomic rename. A crash can leave a last line half written: readers
here drop it (the image it names is checked on its own anyway).
"""
import csv
import io
import os
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write

NAME = "metadata.csv"
COLUMNS = ("file_name", "prompt", "negative_prompt", "seed", "steps", "cfg", "scheduler", "width", "height",
           "model", "model_hash", "embeddings")


def part_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f".metadata.rank{rank}.csv"


def files(folder: Path) -> list:
    """metadata.csv and any parts an interrupted multi-process job left, those that exist."""
    folder = Path(folder)
    return [p for p in [folder / NAME, *sorted(folder.glob(".metadata.rank*.csv"))] if p.is_file()]


def read(folder: Path) -> dict:
    """{file_name: row} from metadata.csv and its parts (a later row for a file wins). A file that is not a
    manifest of ours is an error naming it."""
    rows = {}
    for path in files(folder):
        for row in _read_one(path):
            rows[row["file_name"]] = row
    return rows


def _read_one(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e}); use --overwrite or another --output") from None
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]  # a row cut short by a crash
    records = list(csv.reader(io.StringIO(text)))
    if not records:
        return []
    if tuple(records[0]) != COLUMNS:
        raise UserError(f"{path}: not a manifest written by sample.py (its columns are {','.join(records[0])}); "
                        "use --overwrite to replace it, or another --output")
    return [dict(zip(COLUMNS, r)) for r in records[1:] if len(r) == len(COLUMNS)]


def order(file_name: str) -> tuple:
    """The manifest's order: folders by name, then images by number ("pos/99999.png" before "pos/100000.png",
    names widen past 5 digits so that a growing job keeps the names it has)."""
    folder, _, name = file_name.rpartition("/")
    stem = name.removesuffix(".png")
    return (folder + "/" if folder else "", int(stem) if stem.isdigit() else -1, name)


def write_rows(folder: Path, rows) -> Path:
    """metadata.csv holding exactly `rows` (an iterable, in manifest order: streamed, never held whole),
    replaced in one rename; parts removed."""
    path = Path(folder) / NAME
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row[c] for c in COLUMNS])
    for part in Path(folder).glob(".metadata.rank*.csv"):
        part.unlink(missing_ok=True)
    return path


def write_sorted(folder: Path, rows) -> Path:
    """metadata.csv holding exactly `rows` (a few: what a folder already lists), sorted into manifest order."""
    return write_rows(folder, sorted(rows, key=lambda r: order(r["file_name"])))


class Appender:
    """Appends rows to one manifest file, the header first when the file is new; each row is flushed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", encoding="utf-8", newline="")
        self.writer = csv.writer(self.file, lineterminator="\n")
        if new:
            self.writer.writerow(COLUMNS)
            self.file.flush()

    def add(self, row: dict) -> None:
        self.writer.writerow([row[c] for c in COLUMNS])
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class RowCounter:
    """Complete rows in a manifest part another process appends to (for the progress bar), reading only the
    bytes added since the last call: a bar updated after every batch must not re-read the whole part."""

    def __init__(self, path: Path):
        self.path, self.read_to, self.lines = Path(path), 0, 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.read_to)
                added = f.read()
        except OSError:  # not there yet
            return 0
        self.read_to += len(added)
        self.lines += added.count(b"\n")
        return max(self.lines - 1, 0)  # the header is not a row


def first_difference(old: dict, new: dict):
    """(column, old value, new value) of the first column after file_name where two rows differ, else None."""
    for column in COLUMNS[1:]:
        if old.get(column) != new[column]:
            return column, old.get(column), new[column]
    return None
