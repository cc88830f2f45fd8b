"""Early stopping: one concept's validation history and when to stop it.

A new best is lower than the best so far by more than `delta` of it (relative: 0.001 = 0.1%); after
`patience` validations without one, the concept stops (its vectors freeze, its images leave the batch).
The record is plain data, saved as JSON in the run's resume state; JSON writes floats with repr, so a
resumed run reads back exactly the numbers it saved.
"""
import json
from dataclasses import asdict, dataclass, field


@dataclass
class ValidationRecord:
    history: list = field(default_factory=list)  # [step, validation loss] pairs, in order
    best: float | None = None
    best_step: int | None = None
    since_best: int = 0  # validations since the best
    stopped_step: int | None = None  # the step at which early stopping froze the concept

    @property
    def stopped(self) -> bool:
        return self.stopped_step is not None

    def record(self, step: int, loss: float, patience: int = 0, delta: float = 0.0) -> bool:
        """Add one validation; True when it is a new best. patience 0: never stop."""
        self.history.append([step, loss])
        improved = self.best is None or loss < self.best * (1 - delta)
        if improved:
            self.best, self.best_step, self.since_best = loss, step, 0
        else:
            self.since_best += 1
        if patience and self.since_best >= patience:
            self.stopped_step = step
        return improved

    def stop_reason(self, patience: int) -> str:
        return (f"early stop at step {self.stopped_step}: no new best validation loss in {patience} validations "
                f"(best {self.best:.6f} at step {self.best_step})")


def dump_records(records: dict) -> str:
    """{token: ValidationRecord} -> JSON text for the resume state."""
    return json.dumps({token: asdict(r) for token, r in records.items()})


def load_records(text: str) -> dict:
    return {token: ValidationRecord(**fields) for token, fields in json.loads(text).items()}
