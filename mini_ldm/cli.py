"""What train.py and sample.py share: finding the model, and turning errors into one line."""
import os
import sys
from pathlib import Path

from .errors import UserError

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights"
DOWNLOAD_HINT = ("download a checkpoint, e.g. 512-base-ema.safetensors from "
                 "https://huggingface.co/stabilityai/stable-diffusion-2-base (the paper's model), put it in "
                 f"{WEIGHTS}/ and run again, or pass --model PATH (see weights/README.md)")


def weights_folder() -> Path:
    """Where checkpoints are looked for without --model: $MINI_LDM_WEIGHTS if set, else the repo's weights/."""
    return Path(os.environ.get("MINI_LDM_WEIGHTS") or WEIGHTS)


def find_default_model(folder: Path | None = None) -> Path:
    """The one checkpoint in weights/: a .safetensors/.ckpt file or a diffusers folder."""
    folder = weights_folder() if folder is None else Path(folder)
    found = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix in (".safetensors", ".ckpt"):
                found.append(p)
            elif p.is_dir() and (p / "unet").is_dir():
                found.append(p)
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


def run(main) -> None:
    """Run a CLI main(); a UserError or a file-system error (permission denied, disk full) becomes
    'error: ...' on stderr and exit status 2, Ctrl-C exit status 130."""
    try:
        main()
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
