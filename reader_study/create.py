"""Creating a study: check everything, draw the items, blind the images, assign every reader every item in an
order of their own, then move the finished folder into place (a failed create leaves nothing behind)."""
import csv
import random
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from mini_ldm.errors import UserError

from . import database
from .blinding import MODES, default_mode, default_size, write_blinded
from .items import draw_items
from .tasks import PREFERENCE, TASKS

READER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
READERS_CSV = "readers.csv"


@dataclass
class StudySpec:
    task: str
    folders: dict                       # 'a', 'b', 'real', 'synthetic' -> the folder given (or None)
    names: dict = field(default_factory=dict)  # 'a', 'b' -> the set's name shown in the report
    pairs: int = 50
    per_set: int | None = None
    readers: tuple = ("reader1",)
    seed: int = 0
    size: tuple | None = None          # (width, height); None: the most common size of the first set
    mode: str | None = None            # L or RGB; None: L when the first set is grey


def check_spec(spec: StudySpec) -> None:
    if spec.task not in TASKS:
        raise UserError(f"--task {spec.task}: unknown; choose one of {', '.join(TASKS)}")
    for flag, value in (("--pairs", spec.pairs), ("--per-set", spec.per_set)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    bad = [r for r in spec.readers if not READER_NAME.fullmatch(r)]
    if bad or not spec.readers or len(set(spec.readers)) != len(spec.readers):
        raise UserError(f"--readers {','.join(spec.readers)}: give distinct names of letters, digits, '_', '.' or '-'")
    if spec.mode is not None and spec.mode not in MODES:
        raise UserError(f"--mode {spec.mode}: choose L or RGB")


def check_target(study: Path, overwrite: bool) -> None:
    """An existing STUDY is refused unless --overwrite, and --overwrite never replaces a study with answers."""
    if not study.exists():
        return
    if not overwrite:
        raise UserError(f"STUDY {study} exists; choose a new folder or pass --overwrite")
    if not study.is_dir():
        raise UserError(f"STUDY {study} is a file; choose a folder")
    if any(study.iterdir()) and not (study / database.DATABASE).is_file():
        raise UserError(f"STUDY {study} is a folder but not a study (no {database.DATABASE}); --overwrite replaces "
                        "only a study: choose a new folder")
    answers = database.answer_count(study)
    if answers is None:
        raise UserError(f"STUDY {study}: its database cannot be read, so its answers may be lost; move it away first")
    if answers:
        raise UserError(f"STUDY {study} holds {answers} answers; --overwrite never deletes answers: "
                        "report it, then move it away or choose a new folder")


def create_study(study, spec: StudySpec, overwrite: bool = False) -> Path:
    """Build the study folder `study`; every check runs before anything is written."""
    study = Path(study)
    check_spec(spec)
    check_target(study, overwrite)
    items, classes = draw_items(spec.task, spec.folders, spec.pairs, spec.per_set, spec.seed)
    first_set = [item.first for item in items if item.source == items[0].source]  # A, or real (else synthetic)
    size = spec.size or default_size(first_set)
    mode = spec.mode or default_mode(first_set)
    work = study.parent / f".{study.name}.creating-{secrets.token_hex(4)}"
    try:
        work.mkdir(parents=True)
        _fill(work, spec, items, classes, size, mode)
        if study.exists():
            shutil.rmtree(study)  # check_target made sure it holds no answers
        work.rename(study)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return study


def _fill(work: Path, spec: StudySpec, items: list, classes: tuple, size: tuple, mode: str) -> None:
    (work / database.IMAGES).mkdir()
    db = database.create_database(work)
    try:
        db.execute("BEGIN")
        database.set_meta(db, task=spec.task, classes=list(classes), size=list(size), mode=mode, seed=spec.seed,
                          names=set_names(spec), folders={k: str(v) for k, v in spec.folders.items() if v})
        for number, item in enumerate(tqdm(items, desc="blinding images", unit="item"), start=1):
            first = _image(db, work, item.first, item.source or "a", item.label_class, size, mode)
            second = _image(db, work, item.second, "b", None, size, mode) if item.second else None
            db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                       (number, first, second, item.truth, item.source, item.label_class))
        tokens = _assign(db, spec, len(items))
        db.execute("COMMIT")
    finally:
        db.close()
    _write_readers_csv(work / READERS_CSV, tokens)


def set_names(spec: StudySpec) -> dict:
    """The sets' names for the report: --a-name/--b-name, else the folders' names (told apart if equal)."""
    names = {key: spec.names.get(key) or Path(folder).name for key, folder in spec.folders.items() if folder}
    if spec.task == PREFERENCE and names["a"] == names["b"]:
        names = {"a": f"{names['a']} (A)", "b": f"{names['b']} (B)"}
    return names


def _image(db, work: Path, path: Path, source: str, label_class, size: tuple, mode: str) -> str:
    name = write_blinded(path, work / database.IMAGES, size, mode)
    db.execute("INSERT INTO images VALUES (?, ?, ?, ?)", (name, str(path), source, label_class))
    return name


def _assign(db, spec: StudySpec, n_items: int) -> dict:
    """Every reader reads every item, in an order drawn from (seed, reader); for preference, A's side is drawn
    per pair and per reader. Returns {reader: token}."""
    tokens = {}
    for reader in spec.readers:
        tokens[reader] = secrets.token_hex(16)  # 128 bits: the reader's link is their only credential
        db.execute("INSERT INTO readers VALUES (?, ?)", (reader, tokens[reader]))
        rng = random.Random(f"{spec.seed}/{reader}")
        order = rng.sample(range(1, n_items + 1), n_items)
        for position, item in enumerate(order, start=1):
            a_on_left = int(rng.random() < 0.5) if spec.task == PREFERENCE else None
            db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?, ?)",
                       (secrets.token_hex(16), reader, item, position, a_on_left))
    return tokens


def _write_readers_csv(path: Path, tokens: dict) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["reader", "token", "link_path"])
        for reader, token in tokens.items():
            writer.writerow([reader, token, f"/r/{token}"])
