"""Content hashes that name what made an image: the checkpoint (AUTOMATIC1111's "Model hash": the first
10 hex digits of the file's SHA-256) and the learned tokens' files.

Hashing a 5 GB checkpoint takes tens of seconds, so full hashes are cached in
`$XDG_CACHE_HOME/mini-ldm/hashes.json` (default `~/.cache/mini-ldm/`), keyed by the file's absolute path,
size and modification time: a file that changes in any of those is hashed again. The cache is a
convenience only; when it cannot be read or written, the hash is computed and nothing else happens.
"""
import hashlib
import json
from pathlib import Path

from .io import user_cache_dir, write_text_atomic

SHORT = 10  # AUTOMATIC1111 shows the first 10 hex digits
CHUNK = 1 << 20


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes (64 hex digits), from the cache when size and mtime still match."""
    path = Path(path).resolve()
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache_file = user_cache_dir() / "hashes.json"
    cache = _read_cache(cache_file)
    known = cache.get(str(path))
    if isinstance(known, dict) and all(known.get(k) == v for k, v in key.items()) and "sha256" in known:
        return known["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    cache[str(path)] = {**key, "sha256": digest.hexdigest()}
    try:
        write_text_atomic(cache_file, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home folder: hash again next time
    return digest.hexdigest()


def model_hash(path) -> str:
    """First 10 hex digits of a checkpoint's SHA-256, as AUTOMATIC1111 shows it. A diffusers folder has no
    single file: its hash is that of the text listing each file's relative path and SHA-256, sorted."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)[:SHORT]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts))
    listing = "".join(f"{p.relative_to(path).as_posix()} {file_sha256(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:SHORT]


def tensor_sha256(tensor) -> str:
    """For learned vectors whose file is unknown (given from Python): the SHA-256 of their float32 bytes."""
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
