"""Learned-token files: read ours, diffusers, AUTOMATIC1111, kohya and legacy embeddings; write ours or A1111.

One learned token is a float32 tensor [vectors, width]; width is 768 for SD1 and 1024 for SD2. On SDXL a token
has vectors in both text encoders, CLIP-L [n, 768] and bigG [n, 1280], held side by side as [n, 2048] with
`widths` = (768, 1280), and stored as SDXL files are everywhere (A1111, kohya, civitai): `clip_l` and `clip_g`.

Formats read, told apart by content rather than by extension:
  ours       .safetensors: one tensor keyed by the token, string metadata with format="mini-ldm-ti"
  diffusers  .safetensors or .bin: {token: tensor [n, w] or [w]}
  A1111      .pt: {'string_to_param': {'*': tensor}, 'name', 'step', ...}; token = file stem
  kohya      .safetensors: {'emb_params': tensor}; token = file stem
  SDXL       .safetensors: {'clip_l': [n, 768], 'clip_g': [n, 1280]} (A1111, kohya, civitai, ours); token =
             our metadata's token, else the file stem. diffusers reads it with two load_textual_inversion calls.
  legacy     a bare tensor saved with torch.save; token = file stem
Pickles are only ever opened with torch.load(weights_only=True), so a file cannot run code here.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open

from .errors import UserError, first_line
from .io import UnsafePickle, safetensors_bytes, torch_load, write_bytes_atomic

FORMAT = "mini-ldm-ti"  # the metadata "format" value that marks our own files
SUFFIXES = (".safetensors", ".pt", ".bin")  # what load_embeddings picks up from a folder
MAX_BYTES = 64 << 20  # embeddings are kilobytes; anything this big is a model checkpoint put in the wrong place
FAMILY_OF_WIDTH = {768: "sd1", 1024: "sd2"}
SDXL_KEYS = ("clip_l", "clip_g")  # the two encoders' tensors in an SDXL embedding file, in the model's order
A1111_STAR_ID = 265  # CLIP's id for "*": A1111 writes it as the placeholder in 'string_to_token'


class EmbeddingError(UserError):
    """A file that is not a usable embedding; the message is one line and names the file."""


@dataclass
class Embedding:
    """One learned token. Holds its own detached float32 cpu copy of the vectors, [num_vectors, width]."""

    token: str
    vectors: torch.Tensor
    source: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    widths: tuple = ()  # SDXL: (768, 1280), the encoders' parts of `vectors` side by side; () for one encoder

    def __post_init__(self):
        where = self.source or self.token
        t = self.vectors
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise EmbeddingError(f"{where}: embedding is {kind}, expected a floating point tensor")
        if t.ndim == 1:  # old diffusers and legacy files store a single vector as [width]
            t = t[None]
        if t.ndim != 2 or t.numel() == 0:
            raise EmbeddingError(f"{where}: embedding has shape {list(self.vectors.shape)}, expected [vectors, width]")
        # clone: never keep a view into a training parameter or into a bigger loaded tensor
        t = t.detach().to("cpu", torch.float32).clone()
        if not torch.isfinite(t).all():
            raise EmbeddingError(f"{where}: embedding contains NaN or infinite values")
        self.vectors = t
        self.source = Path(self.source) if self.source is not None else None
        self.metadata = {str(k): str(v) for k, v in self.metadata.items()}
        self.widths = tuple(int(w) for w in self.widths) if len(self.widths) > 1 else ()
        if self.widths and sum(self.widths) != t.shape[1]:
            raise EmbeddingError(f"{where}: embedding is {t.shape[1]} wide, not {' + '.join(map(str, self.widths))}")

    @property
    def num_vectors(self) -> int:
        return self.vectors.shape[0]

    @property
    def width(self) -> int:
        return self.vectors.shape[1]

    def shape_text(self) -> str:
        """"[8, 768]", or for SDXL "clip_l [8, 768] + clip_g [8, 1280]"."""
        if not self.widths:
            return f"[{self.num_vectors}, {self.width}]"
        return " + ".join(f"{name} [{self.num_vectors}, {w}]" for name, w in zip(SDXL_KEYS, self.widths))


# ---------------------------------------------------------------- reading


def read_embedding(path) -> Embedding:
    """Read one embedding file of any supported format."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise EmbeddingError(f"{path}: file is empty")
    if size > MAX_BYTES:
        raise EmbeddingError(f"{path}: {size / 2**20:.0f} MB is far too big for an embedding (is it a model checkpoint?)")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: u64 little-endian header length, then the JSON header; torch zip: "PK"; old torch.save: a pickle
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        data, meta = _read_safetensors(path)
    elif head[:2] == b"PK" or head[:1] == b"\x80":
        data, meta = _torch_load(path), {}
    else:
        raise EmbeddingError(f"{path}: not a safetensors or torch file")
    if isinstance(data, dict) and set(SDXL_KEYS) <= set(data):
        return _sdxl_embedding(path, data, meta)
    token, vectors, meta = _parse(path, data, meta)
    return Embedding(token, vectors, path, meta)


def _sdxl_embedding(path: Path, data: dict, meta: dict) -> Embedding:
    parts = [data[key] for key in SDXL_KEYS]
    if not all(isinstance(t, torch.Tensor) and t.ndim == 2 for t in parts) or parts[0].shape[0] != parts[1].shape[0]:
        shapes = ", ".join(f"{k} {list(getattr(t, 'shape', []))}" for k, t in zip(SDXL_KEYS, parts))
        raise EmbeddingError(f"{path}: SDXL embedding with {shapes}; expected [n, 768] and [n, 1280] with the same n")
    token = meta.get("token") if meta.get("format") == FORMAT else path.stem
    fmt = FORMAT if meta.get("format") == FORMAT else "sdxl"
    return Embedding(token or path.stem, torch.cat([t.float() for t in parts], dim=-1), path,
                     {**meta, "format": fmt, "family": "sdxl"}, tuple(t.shape[1] for t in parts))


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # SafetensorError, or a bad header that still parsed as JSON
        raise EmbeddingError(f"{path}: corrupt or truncated safetensors file ({first_line(e)})") from e


def _torch_load(path: Path):
    # The original textual_inversion repo (and early A1111) stored string_to_param as an nn.ParameterDict;
    # allowing that one class lets weights_only load it without allowing anything that runs code.
    try:
        return torch_load(path, allow=(torch.nn.ParameterDict,))
    except UnsafePickle as e:
        what = f" (it asks for {e.what})" if e.what else ""
        raise EmbeddingError(
            f"{path}: refused: the pickle holds code or objects other than tensors and plain data{what}; "
            "files are only opened with weights_only=True"
        ) from None
    except Exception as e:  # RuntimeError from a broken zip, EOFError / struct.error from a cut-off pickle
        raise EmbeddingError(f"{path}: corrupt or truncated torch file ({first_line(e)})") from None


def _parse(path: Path, data, meta: dict) -> tuple[str, torch.Tensor, dict]:
    """Pick (token, tensor, metadata) out of whatever the file held."""
    if isinstance(data, torch.Tensor):  # legacy: a bare tensor, named after the file
        return path.stem, data, {**meta, "format": "legacy"}
    if not isinstance(data, dict):
        raise EmbeddingError(f"{path}: holds a {type(data).__name__}, not a tensor or a dict of tensors")

    if "string_to_param" in data:  # A1111 (and the original textual_inversion repo)
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # nn.ParameterDict keeps its tensors here
        if not isinstance(params, dict) or len(params) != 1:
            n = len(params) if isinstance(params, dict) else type(params).__name__
            raise EmbeddingError(f"{path}: expected one tensor under 'string_to_param', found {n}")
        info = {k: v for k, v in data.items() if isinstance(v, (str, int, float)) and k != "string_to_token"}
        # A1111 names the prompt word after the file; 'name' inside is often stale (e.g. "pcam_pos-50000")
        return path.stem, next(iter(params.values())), {**meta, **info, "format": "a1111"}

    if "clip_l" in data or "clip_g" in data:
        raise EmbeddingError(f"{path}: half an SDXL embedding (only {' or '.join(k for k in SDXL_KEYS if k in data)}); "
                             "an SDXL token needs both clip_l and clip_g")
    if len(data) != 1:
        keys = ", ".join(repr(k) for k in list(data)[:4]) + (", ..." if len(data) > 4 else "")
        raise EmbeddingError(
            f"{path}: not an embedding: expected one tensor (diffusers), 'string_to_param' (A1111) "
            f"or 'emb_params' (kohya), found keys {keys}"
        )
    key, tensor = next(iter(data.items()))
    if key == "emb_params":  # kohya: a generic key, so the prompt word is the file name
        return path.stem, tensor, {**meta, "format": "kohya"}
    fmt = FORMAT if meta.get("format") == FORMAT else "diffusers"
    return str(key), tensor, {**meta, "format": fmt}


# ---------------------------------------------------------------- writing


def write_embedding(path, emb: Embedding, format: str = "ours") -> Path:
    """Write `emb` atomically as ours (.safetensors) or A1111 (.pt); returns the path."""
    path = Path(path)
    if not emb.token or any(c.isspace() for c in emb.token):
        raise EmbeddingError(f"{path}: token {emb.token!r} must be one word")
    if not torch.isfinite(emb.vectors).all():  # a NaN would poison every prompt that uses the token
        bad = int((~torch.isfinite(emb.vectors)).sum())
        raise EmbeddingError(f"{path}: not written: {bad} of the {emb.vectors.numel()} values of {emb.token} are "
                             "NaN or infinite (a diverged training run?); use an earlier snapshot")
    if emb.widths:  # SDXL: one layout for everyone (A1111, kohya, diffusers' two load_textual_inversion calls)
        if format not in ("ours", "a1111"):
            raise EmbeddingError(f"{path}: unknown format {format!r} (use 'ours' or 'a1111')")
        if path.suffix != ".safetensors":
            raise EmbeddingError(f"{path}: SDXL embeddings are written as .safetensors (clip_l, clip_g), as "
                                 "AUTOMATIC1111 and kohya store them")
        meta = {**emb.metadata, "token": emb.token, "vectors": str(emb.num_vectors),
                "width": ",".join(map(str, emb.widths)), "family": "sdxl", "format": FORMAT}
        parts = emb.vectors.split(list(emb.widths), dim=1)
        data = safetensors_bytes({k: v.contiguous() for k, v in zip(SDXL_KEYS, parts)}, meta)
    elif format == "ours":
        # every key present, empty when unknown; an A1111 source still names its base model
        meta = {"step": "", "base_model": emb.metadata.get("sd_checkpoint_name", ""), "init_text": "", "lr": ""}
        meta.update(emb.metadata)
        meta.update(
            token=emb.token,
            vectors=str(emb.num_vectors),
            width=str(emb.width),
            family=emb.metadata.get("family") or FAMILY_OF_WIDTH.get(emb.width, ""),
            format=FORMAT,
        )
        # one tensor keyed by the token is exactly what diffusers' load_textual_inversion expects
        data = safetensors_bytes({emb.token: emb.vectors.contiguous()}, meta)  # the same run: the same bytes
    elif format == "a1111":
        m = emb.metadata
        step = m.get("step", "")
        obj = {
            "string_to_token": {"*": A1111_STAR_ID},
            "string_to_param": {"*": emb.vectors.clone()},
            "name": emb.token,
            "step": int(step) if step.lstrip("-").isdigit() else None,  # None is A1111's own "unknown"
            "sd_checkpoint": m.get("sd_checkpoint") or None,
            "sd_checkpoint_name": m.get("sd_checkpoint_name") or m.get("base_model") or None,
        }
        data = _torch_bytes(obj)
    else:
        raise EmbeddingError(f"{path}: unknown format {format!r} (use 'ours' or 'a1111')")
    write_bytes_atomic(path, data)
    return path


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ---------------------------------------------------------------- registry and checks


def load_embeddings(paths: Iterable, skip_unreadable=None) -> dict[str, Embedding]:
    """Read files and folders (a folder: its .safetensors/.pt/.bin files, not recursive) into {token: Embedding}.

    A training run leaves snapshots (`<token>-<step>.safetensors`) beside its final file; within one
    folder a token defined by several files resolves to the final file, else to the latest snapshot.
    skip_unreadable: None to raise on a file that is not an embedding; else a function that is told
    about the file (one line) while the rest load.
    """
    if isinstance(paths, (str, os.PathLike)):  # one path, not an iterable of characters
        paths = [paths]
    found: dict[str, Embedding] = {}
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file())
        elif p.exists():
            files = [p]
        else:
            raise EmbeddingError(f"{p}: no such file or folder")
        in_folder: dict[str, Embedding] = {}
        for f in files:
            try:
                emb = read_embedding(f)
            except EmbeddingError as e:
                if skip_unreadable is None:
                    raise
                skip_unreadable(f"warning: skipping {f}: {e}")
                continue
            if emb.token in found:
                raise EmbeddingError(f"token {emb.token!r} is defined twice: in {found[emb.token].source} and in {f}")
            other = in_folder.get(emb.token)
            if other is not None and _snapshot_step(other) is None and _snapshot_step(emb) is None:
                raise EmbeddingError(f"token {emb.token!r} is defined twice: in {other.source} and in {f}")
            if other is None or _prefer(emb, other):
                in_folder[emb.token] = emb
        found.update(in_folder)
    return found


def _snapshot_step(emb: Embedding):
    """The step of a training snapshot (`<stem>-<step>` file name), None for a final file. An early-stopped
    run's `<stem>-last` (its last vectors, beside the best ones in `<stem>`) counts as the newest snapshot."""
    m = re.fullmatch(r".+-(\d+|last)", emb.source.stem) if emb.source else None
    if m is None:
        return None
    return float("inf") if m.group(1) == "last" else int(m.group(1))


def _prefer(new: Embedding, old: Embedding) -> bool:
    new_step, old_step = _snapshot_step(new), _snapshot_step(old)
    if new_step is None or old_step is None:
        return new_step is None  # a final file beats any snapshot
    return new_step > old_step


def check_width(emb: Embedding, widths, family: str) -> None:
    """Raise if `emb` cannot be used with text encoders of these widths (family: 'sd1', 'sd2' or 'sdxl'):
    an int or (768,) for one encoder, (768, 1280) for SDXL's two."""
    widths = (widths,) if isinstance(widths, int) else tuple(widths)
    if (emb.widths or (emb.width,)) == widths:
        return
    if emb.widths or len(widths) > 1:  # across SD 1/2 and SDXL
        model = " + ".join(f"{k} [n, {w}]" for k, w in zip(SDXL_KEYS, widths)) if len(widths) > 1 else f"[n, {widths[0]}]"
        kind = "an SDXL embedding" if emb.widths else f"an {FAMILY_OF_WIDTH.get(emb.width, 'SD')} embedding"
        raise EmbeddingError(f"{emb.source or emb.token}: {kind} ({emb.shape_text()}) does not fit the {family} "
                             f"model, which needs {model}")
    width = widths[0]
    theirs = FAMILY_OF_WIDTH.get(emb.width)
    why = (
        f"{theirs} embeddings do not work on {family} models"
        if theirs and theirs != family
        else "an embedding must be as wide as the model's text encoder"
    )
    raise EmbeddingError(
        f"{emb.source or emb.token}: embedding is {emb.width} wide but the {family} model "
        f"expects {width}-wide vectors ({why})"
    )


def intermediate_path(output_path, step: int) -> Path:
    """Where a training snapshot goes: out/effusion.safetensors, 500 -> out/effusion-500.safetensors."""
    p = Path(output_path)
    return p.with_name(f"{p.stem}-{step}.safetensors")
