"""Every answer of a study as one flat row: who read which item in which order, what they answered, and the
truth behind it (read only by `report`, never by the reader's side)."""
from dataclasses import dataclass

from . import database
from .tasks import PREFERENCE, REAL_OR_SYNTHETIC, score

COLUMNS = ("reader", "item", "order", "left", "answer", "chosen", "score", "truth", "source", "class",
           "time_ms", "timestamp")

QUERY = """
SELECT x.reader, x.item, a.position, a.a_on_left, x.answer, x.time_ms, x.answered_at,
       i.truth, i.source, i.class
FROM answers x JOIN assignments a ON a.reader = x.reader AND a.item = x.item JOIN items i ON i.id = x.item
ORDER BY (SELECT rowid FROM readers r WHERE r.name = x.reader), a.position
"""


@dataclass(frozen=True)
class Reading:
    reader: str
    item: int
    order: int
    left: str        # preference: the set shown on the left (A's or B's name)
    answer: str      # the button's label
    chosen: str      # preference: the set whose image was chosen
    score: int | None  # real-or-synthetic: 1..6, 6 = certainly synthetic
    truth: str
    source: str
    label_class: str
    time_ms: int
    timestamp: str

    def row(self) -> list:
        values = [getattr(self, "label_class" if c == "class" else c) for c in COLUMNS]
        return ["" if v is None else v for v in values]


def load_readings(db) -> list:
    meta = database.meta(db)
    names = meta["names"]
    readings = []
    for r in db.execute(QUERY):
        left = chosen = ""
        if meta["task"] == PREFERENCE:
            left = names["a"] if r["a_on_left"] else names["b"]
            a_chosen = (r["answer"] == "Left") == bool(r["a_on_left"])
            chosen = names["a"] if a_chosen else names["b"]
        readings.append(Reading(
            reader=r["reader"], item=r["item"], order=r["position"], left=left, answer=r["answer"], chosen=chosen,
            score=score(r["answer"]) if meta["task"] == REAL_OR_SYNTHETIC else None,
            truth=r["truth"] or "", source=r["source"] or "", label_class=r["class"] or "",
            time_ms=r["time_ms"], timestamp=r["answered_at"]))
    return readings

