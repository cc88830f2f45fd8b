"""Saving and resuming a training run: the resume state on disk (one safetensors file), the embedding files
written with it, and the checks a resume makes.

    <name>.state / run.state   the step, the generator's state, per concept its current vectors, AdamW's moments
                               and best vectors, the loss scale, the validation record, the settings (a resume
                               must share them) and the model the vectors were trained on (its hash, --vae's
                               hash and the prediction type: a resume must share those too)

The file holds everything a resume needs, the vectors included, and is written atomically (whole or not at
all): a save cut short at any byte (a full disk, a crash) leaves this file at the previous save, and the run
resumes from there, whatever happened to the embedding files written before it. `save_run` and `resume_run`
read and set the trainer's state (trainer.py); the rest of this module writes, reads and checks the file.
"""
import ast
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from mini_ldm import hashes
from mini_ldm.embeddings import Embedding, intermediate_path, read_embedding, write_embedding
from mini_ldm.errors import UserError, first_line
from mini_ldm.io import safetensors_bytes, write_bytes_atomic

from .early_stop import ValidationRecord, dump_records, load_records
from .run_files import check_resumable, last_path, state_path, trim_loss_log

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


# --- the model a run trains against -----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRecord:
    """What the vectors were trained against. Another checkpoint of the same shapes (an SDXL fine-tune against
    its base) loads and trains without a complaint, so a resume checks these, not only the shapes."""
    model: str         # the checkpoint's file or folder name, for messages
    model_hash: str    # hashes.model_hash: what A1111 and our dataset manifests call the model
    vae: str           # --vae's name, "" for the checkpoint's own VAE
    vae_hash: str
    prediction: str    # "epsilon" or "v": the loss's target

    @classmethod
    def of(cls, sd, vae=None) -> "ModelRecord":
        """The record of a loaded model (hashes are cached by path, size and time: a big file is read once)."""
        path = Path(sd.checkpoint.path)
        vae_name, vae_hash = ("", "") if vae is None else (Path(vae).name, hashes.model_hash(vae))
        return cls(path.name, hashes.model_hash(path), vae_name, vae_hash, sd.prediction)


def check_same_model(path: Path, meta: dict, current: ModelRecord):
    """Refuse to continue a run on another model, VAE or prediction type than it was saved with (a state
    written before the model was recorded is not checked)."""
    try:
        saved = ModelRecord(**ast.literal_eval(meta["model"]))
    except (KeyError, ValueError, SyntaxError, TypeError):
        return
    advice = "resume with the run's own --model, --vae and --prediction, or start a new run"
    if saved.model_hash != current.model_hash:
        raise UserError(f"--resume {path}: the saved run was trained on {saved.model} (hash {saved.model_hash}), "
                        f"this --model {current.model} has hash {current.model_hash}; {advice}")
    if saved.vae_hash != current.vae_hash:
        def named(r):
            return f"--vae {r.vae} (hash {r.vae_hash})" if r.vae else "the checkpoint's own VAE"
        raise UserError(f"--resume {path}: the saved run was trained with {named(saved)}, this run with "
                        f"{named(current)}; {advice}")
    if saved.prediction != current.prediction:
        raise UserError(f"--resume {path}: the saved run was trained with --prediction {saved.prediction}, this "
                        f"run's model predicts {current.prediction}; {advice}")


# --- saving -------------------------------------------------------------------------------------------

def save_run(trainer, snapshot_step: int | None = None):
    """Every concept's embedding (with --early-stop also its best), then the resume state, each file atomic.
    The state holds the vectors too, so a save cut short anywhere resumes from the previous state; a first
    save writes the state first, so that even it leaves either nothing or a resumable run. A snapshot
    (`<name>-<step>.safetensors`) of a one-token run gets a state of its own."""
    t, settings = trainer, trainer.settings
    state = None
    if snapshot_step is None or not settings.concepts:
        one = t.concepts[0].output  # a one-token run: the state sits beside its (snapshot) file
        state = t.files.state if settings.concepts else state_path(
            one if snapshot_step is None else intermediate_path(one, snapshot_step))
    # this run's first save to that state file (a new file, or an earlier run's that --overwrite replaces)
    first_save = state is not None and (not state.exists() or not (t.resumed or state in t.saved_states))
    if first_save:
        write_state(state, _state_tensors(t), _state_meta(t))
    for i, c in enumerate(t.concepts):
        base = c.output if snapshot_step is None else intermediate_path(c.output, snapshot_step)
        write_embedding(current_file(settings, c, base), Embedding(c.token, t.params[i].detach(), None,
                                                                   embedding_metadata(t, i, t.step), t.sd.widths))
        if settings.early_stop and snapshot_step is None and c.token in t.best:
            best_step = t.records[c.token].best_step
            write_embedding(c.output, Embedding(c.token, t.best[c.token], None, embedding_metadata(t, i, best_step),
                                                t.sd.widths))
    if state is not None and not first_save:
        write_state(state, _state_tensors(t), _state_meta(t))
    if state is not None:
        t.saved_states.add(state)


def current_file(settings, c, base: Path) -> Path:
    """Where the current vectors of concept `c` go when saved at `base` (its output or a snapshot of it)."""
    return last_path(base) if settings.early_stop and base == c.output else base


def _key(settings, c, what: str) -> str:
    return f"{c.name}/{what}" if settings.concepts else what


def embedding_metadata(trainer, i: int, step: int) -> dict:
    """Concept i's embedding file's metadata at `step` (strings; the writer orders the keys)."""
    s, c = trainer.settings, trainer.concepts[i]
    meta = {"token": c.token, "vectors": s.vectors, "step": step, "family": trainer.sd.family,
            "base_model": s.base_model, "init_text": c.init_text or "", "lr": s.lr}
    if s.validation:
        record = trainer.records[c.token]
        meta |= {"val_images": json.dumps(c.val_names()), "val_loss": "" if record.best is None else record.best,
                 "best_step": "" if record.best_step is None else record.best_step,
                 "last_step": trainer.step, "stop_reason": _stop_reason(trainer, record)}
    return {k: str(v) for k, v in meta.items()}


def _stop_reason(trainer, record: ValidationRecord) -> str:
    if record.stopped:
        return record.stop_reason(trainer.settings.early_stop)
    if not trainer.active:
        return "every concept stopped early"
    return f"reached --steps {trainer.settings.steps}" if trainer.step >= trainer.settings.steps else ""


def _state_tensors(t) -> dict:
    tensors = {"rng_state": t.rng_state, "step": torch.tensor(t.step)}
    for c, p in zip(t.concepts, t.params):
        tensors[_key(t.settings, c, "vectors")] = p.detach().float().cpu()
        adam = t.optimizer.state.get(p, {})
        if adam:
            tensors |= {_key(t.settings, c, "exp_avg"): adam["exp_avg"].cpu(),
                        _key(t.settings, c, "exp_avg_sq"): adam["exp_avg_sq"].cpu(),
                        _key(t.settings, c, "adam_step"): torch.as_tensor(adam["step"]).float().reshape(())}
        if c.token in t.best:
            tensors[_key(t.settings, c, "best")] = t.best[c.token]
    if t.scaler.is_enabled():  # the scale and its growth counter: both decide the next steps
        scaler = t.scaler.state_dict()
        tensors["loss_scale"] = torch.tensor(scaler["scale"], dtype=torch.float32)
        tensors["growth_tracker"] = torch.tensor(scaler["_growth_tracker"], dtype=torch.int64)
    return tensors


def settings_text(settings) -> dict:
    """The settings as the state file keeps them (every value a string), to refuse resuming another run."""
    return {k: str(v) for k, v in asdict(settings).items()}


def _state_meta(t) -> dict:
    return {"settings": repr(settings_text(t.settings)), "records": dump_records(t.records),
            "validated_step": str(t.validated_step), "model": repr(asdict(t.model))}


# --- resuming -----------------------------------------------------------------------------------------

def resume_run(trainer, path: Path):
    """Continue from a saved run: the state file (a one-token run: beside `path`, which may be a snapshot;
    with --concepts: in the folder `path`) holds everything; refuses a run saved with other settings or on
    another model."""
    t, concepts_run = trainer, trainer.settings.concepts
    check_resumable(path, concepts_run)
    state = t.files.state if concepts_run else state_path(Path(path))
    saved, meta = read_state(path, state)
    check_same_run(path, meta, settings_text(t.settings))
    check_same_model(path, meta, t.model)
    step = int(saved["step"])
    for i, c in enumerate(t.concepts):
        vectors = _saved_vectors(t, path, c, c.output if concepts_run else Path(path), saved, step)
        _restore_concept(t, i, vectors, saved)
    t.step = step
    t.generator.set_state(saved["rng_state"])
    t.rng_state = saved["rng_state"]
    if "records" in meta:
        t.records = {**t.records, **load_records(meta["records"])}
        t.validated_step = int(meta.get("validated_step", -1))
    if "loss_scale" in saved and t.scaler.is_enabled():
        # load_state_dict, not update(): update() before the first scale() fails (the scale is made lazily)
        t.scaler.load_state_dict({**t.scaler.state_dict(), "scale": float(saved["loss_scale"]),
                                  "_growth_tracker": int(saved.get("growth_tracker", torch.tensor(0)))})
    trim_loss_log(t.files.loss_csv, t.step)  # steps logged after the save run again
    t.resumed = True


def _saved_vectors(t, path: Path, c, base: Path, saved: dict, step: int) -> torch.Tensor:
    """Concept c's vectors at the state's step: from the state (an older state without them: from the
    embedding file, which must then be at that very step)."""
    file, in_state = current_file(t.settings, c, base), _key(t.settings, c, "vectors") in saved
    embedding = None
    if file.is_file() or not in_state:
        try:
            embedding = read_embedding(file)
        except UserError as e:  # an EmbeddingError names the file
            if not in_state:
                raise UserError(f"--resume {path}: cannot read the saved run ({first_line(e)})") from None
    if embedding is not None:
        check_embedding_step(path, file, embedding.metadata.get("step", ""), step, t.settings.concepts,
                             ahead_ok=in_state)
    vectors = saved[_key(t.settings, c, "vectors")] if in_state else embedding.vectors
    check_vectors_shape(path, vectors, t.settings.vectors, t.sd.width)
    return vectors


def _restore_concept(t, i: int, vectors: torch.Tensor, saved: dict):
    c, p = t.concepts[i], t.params[i]
    mine = {what: saved.get(_key(t.settings, c, what)) for what in ("exp_avg", "exp_avg_sq", "adam_step", "best")}
    with torch.no_grad():
        p.copy_(vectors.to(p.device))
    if mine["exp_avg"] is not None:
        t.optimizer.state[p] = {"step": mine["adam_step"].clone(), "exp_avg": mine["exp_avg"].to(p.device),
                                "exp_avg_sq": mine["exp_avg_sq"].to(p.device)}
    if mine["best"] is not None:
        t.best[c.token] = mine["best"].clone()
