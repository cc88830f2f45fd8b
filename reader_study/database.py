"""The study's one SQLite database: what was shown (items, the blinded images behind them), to whom and in which
order (assignments), and what each reader answered. Write-ahead logging with full syncs: an answer is on disk
when `commit` returns, so the server may reply only after it, and a `kill -9` loses nothing that was answered.
"""
import json
import sqlite3
from pathlib import Path

DATABASE = "study.sqlite"
IMAGES = "images"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (name TEXT PRIMARY KEY, original TEXT NOT NULL, source TEXT NOT NULL, class TEXT);
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    first TEXT NOT NULL REFERENCES images(name),   -- preference: the A image; otherwise the one image
    second TEXT REFERENCES images(name),           -- preference: the B image
    truth TEXT,                                    -- real-or-synthetic: real|synthetic; label: the class
    source TEXT,                                   -- real-or-synthetic, label: real|synthetic
    class TEXT);
CREATE TABLE readers (name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE);
CREATE TABLE assignments (
    key TEXT PRIMARY KEY,                          -- random; what the reader's browser calls the item
    reader TEXT NOT NULL REFERENCES readers(name),
    item INTEGER NOT NULL REFERENCES items(id),
    position INTEGER NOT NULL,                     -- 1..N, this reader's order
    a_on_left INTEGER,                             -- preference: 1 if A is shown on the left
    UNIQUE (reader, item), UNIQUE (reader, position));
CREATE TABLE answers (
    reader TEXT NOT NULL, item INTEGER NOT NULL,
    answer TEXT NOT NULL, time_ms INTEGER NOT NULL, answered_at TEXT NOT NULL,
    PRIMARY KEY (reader, item));                   -- answered once: a second answer is ignored
"""


def connect(folder) -> sqlite3.Connection:
    """Open STUDY/study.sqlite (it must exist; `create_database` makes it)."""
    path = Path(folder) / DATABASE
    if not path.is_file():
        raise FileNotFoundError(path)
    return _open(path)


def _open(path: Path) -> sqlite3.Connection:
    # check_same_thread off: the web layer may answer from a worker thread; every use is one short statement
    db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def create_database(folder) -> sqlite3.Connection:
    db = _open(Path(folder) / DATABASE)
    db.executescript(SCHEMA)
    return db


def set_meta(db: sqlite3.Connection, **values) -> None:
    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])


def meta(db: sqlite3.Connection) -> dict:
    return {row["key"]: json.loads(row["value"]) for row in db.execute("SELECT key, value FROM meta")}


def answer_count(folder) -> int | None:
    """How many answers the study at `folder` holds: 0 when it has no database, None when its database cannot
    be read (then nobody can tell whether answers would be lost)."""
    path = Path(folder) / DATABASE
    if not path.exists():
        return 0
    try:
        db = _open(path)
        try:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return None


def progress(db: sqlite3.Connection) -> dict:
    """{reader: (answered, total)} in the readers' order."""
    return {r["name"]: (r["answered"], r["total"]) for r in db.execute(
        "SELECT name, (SELECT COUNT(*) FROM answers x WHERE x.reader = name) AS answered, "
        "(SELECT COUNT(*) FROM assignments a WHERE a.reader = name) AS total FROM readers ORDER BY rowid")}
