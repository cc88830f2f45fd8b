"""A training run on disk: saving every concept's embedding and the resume state, and resuming from them.

What is saved (atomically, each file whole or not at all):
  <name>.safetensors       the current vectors (with --early-stop: the best; the current go to <name>-last)
  <name>.state / run.state the step, the generator's state, AdamW's moments, the loss scale, the validation
                           record, the best vectors, and the settings (a resume must share them)
A resumed run continues exactly where the saved one stopped: the same draws in the same order, so it ends
bit for bit where an uninterrupted run would. These functions work on a Trainer (trainer.py), whose
`save` and `resume` call them.
"""
import ast
import json
from dataclasses import asdict
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open

from mini_ldm.errors import UserError
from mini_ldm.io import first_line, write_bytes_atomic

from .concepts import Concept
from .early_stop import ValidationRecord, dump_records, load_records
from mini_ldm.embeddings import Embedding, intermediate_path, read_embedding, write_embedding
from .run_files import check_resumable, last_path, state_path, trim_loss_log

# Settings a resume must share with the saved run (the others, e.g. --steps or --save-every, may change).
RESUME_MUST_MATCH = ("token", "vectors", "init_text", "lr", "batch", "grad_accum", "resolution", "crop", "flip",
                     "template", "seed", "dtype", "concepts", "token_prefix", "val_images", "val_every",
                     "val_timesteps", "early_stop", "early_stop_delta")


def _metadata(trainer, i: int, step: int) -> dict:
    s, c = trainer.settings, trainer.concepts[i]
    meta = {"token": c.token, "vectors": s.vectors, "step": step, "family": trainer.sd.family,
            "base_model": s.base_model, "init_text": c.init_text or "", "lr": s.lr}
    if s.validation:
        record = trainer.records[c.token]
        meta |= {"val_images": json.dumps(c.val_names()), "val_loss": "" if record.best is None else record.best,
                 "best_step": "" if record.best_step is None else record.best_step,
                 "last_step": trainer.step, "stop_reason": _stop_reason(trainer, record)}
    return meta


def _stop_reason(trainer, record: ValidationRecord) -> str:
    if record.stopped:
        return record.stop_reason(trainer.settings.early_stop)
    if not trainer.active:
        return "every concept stopped early"
    return f"reached --steps {trainer.settings.steps}" if trainer.step >= trainer.settings.steps else ""


def _current_file(trainer, c: Concept, base: Path) -> Path:
    """Where the current vectors of `c` go when saved at `base` (its output or a snapshot of it)."""
    return last_path(base) if trainer.settings.early_stop and base == c.output else base


def _state_key(trainer, c: Concept, what: str) -> str:
    return f"{c.name}/{what}" if trainer.settings.concepts else what


def save_run(trainer, snapshot_step: int | None = None):
    """Every concept's embedding (with --early-stop also its best), then the resume state; each file written
    atomically. A snapshot (`<name>-<step>.safetensors`) of a one-token run gets a state of its own."""
    for i, c in enumerate(trainer.concepts):
        base = c.output if snapshot_step is None else intermediate_path(c.output, snapshot_step)
        meta = {k: str(v) for k, v in _metadata(trainer, i, trainer.step).items()}
        write_embedding(_current_file(trainer, c, base), Embedding(c.token, trainer.params[i].detach(), None, meta))
        if trainer.settings.early_stop and snapshot_step is None and c.token in trainer.best:
            best_meta = {k: str(v) for k, v in _metadata(trainer, i, trainer.records[c.token].best_step).items()}
            write_embedding(c.output, Embedding(c.token, trainer.best[c.token], None, best_meta))
    if snapshot_step is None or not trainer.settings.concepts:
        one = trainer.concepts[0].output  # a one-token run: the state sits beside its (snapshot) file
        state = trainer.files.state if trainer.settings.concepts else state_path(
            one if snapshot_step is None else intermediate_path(one, snapshot_step))
        write_bytes_atomic(state, safetensors.torch.save(_state_tensors(trainer), metadata=_state_meta(trainer)))


def _state_tensors(trainer) -> dict:
    tensors = {"rng_state": trainer.rng_state, "step": torch.tensor(trainer.step)}
    for c, p in zip(trainer.concepts, trainer.params):
        adam = trainer.optimizer.state.get(p, {})
        if adam:
            tensors |= {_state_key(trainer, c, "exp_avg"): adam["exp_avg"].cpu(),
                        _state_key(trainer, c, "exp_avg_sq"): adam["exp_avg_sq"].cpu(),
                        _state_key(trainer, c, "adam_step"): torch.as_tensor(adam["step"]).float().reshape(())}
        if c.token in trainer.best:
            tensors[_state_key(trainer, c, "best")] = trainer.best[c.token]
    if trainer.scaler.is_enabled():  # the scale and its growth counter: both decide the next steps
        scaler = trainer.scaler.state_dict()
        tensors["loss_scale"] = torch.tensor(scaler["scale"], dtype=torch.float32)
        tensors["growth_tracker"] = torch.tensor(scaler["_growth_tracker"], dtype=torch.int64)
    return tensors


def _state_meta(trainer) -> dict:
    settings = {k: str(v) for k, v in asdict(trainer.settings).items()}
    return {"settings": repr(settings), "records": dump_records(trainer.records),
            "validated_step": str(trainer.validated_step)}


def resume_run(trainer, path: Path):
    """Continue from a saved run: its embeddings and the state file (a one-token run: beside `path`, which
    may be a snapshot; with --concepts: in the folder `path`)."""
    concepts_run = trainer.settings.concepts
    check_resumable(path, concepts_run)
    state = trainer.files.state if concepts_run else state_path(Path(path))
    saved, meta = _read_state(trainer, path, state)
    _check_same_run(trainer, path, meta)
    for i, c in enumerate(trainer.concepts):
        emb = _read_vectors(trainer, path, c, c.output if concepts_run else Path(path), saved, state)
        _restore_concept(trainer, i, emb, saved)
    trainer.step = int(saved["step"])
    trainer.generator.set_state(saved["rng_state"])
    trainer.rng_state = saved["rng_state"]
    if "records" in meta:
        trainer.records = {**trainer.records, **load_records(meta["records"])}
        trainer.validated_step = int(meta.get("validated_step", -1))
    if "loss_scale" in saved and trainer.scaler.is_enabled():
        # load_state_dict, not update(): update() before the first scale() fails (the scale is made lazily)
        trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": float(saved["loss_scale"]),
                                     "_growth_tracker": int(saved.get("growth_tracker", torch.tensor(0)))})
    trim_loss_log(trainer.files.loss_csv, trainer.step)  # steps logged after the save run again
    trainer.resumed = True


def _check_same_run(trainer, path: Path, meta: dict):
    """A resume continues the saved run only if everything that shapes its draws and updates is the same;
    a changed --seed, --lr, --batch, ... would silently make another run (only --steps and the saving and
    preview options may change)."""
    try:
        saved = ast.literal_eval(meta.get("settings", "{}"))
    except (ValueError, SyntaxError):
        saved = {}
    current = {k: str(v) for k, v in asdict(trainer.settings).items()}
    for name in RESUME_MUST_MATCH:
        if name in saved and saved[name] != current[name]:
            flag = "--" + ("init" if name == "init_text" else name.replace("_", "-"))
            raise UserError(f"--resume {path}: {flag} {current[name]} differs from the saved run's "
                            f"{saved[name]}; resume with the run's own settings, or start a new run")


def _restore_concept(trainer, i: int, emb: Embedding, saved: dict):
    c, p = trainer.concepts[i], trainer.params[i]
    with torch.no_grad():
        p.copy_(emb.vectors.to(p.device))
    if _state_key(trainer, c, "exp_avg") in saved:
        trainer.optimizer.state[p] = {"step": saved[_state_key(trainer, c, "adam_step")].clone(),
                                   "exp_avg": saved[_state_key(trainer, c, "exp_avg")].to(p.device),
                                   "exp_avg_sq": saved[_state_key(trainer, c, "exp_avg_sq")].to(p.device)}
    if _state_key(trainer, c, "best") in saved:
        trainer.best[c.token] = saved[_state_key(trainer, c, "best")].clone()


def _read_state(trainer, path: Path, state: Path):
    try:
        with safe_open(str(state), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # safetensors' own error for a damaged state file
        raise UserError(f"--resume {path}: cannot read the saved run ({first_line(e)})") from None


def _read_vectors(trainer, path: Path, c: Concept, base: Path, saved: dict, state: Path) -> Embedding:
    file = _current_file(trainer, c, base)
    try:
        emb = read_embedding(file)
    except UserError as e:  # an EmbeddingError names the file
        raise UserError(f"--resume {path}: cannot read the saved run ({first_line(e)})") from None
    if tuple(emb.vectors.shape) != (trainer.settings.vectors, trainer.sd.width):
        raise UserError(f"--resume {path}: it holds {emb.num_vectors}x{emb.width} vectors, but this run has "
                        f"--vectors {trainer.settings.vectors} on a {trainer.sd.width}-wide model")
    saved_step = emb.metadata.get("step", "")
    if saved_step.isdigit() and int(saved_step) != int(saved["step"]):  # a save cut short between the two
        raise UserError(f"--resume {path}: {file.name} is at step {saved_step} but {state.name} at step "
                        f"{int(saved['step'])}; " + ("resume from one of the <name>-<step>.safetensors "
                        "snapshots instead" if not trainer.settings.concepts else "the run cannot be resumed "
                        "exactly; start it again"))
    return emb
