"""What the audit compares: each learned token with its members (training images) and held-out images, checked
before a model is loaded so that bad input fails at once.

One embedding: --members and --held-out are folders of images. Several (a folder of embedding files, or one file
holding several tokens): --members holds one subfolder per token, named as train.py --concepts names them
(`effusion/` trains `<effusion>`, or `<P-effusion>` with --token-prefix P); --held-out is either flat (shared by
every token) or has the same subfolders.
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mini_ldm.embeddings import load_embeddings
from mini_ldm.errors import UserError
from mini_ldm.prompt_text import match_key
from readers.images import DataError, find_images, load_frames, warn_stderr


@dataclass
class Audit:
    """One token's audit: its embedding and its two sets of images."""
    token: str
    embedding: object  # mini_ldm.embeddings.Embedding
    members_root: Path
    members: list
    held_out_root: Path
    held_out: list


def _images(folder: Path, flag: str) -> list:
    try:
        return find_images(folder, warn=lambda message: None)
    except DataError as e:
        raise UserError(f"{flag}: {e}") from None


def _subfolders(root: Path) -> list:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_token(folder_name: str, tokens: list) -> str | None:
    """The token trained from a concept folder: <name>, or <P-name> (train.py --token-prefix P); prompts match
    tokens case-blind, and so does this."""
    word = "_".join(folder_name.split())
    exact = [t for t in tokens if match_key(t) == match_key(f"<{word}>")]
    prefixed = [t for t in tokens if match_key(t).endswith(match_key(f"-{word}>"))]
    found = exact or prefixed
    return found[0] if len(found) == 1 else None


def plan(embeddings: Path, members: Path, held_out: Path) -> list[Audit]:
    """The audits, one per token, with their image lists; every check that needs no model."""
    for flag, folder in (("--members", members), ("--held-out", held_out)):
        if not folder.is_dir():
            raise UserError(f"{flag} {folder}: does not exist or is not a folder; give the folder of images")
    found = load_embeddings([embeddings])
    if not found:
        raise UserError(f"--embeddings {embeddings}: holds no embedding file (.safetensors, .pt or .bin)")
    if len(found) == 1:
        token, emb = next(iter(found.items()))
        audits = [Audit(token, emb, members, _images(members, "--members"), held_out, _images(held_out, "--held-out"))]
    else:
        audits = _several(found, embeddings, members, held_out)
    for a in audits:
        for flag, images in (("--members", a.members), ("--held-out", a.held_out)):
            if len(images) < 2:
                raise UserError(f"{flag}: {a.token} has {len(images)} image; the audit needs at least 2 members and "
                                "2 held-out images (about 100 each to say anything)")
        check_disjoint(a)
    return audits


def _several(found: dict, embeddings: Path, members: Path, held_out: Path, warn=warn_stderr) -> list[Audit]:
    tokens = list(found)
    subfolders = _subfolders(members)
    if not subfolders:
        raise UserError(f"--embeddings {embeddings} holds {len(tokens)} tokens ({', '.join(tokens)}): give --members "
                        "one subfolder per token, as train.py --concepts reads them")
    shared = not _subfolders(held_out)
    audits = []
    for sub in subfolders:
        token = folder_token(sub.name, tokens)
        if token is None:
            raise UserError(f"--members {sub}: no token for this folder in {embeddings} (tokens: {', '.join(tokens)}); "
                            f"name the folder after its token, e.g. {tokens[0].strip('<>')}/")
        own = held_out if shared else held_out / sub.name
        if not own.is_dir():
            raise UserError(f"--held-out {held_out}: no subfolder {sub.name}/ for {token}; give one per token, or a "
                            "flat folder shared by all")
        audits.append(Audit(token, found[token], sub, _images(sub, "--members"), own, _images(own, "--held-out")))
    for token in sorted(set(tokens) - {a.token for a in audits}):
        warn(f"warning: {token} has no subfolder in --members {members}; it is not audited")
    return audits


def pixel_hash(path: Path) -> str | None:
    """A hash of the decoded pixels of every frame (None if unreadable: it is skipped later with a warning)."""
    try:
        frames = load_frames(path)
    except DataError:
        return None
    h = hashlib.sha256()
    for im in frames:
        h.update(f"{im.size}".encode())
        h.update(np.asarray(im, dtype=np.uint8).tobytes())
    return h.hexdigest()


def check_disjoint(a: Audit) -> None:
    """A file in both sets, or two files with identical pixels, would be scored as member and non-member at once:
    the numbers would mean nothing, so refuse and name both files."""
    members = {p.resolve(): p for p in a.members}
    for p in a.held_out:
        if p.resolve() in members:
            raise UserError(f"--held-out {p} is also under --members: the two folders must not share images")
    hashes = {}
    for p in a.members:
        hashes.setdefault(pixel_hash(p), p)
    hashes.pop(None, None)  # unreadable files are no one's twin
    for p in a.held_out:
        twin = hashes.get(pixel_hash(p))
        if twin is not None:
            raise UserError(f"--held-out {p} has the same pixels as --members {twin}: a held-out image must be one "
                            "the embedding never saw; remove one of them")
