"""One reader's side of a study, for the web layer and for tests: who a token belongs to, which item they see
next, the images they may fetch, and storing an answer exactly once."""
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import database
from .tasks import question

MAX_TIME_MS = 24 * 3600 * 1000  # a reading time beyond a day is not a reading time


class Refused(Exception):
    """A request the study refuses; `status` is the HTTP status the web layer answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Reader:
    name: str
    token: str


class Study:
    """An open study folder. Every method is one or two short statements on the database."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.db = database.connect(self.folder)
        self.meta = database.meta(self.db)
        self.question = question(self.meta["task"], tuple(self.meta["classes"]))

    def close(self) -> None:
        self.db.close()

    def reader(self, token: str) -> Reader:
        row = self.db.execute("SELECT name, token FROM readers WHERE token = ?", (token,)).fetchone()
        if row is None:
            raise Refused(404, "not found")
        return Reader(row["name"], row["token"])

    def readers(self) -> list:
        return [Reader(r["name"], r["token"]) for r in self.db.execute("SELECT name, token FROM readers ORDER BY rowid")]

    def state(self, reader: Reader) -> dict:
        """What the reader's page shows now: their first unanswered item in their order (or that they are done),
        the question, the answers and their keys. Nothing in it names a file, a set or a class."""
        answered, total = database.progress(self.db)[reader.name]
        row = self.db.execute(
            "SELECT a.key, a.position FROM assignments a LEFT JOIN answers x ON x.reader = a.reader AND x.item = a.item "
            "WHERE a.reader = ? AND x.item IS NULL ORDER BY a.position LIMIT 1", (reader.name,)).fetchone()
        state = {"answered": answered, "total": total, "done": row is None, "question": self.question.text,
                 "choices": list(self.question.choices), "keys": [list(k) for k in self.question.keys]}
        if row is not None:
            state["item"] = {"key": row["key"], "position": row["position"],
                             "images": [f"/r/{reader.token}/image/{row['key']}/{slot}"
                                        for slot in range(self.question.images)]}
        return state

    def _assignment(self, reader: Reader, key: str):
        row = self.db.execute("SELECT * FROM assignments WHERE key = ? AND reader = ?", (key, reader.name)).fetchone()
        if row is None:  # unknown, or another reader's: the same answer, so a reader learns nothing by probing
            raise Refused(404, "not found")
        return row

    def image_path(self, reader: Reader, key: str, slot: int) -> Path:
        """The blinded file behind image `slot` (0 = left/only, 1 = right) of the reader's item `key`."""
        assignment = self._assignment(reader, key)
        if slot not in range(self.question.images):
            raise Refused(404, "not found")
        item = self.db.execute("SELECT first, second FROM items WHERE id = ?", (assignment["item"],)).fetchone()
        a_first = assignment["a_on_left"] in (None, 1)
        name = item["first"] if (slot == 0) == a_first else item["second"]
        return self.folder / database.IMAGES / f"{name}.png"

    def answer(self, reader: Reader, key: str, answer, time_ms) -> bool:
        """Store the reader's answer to item `key`, committed before this returns. An item answered already keeps
        its first answer (a double click, a second tab, a request resent after a restart): returns False then.
        Refused: an unknown or another reader's item, an answer the question does not offer, a bad time."""
        assignment = self._assignment(reader, key)
        if not isinstance(answer, str) or answer not in self.question.choices:
            raise Refused(400, "not an answer to this question")
        if isinstance(time_ms, bool) or not isinstance(time_ms, (int, float)) or not 0 <= time_ms <= MAX_TIME_MS:
            raise Refused(400, "time_ms must be a number of milliseconds")
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        cursor = self.db.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?)",
                                 (reader.name, assignment["item"], answer, int(round(time_ms)), stamp))
        return cursor.rowcount == 1

