"""File helpers every part of the project shares: atomic writes, locks, safe torch loading.

Four rules live here so that no caller has to remember them:
- a file we write is either the old one or the complete new one, never half of one (`atomic_write`, and
  `write_image_atomic` for images);
- two runs never write one output at once: the first holds a lock file with its pid (`pid_lock`);
- a pickle is only ever opened with `weights_only=True`, so loading a file never runs its code (`torch_load`);
- the same tensors and metadata give the same bytes (`safetensors_bytes`).

torch and safetensors are imported inside the two helpers that read or write tensors: the CLIs use the
others while checking their flags, before torch (seconds to import) is loaded.
"""
import json
import os
import pickle
import re
import secrets
import warnings
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from .errors import UserError


def user_cache_dir() -> Path:
    """mini-ldm's folder for caches that only save time (hashes, image features): $XDG_CACHE_HOME/mini-ldm,
    by default ~/.cache/mini-ldm."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mini-ldm"


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file beside `path` for writing; on success it replaces `path` in one rename.

    Readers see the old file or the new one, never half of one, even if we crash mid-write. On error the
    temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temp file in the same folder, so os.replace is a rename on one file system
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk says only "No space left on device": name the file we were writing
        tmp.unlink(missing_ok=True)
        if e.errno is None or e.filename is not None and str(e.filename) != str(tmp):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself survive a power cut
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path, data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path, data) -> Path:
    """`data` as indented JSON with a final newline: the form of every JSON file the tools write (results,
    metrics, settings stamps), readable in an editor and diffable between runs."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_image_atomic(path, image: Image.Image, **save_kw) -> Path:
    """`image.save(path, **save_kw)` through `atomic_write`: the format from the file's suffix (.png, .jpg)
    unless `format=` says otherwise, since the temporary file's name has none."""
    path = Path(path)
    save_kw.setdefault("format", Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    with atomic_write(path) as f:
        image.save(f, **save_kw)
    return path


class UnsafePickle(Exception):
    """The weights-only unpickler met a class it will not build (`what` names it when it says)."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def torch_load(path, allow: tuple = (), mmap: bool = False):
    """`torch.load` with weights_only=True, on CPU. Raises UnsafePickle when the file asks for code or
    objects beyond tensors and plain data (and the classes in `allow`), or the library's own error when
    the file is damaged; callers turn both into messages of their own."""
    import torch

    path = Path(path)
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the caller's message says it all
            warnings.simplefilter("ignore")
            if allow and safe_globals is not None:
                with safe_globals(list(allow)):
                    return _load(path, mmap)
            return _load(path, mmap)
    except (pickle.UnpicklingError, RuntimeError) as e:
        if re.search(r"\bGLOBAL\b|Unsupported global", str(e)):
            found = re.search(r"GLOBAL (\S+)", str(e))
            raise UnsafePickle(found.group(1) if found else "") from None
        raise


def _load(path: Path, mmap: bool):
    import torch

    if mmap:  # memory-mapping needs a file name
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Only zip-format files (torch >= 1.6) can be memory-mapped; read the legacy format whole.
    # an open file, not a name: newer torch.load hands any "*.safetensors" name to safetensors instead
    with open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def lock_holder(lock: Path) -> int | None:
    """The pid written in a lock file, or None when it cannot be read."""
    try:
        return int(Path(lock).read_text().strip())
    except (OSError, ValueError):
        return None


@contextmanager
def pid_lock(lock, output, what: str):
    """Hold the file `lock` (holding our pid; its folder is made) while a `what` (say "training run") writes
    `output`: a second one stops at once with a UserError naming the holder. A lock whose process is gone
    (kill -9, a power cut) is stale and taken over."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = lock_holder(lock)
            if holder is not None and holder != os.getpid() and _running(holder):
                raise UserError(f"--output {output}: another {what} (pid {holder}) is writing it; wait for it to "
                                f"finish or choose another --output (remove {lock} if pid {holder} is not a {what})"
                                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise UserError(f"{lock}: cannot be taken; remove it if no other run is writing there")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """safetensors.torch.save with the metadata in sorted key order: the library writes it from a hash map, in
    an order that changes from process to process, so the same tensors would give different file bytes (and
    hashes). The tensors' own order and data are already deterministic; only the header is rewritten."""
    import safetensors.torch

    raw = safetensors.torch.save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return len(text).to_bytes(8, "little") + text + raw[8 + size:]
