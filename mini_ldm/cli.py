"""What the CLIs share: finding the model, parsing flags (text checked), turning errors into one line."""
import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError, first_line
from .settings import parse

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights"
BUNDLED_MODEL = "phantom-sd2.safetensors"  # the small phantom model this repository commits (devkit/phantom_model.py)
DOWNLOAD_HINT = ("download a checkpoint, e.g. 512-base-ema.safetensors from "
                 "https://huggingface.co/stabilityai/stable-diffusion-2-base (the paper's model), put it in "
                 f"{WEIGHTS}/ and run again, or pass --model PATH (see weights/README.md)")


def weights_folder() -> Path:
    """Where checkpoints are looked for without --model: $MINI_LDM_WEIGHTS if set, else the repo's weights/."""
    return Path(os.environ.get("MINI_LDM_WEIGHTS") or WEIGHTS)


def find_default_model(folder: Path | None = None) -> Path:
    """The one checkpoint in weights/: a .safetensors/.ckpt file or a diffusers folder; the bundled phantom model
    counts only when it is alone."""
    folder = weights_folder() if folder is None else Path(folder)
    found = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix in (".safetensors", ".ckpt"):
                found.append(p)
            elif p.is_dir() and (p / "unet").is_dir():
                found.append(p)
    if len(found) > 1:  # the phantom model shipped in weights/ yields to any checkpoint the user puts there
        found = [p for p in found if p.name != BUNDLED_MODEL] or found
    if not found:
        hint = DOWNLOAD_HINT if folder == WEIGHTS else DOWNLOAD_HINT.replace(str(WEIGHTS), str(folder))
        raise UserError(f"--model not given and no checkpoint in {folder}/: {hint}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UserError(f"--model not given and {folder}/ holds several checkpoints ({names}); choose one with --model")
    return found[0]


def check_writable(path: Path, flag: str, is_file: bool) -> None:
    """Refuse, before any work, an output that could not be written after it: a folder where a file must go
    (or the reverse), a path under a file, a folder we may not write to."""
    path = Path(path)
    if path.exists() and path.is_dir() == is_file:
        what = "a folder" if is_file else "a file"
        raise UserError(f"{flag} {path}: is {what}; give {'a .png file name' if is_file else 'a folder'}")
    existing = path if path.exists() and not is_file else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable; choose another place")


def check_exist(*named: tuple) -> None:
    """(flag, path or list of paths or None) pairs: every path given must exist, checked with the flags, before
    torch and the model load (the loaders say the same again, for the API's callers)."""
    for flag, paths in named:
        for path in paths if isinstance(paths, (list, tuple)) else [paths]:
            if path is not None and not Path(path).exists():
                raise UserError(f"{flag} {path}: no such file or folder")


def check_compiler(device: str) -> None:
    """--compile on a CPU: inductor writes C++ and builds it with the machine's C++ compiler; without one the
    first step would end in a traceback, after the model loaded (and, in training, the latents were encoded)."""
    if not device.startswith("cpu"):
        return
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise UserError("--compile: on a CPU, torch.compile builds C++ code and finds no C++ compiler (g++); "
                        "install one (e.g. apt install g++) or leave out --compile") from None


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`parser.parse_args(argv)` as every CLI parses (`settings.parse`: --threads, one-line flag errors, text
    that is not UTF-8 refused before any work), so none has to remember them."""
    return parse(parser, argv)


OUT_OF_MEMORY = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(e: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, the CPU allocator's RuntimeError ("DefaultCPUAllocator: not enough
    memory"), MPS's, or Python's own MemoryError."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and any(words in str(e).lower() for words in OUT_OF_MEMORY)


def out_of_memory_line(e: BaseException, hint: str, what: str = "") -> str:
    """One line for an allocator's error: what we were doing, what the allocator said, what to lower."""
    said = first_line(e) if str(e).strip() else ""  # Python's MemoryError says nothing
    return "out of memory" + (f" {what}" if what else "") + (f" ({said})" if said else "") + f": {hint}"


class OutOfMemory(UserError):
    """Running out of memory while working on one named thing (`naming_out_of_memory`); `cli.run` words it
    with the CLI's own memory hint unless the thing came with its own."""

    def __init__(self, error: BaseException, what: str, hint: str | None):
        self.error, self.what, self.hint = error, what, hint
        super().__init__(out_of_memory_line(error, hint or "free memory", what))

    def line(self, memory_hint: str) -> str:
        return out_of_memory_line(self.error, self.hint or memory_hint, self.what)


@contextmanager
def naming_out_of_memory(what: str, hint: str | None = None):
    """Running out of memory inside the block becomes OutOfMemory naming `what` ("reading image a.png"); `hint`
    is what to do about that thing, else the CLI's memory hint is given."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:  # Python's, or torch's CPU/CUDA/MPS allocators
        if not is_out_of_memory(e):
            raise
        raise OutOfMemory(e, what, hint) from None


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (what `timeout`, `kill` and SLURM send before they end a job) go to
    `handler(signum, frame)` while the block runs; the previous handlers are put back after it, or earlier by
    `restore()`. Only the main thread receives signals: in any other this does nothing."""

    def __init__(self, handler, signals: tuple = (signal.SIGINT, signal.SIGTERM)):
        self.handler, self.signals, self.previous = handler, signals, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self.handler) for sig in self.signals}
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def __exit__(self, *exc):
        self.restore()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> StopSignals:
    """SIGTERM (what `timeout`, `kill` and job schedulers send) ends the block as Ctrl-C does: `finally` blocks
    run (locks released, temporary files removed) and `run` says "interrupted", where the default handler would
    end the process on the spot."""
    return StopSignals(_interrupt, (signal.SIGTERM,))


def run(main, argv=None, memory_hint: str = "use a smaller input or another --device") -> None:
    """Run a CLI main(argv); a UserError or a file-system error (permission denied, disk full) becomes
    'error: ...' on stderr and exit status 2, running out of memory the same with `memory_hint` (what to
    lower, in that CLI's flags), Ctrl-C exit status 130."""
    try:
        main(argv)
    except OutOfMemory as e:
        print(f"error: {e.line(memory_hint)}", file=sys.stderr)
        sys.exit(2)
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        print(f"error: {out_of_memory_line(e, memory_hint)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
