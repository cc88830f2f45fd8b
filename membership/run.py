"""One token's audit, start to end: its prompts, its images encoded, both losses on the shared draws."""
from pathlib import Path

import numpy as np

from mini_ldm.embeddings import check_width
from mini_ldm.errors import UserError
from readers.images import warn_stderr
from ti.templates import load_templates

from .inputs import Audit
from .loss import encode_images, image_losses, shared_draws
from .report import Scores


def templates_of(audit: Audit, given: str | None) -> tuple[str, list]:
    """--templates, else the template the file records (a future trainer may record it), else train.py's
    default, the bare token."""
    name = given or audit.embedding.metadata.get("template") or "name"
    return name, load_templates(name)


def reference_text(audit: Audit, choice: str | None) -> tuple[str, str]:
    """(which, text): the file's init text (the words the vectors started from), or "" (the token removed)."""
    init = audit.embedding.metadata.get("init_text", "").strip()
    choice = choice or ("init" if init else "empty")
    if choice == "init" and not init:
        raise UserError(f"--reference init: {audit.embedding.source} records no init text; use --reference empty")
    return choice, init if choice == "init" else ""


def add_token(sd, audit: Audit, warn=warn_stderr) -> None:
    """The token's vectors into the model's prompts; an embedding of another model family is refused here, one
    trained on another checkpoint of the family is audited with a warning (its losses say little)."""
    check_width(audit.embedding, sd.widths, sd.family)
    trained_on = audit.embedding.metadata.get("base_model", "")
    if trained_on and trained_on != Path(sd.checkpoint.path).name:
        warn(f"warning: {audit.embedding.source} was trained on {trained_on}, not on {Path(sd.checkpoint.path).name}: "
             "audit it on the model it was trained on, or the losses say little")
    sd.add_learned_token(audit.token, audit.embedding.vectors)


def score(sd, audit: Audit, templates: list, reference: str, draws_spec: tuple, resolution: int, batch: int,
          bar) -> Scores:
    """The token's and the reference's losses of every member and held-out image on the shared draws;
    draws_spec = (timesteps, draws per timestep, seed)."""
    sets = [encode_images(sd, root, paths, resolution, batch, progress=False)
            for root, paths in ((audit.members_root, audit.members), (audit.held_out_root, audit.held_out))]
    timesteps, per, seed = draws_spec
    draws = shared_draws(timesteps, per, tuple(sets[0].mean.shape[1:]), seed)
    loss, ref, names, member = [], [], [], []
    for is_member, (cache, root) in zip((True, False), zip(sets, (audit.members_root, audit.held_out_root))):
        loss.append(image_losses(sd, cache, draws, templates, audit.token, batch, bar).numpy())
        ref.append(image_losses(sd, cache, draws, templates, reference, batch, bar).numpy())
        names += [_relative(name, root) for name in cache.names]
        member += [is_member] * len(cache)
    return Scores(audit.token, names, np.array(member), np.concatenate(loss), np.concatenate(ref), list(timesteps))


def _relative(name: str, root) -> str:
    try:
        return Path(name).relative_to(root).as_posix()
    except ValueError:
        return name
