"""The files of a training run, beside its embedding `<name>.safetensors`:

    <name>.state        optimiser, loss scale, random state and validation record, for --resume (safetensors inside)
    <name>-loss.csv     step, concept, loss, val_loss, seconds: one row per concept per finished step, written as
                        it ends (step 0: the validation loss before training)
    <name>-loss.png     the loss plot, redrawn at each validation and at the end
    <name>.lock         the pid of the run writing these files, while it runs
    <name>-last.safetensors   with --early-stop: the last vectors (<name>.safetensors holds the best)

With --concepts, --output is a folder holding <name>.safetensors per concept and the run's own run.state,
loss.csv, loss.png and run.lock.

and the rules that keep them from being lost: a finished run is not overwritten without --overwrite,
two runs never write the same files at once, and a resumed log holds each step once.
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path

from mini_ldm.errors import UserError
from mini_ldm.io import pid_lock, write_text_atomic


LOSS_COLUMNS = ["step", "concept", "loss", "val_loss", "seconds"]


def state_path(output: Path) -> Path:
    """Not named *.safetensors: sample.py loads every .safetensors/.pt/.bin in an embeddings folder,
    and a state file there would be refused as "not an embedding"."""
    return output.with_name(output.stem + ".state")


def loss_csv_path(output: Path) -> Path:
    return output.with_name(output.stem + "-loss.csv")


def lock_path(output: Path) -> Path:
    return output.with_name(output.stem + ".lock")


def last_path(output: Path) -> Path:
    """With --early-stop the embedding file holds the best vectors and this one the last."""
    return output.with_name(output.stem + "-last.safetensors")


@dataclass(frozen=True)
class RunFiles:
    """Where one run's own files go: beside its embedding, or in its --concepts folder."""
    state: Path
    loss_csv: Path
    plot: Path
    lock: Path

    @classmethod
    def of(cls, output, concepts: bool = False) -> "RunFiles":
        output = Path(output)
        if concepts:
            return cls(output / "run.state", output / "loss.csv", output / "loss.png", output / "run.lock")
        return cls(state_path(output), loss_csv_path(output), output.with_name(output.stem + "-loss.png"),
                   lock_path(output))


def check_resumable(path: Path, concepts: bool = False):
    """--resume needs the state file that every save writes beside the embedding (or in the --concepts folder)."""
    state = RunFiles.of(path, concepts).state
    if not state.is_file():
        raise UserError(f"--resume {path}: no {state.name} beside it (it is written with every save of a "
                        "training run), so there is no step count or optimiser state to continue from; "
                        "start a new run without --resume")


def check_fresh_output(output: Path, concepts: bool = False, embeddings=()):
    """A new run must not silently replace an earlier one's embedding, state and log (with --concepts: its
    state file or any of the given embedding files)."""
    first = list(embeddings) if concepts else [output]
    for existing in (*first, RunFiles.of(output, concepts).state):
        if existing.exists():
            raise UserError(f"--output {output}: {existing.name} is already there from an earlier run; continue "
                            "that run with --resume, replace it with --overwrite, or choose another --output")


def output_lock(output: Path, concepts: bool = False):
    """Hold `<name>.lock` (holding our pid) while a run writes its files; a second run on the same output
    stops at once. A lock whose process is gone (kill -9, a power cut) is stale and taken over."""
    return pid_lock(RunFiles.of(output, concepts).lock, output, "training run")


def trim_loss_log(path: Path, step: int):
    """Keep the header and the rows of steps 0..step: a run killed after its last save logged steps that a
    resume will run again, and each step must appear once. A log of the older step,loss,seconds layout is
    rewritten in the current one (its concept and val_loss cells empty)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    old_layout = bool(rows) and rows[0] == ["step", "loss", "seconds"]
    body = [[r[0], "", r[1], "", r[2]] if old_layout and len(r) == 3 else r for r in rows[1:]]
    kept = [row for row in body if row and row[0].isdigit() and int(row[0]) <= step]
    if len(kept) == len(body) and not old_layout:
        return
    text = io.StringIO()
    csv.writer(text).writerows([LOSS_COLUMNS, *kept])
    write_text_atomic(path, text.getvalue())
