"""The concepts of a run: which tokens, which images train them, which are held out for validation.

A plain run has one concept: `--data DIR` and its token. With `--concepts`, every immediate subfolder of
DIR that holds images is a concept of its own, token `<subfolder>` (or `<P-subfolder>` with
`--token-prefix P`). Everything here is decided before a model is loaded, so bad input fails at once.
"""
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from mini_ldm.errors import UserError
from mini_ldm.prompt_text import match_key
from mini_ldm.settings import check_utf8

from readers.images import DataError, find_images, warn_stderr
from .train_settings import TrainSettings


@dataclass
class Concept:
    """One learned token of a run. `cache` / `val_cache` (LatentCache) are filled once the VAE is loaded."""
    token: str
    output: Path  # its embedding file, <name>.safetensors
    data: Path | None = None  # its image folder
    init_text: str | None = None
    train_paths: list = field(default_factory=list)
    val_paths: list = field(default_factory=list)  # held-out images: never trained on
    cache: object = None
    val_cache: object = None

    @property
    def name(self) -> str:
        return self.output.stem

    @classmethod
    def single(cls, settings: TrainSettings, train_paths=(), cache=None) -> "Concept":
        """The one concept of a plain run: settings.token, learned from settings.data into settings.output."""
        return cls(settings.token, Path(settings.output), settings.data, settings.init_text, list(train_paths),
                   cache=cache)

    def val_names(self) -> list[str]:
        """The held-out images as the metadata lists them: relative to the concept's folder where they are in it."""
        def relative(p: Path) -> str:
            try:
                return p.relative_to(self.data).as_posix()
            except ValueError:
                return str(p)
        return [relative(Path(p)) for p in self.val_paths]


def token_word(name: str) -> str:
    """A folder name as a prompt word: whitespace becomes '_' ('chest xr' -> 'chest_xr')."""
    return re.sub(r"\s+", "_", name)


def file_name(token: str) -> str:
    """A token as a file name on every OS: '<chest xr>' -> 'chest_xr'."""
    return re.sub(r"[<>:\"/\\|?*\s]+", "_", token).strip("_.") or "embedding"


def concept_folders(root: Path, warn=warn_stderr) -> list[tuple[Path, list]]:
    """(subfolder, its images) for every immediate subfolder of `root` holding images, sorted by name;
    a subfolder without images is skipped with one line."""
    if not root.is_dir():
        raise DataError(f"--data {root}: does not exist or is not a folder")
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append((sub, find_images(sub, warn=lambda message: None)))
        except DataError:
            warn(f"skipping {sub.name}/: no images in it")
    if not found:
        raise UserError(f"--concepts: {root} has no subfolders with images (one folder per concept, e.g. "
                        f"{root}/effusion/, {root}/pneumonia/); for a flat folder of one concept drop --concepts")
    return found


def read_init_file(path: Path) -> dict:
    """--init-file: lines `folder: init text`; blank lines and # comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"--init-file {path}: cannot read it ({e.strerror or e})") from None
    mapping = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        folder, sep, text = line.partition(":")
        if not sep or not folder.strip() or not text.strip():
            raise UserError(f"--init-file {path}:{number}: expected 'folder: init text', got {line.strip()!r}")
        mapping[folder.strip()] = text.strip()
    return mapping


def split_held_out(paths: list, count: int, seed: int, token: str) -> tuple[list, list]:
    """(train, held out): `count` images chosen with the run's seed (and the token, so concepts of equal size
    do not hold out the same positions); both lists keep the folder's order."""
    if count > len(paths) - 1:
        raise UserError(f"--val-images {count}: {token} has {len(paths)} images; hold out at most "
                        f"{len(paths) - 1} so that at least one is left to train on")
    chosen = set(random.Random(f"{seed}/{token}").sample(range(len(paths)), count))
    return ([p for i, p in enumerate(paths) if i not in chosen], [p for i, p in enumerate(paths) if i in chosen])


def plan(settings: TrainSettings, warn=warn_stderr) -> list[Concept]:
    """The run's concepts with their training and held-out images (settings: checked, token and output set).
    Each folder is searched for images once, here; the lists travel on in the Concepts."""
    if not settings.concepts:
        concepts = [Concept.single(settings, find_images(settings.data, warn=lambda message: None))]
    else:
        inits = read_init_file(settings.init_file) if settings.init_file else {}
        concepts = []
        for folder, paths in concept_folders(settings.data, warn):
            check_utf8("--concepts", folder)  # its name becomes the token, which files and logs must hold
            word = token_word(folder.name)
            token = f"<{settings.token_prefix}-{word}>" if settings.token_prefix else f"<{word}>"
            concepts.append(Concept(token, Path(settings.output) / f"{file_name(token)}.safetensors", folder,
                                    inits.get(folder.name, settings.init_text), paths))
        check_distinct(concepts)
        unknown = sorted(set(inits) - {c.data.name for c in concepts})
        if unknown:
            raise UserError(f"--init-file {settings.init_file}: no concept folder named {unknown[0]!r} in "
                            f"{settings.data}")
    for c in concepts:
        _hold_out(c, settings)
    return concepts


def check_distinct(concepts: list[Concept]):
    """Two folders whose tokens a prompt cannot tell apart ('a b' and 'a_b' are both <a_b>; prompts match
    <Effusion> and <effusion> alike) or whose files would be one (also on a case-blind file system) would
    silently lose one concept: refuse, naming both folders."""
    seen = {}
    for c in concepts:
        for key in (("token", match_key(c.token)), ("file", c.output.name.lower())):
            other = seen.setdefault(key, c)
            if other is not c:
                what = (f"become tokens {other.token} and {c.token}, which prompts match alike (case is ignored)"
                        if key[0] == "token" else f"would both be written to {c.output.name}")
                raise UserError(f"--concepts: subfolders {other.data.name!r} and {c.data.name!r} {what}; rename "
                                "one of them")


def _hold_out(concept: Concept, settings: TrainSettings):
    if settings.val_images:
        concept.train_paths, concept.val_paths = split_held_out(concept.train_paths, settings.val_images,
                                                                settings.seed, concept.token)
    elif settings.val_data is not None:
        folder = settings.val_data / concept.data.name if settings.concepts else settings.val_data
        if settings.concepts and not folder.is_dir():
            raise UserError(f"--val-data {settings.val_data}: no subfolder {concept.data.name}/ for {concept.token}")
        concept.val_paths = find_images(folder, warn=lambda message: None)
