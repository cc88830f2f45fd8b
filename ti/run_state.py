"""The resume state of a training run on disk: one safetensors file, and the checks a resume makes.

    <name>.state / run.state   the step, the generator's state, per concept its current vectors, AdamW's moments
                               and best vectors, the loss scale, the validation record, and the settings (a
                               resume must share them)

The file holds everything a resume needs, the vectors included, and is written atomically (whole or not at
all): a save cut short at any byte (a full disk, a crash) leaves this file at the previous save, and the run
resumes from there, whatever happened to the embedding files written before it. The trainer (trainer.py)
decides what goes in and what to do with it; this module only writes, reads and checks the file.
"""
import ast
from pathlib import Path

import torch
from safetensors import safe_open

from mini_ldm.errors import UserError
from mini_ldm.io import first_line, safetensors_bytes, write_bytes_atomic

# Settings a resume must share with the saved run (the others, e.g. --steps or --save-every, may change).
RESUME_MUST_MATCH = ("token", "vectors", "init_text", "lr", "batch", "grad_accum", "resolution", "crop", "flip",
                     "template", "seed", "dtype", "concepts", "token_prefix", "val_images", "val_every",
                     "val_timesteps", "early_stop", "early_stop_delta")


def write_state(path: Path, tensors: dict, meta: dict):
    """Atomically: the old file or the whole new one, never a mix."""
    write_bytes_atomic(path, safetensors_bytes(tensors, {k: str(v) for k, v in meta.items()}))


def read_state(path: Path, state: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a state file; a damaged one is a one-line error naming the run `path`."""
    try:
        with safe_open(str(state), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # safetensors' own error for a damaged state file
        raise UserError(f"--resume {path}: cannot read the saved run ({first_line(e)})") from None


def check_same_run(path: Path, meta: dict, current: dict):
    """A resume continues the saved run only if everything that shapes its draws and updates is the same;
    a changed --seed, --lr, --batch, ... would silently make another run (only --steps and the saving and
    preview options may change). `current`: this run's settings as strings."""
    try:
        saved = ast.literal_eval(meta.get("settings", "{}"))
    except (ValueError, SyntaxError):
        saved = {}
    for name in RESUME_MUST_MATCH:
        if name in saved and saved[name] != current[name]:
            flag = "--" + ("init" if name == "init_text" else name.replace("_", "-"))
            raise UserError(f"--resume {path}: {flag} {current[name]} differs from the saved run's "
                            f"{saved[name]}; resume with the run's own settings, or start a new run")


def check_vectors_shape(path: Path, vectors: torch.Tensor, count: int, width: int):
    if tuple(vectors.shape) != (count, width):
        raise UserError(f"--resume {path}: it holds {vectors.shape[0]}x{vectors.shape[-1]} vectors, but this run "
                        f"has --vectors {count} on a {width}-wide model")


def check_embedding_step(path: Path, file: Path, embedding_step: str, state_step: int, concepts_run: bool,
                         ahead_ok: bool = True):
    """The embedding file may be AHEAD of a state that holds the vectors (a save cut short after it, before the
    state: the run resumes from the state, the older consistent pair), never behind it: then something else
    replaced it. A state from before the vectors were in it (`ahead_ok` False) needs the file at its step."""
    behind_or_ahead = embedding_step.isdigit() and (int(embedding_step) < state_step or
                                                    (not ahead_ok and int(embedding_step) != state_step))
    if behind_or_ahead:
        raise UserError(f"--resume {path}: {file.name} is at step {embedding_step} but the state at step "
                        f"{state_step}; " + ("resume from one of the <name>-<step>.safetensors snapshots "
                        "instead" if not concepts_run else "the run cannot be resumed exactly; start it again"))
