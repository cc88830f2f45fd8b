"""Which images a study shows: the image sets read from folders, and the items drawn from them by the seed.

An item is what a reader answers once: a pair (one A image, one B image) for `preference`, one image for
`real-or-synthetic` and `label`. Every draw is without replacement and seeded, so the same command makes the
same study."""
import random
from dataclasses import dataclass
from pathlib import Path

from mini_ldm.errors import UserError
from readers.images import find_images

from .tasks import LABEL, PREFERENCE, REAL_OR_SYNTHETIC


@dataclass(frozen=True)
class Item:
    first: Path                 # preference: the A image; else the image
    second: Path | None = None  # preference: the B image
    truth: str | None = None    # real-or-synthetic: real|synthetic; label: the class
    source: str | None = None   # real|synthetic (preference: None)
    label_class: str | None = None


def images_of(folder, flag: str) -> list:
    """The images under `folder`, or one line naming the flag when it is missing or holds none."""
    if folder is None:
        raise UserError(f"{flag} is needed for this task; give the folder of images")
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such folder; give the folder of images")
    return find_images(folder, warn=lambda message: None, tool=f"study.py create {flag}")


def _draw(images: list, n: int, rng: random.Random, flag: str, folder, count_flag: str) -> list:
    if n > len(images):
        raise UserError(f"{flag} {folder} holds {len(images)} images, fewer than {count_flag} {n}; "
                        f"lower {count_flag} or add images")
    return rng.sample(images, n)


def preference_items(a, b, pairs: int, rng: random.Random) -> list:
    """`pairs` pairs, each one image of A and one of B, drawn without replacement."""
    a_images, b_images = images_of(a, "--a"), images_of(b, "--b")  # both folders checked before the counts
    a_images = _draw(a_images, pairs, rng, "--a", a, "--pairs")
    b_images = _draw(b_images, pairs, rng, "--b", b, "--pairs")
    return [Item(first, second) for first, second in zip(a_images, b_images)]


def real_or_synthetic_items(real, synthetic, per_set: int | None, rng: random.Random) -> list:
    """The same number of real and synthetic images: `per_set` of each, default as many as the smaller set."""
    real_images, synthetic_images = images_of(real, "--real"), images_of(synthetic, "--synthetic")
    n = min(len(real_images), len(synthetic_images)) if per_set is None else per_set
    items = [Item(p, truth="real", source="real")
             for p in _draw(real_images, n, rng, "--real", real, "--per-set")]
    return items + [Item(p, truth="synthetic", source="synthetic")
                    for p in _draw(synthetic_images, n, rng, "--synthetic", synthetic, "--per-set")]


def class_folders(folder, flag: str) -> dict:
    """{class name: images} of a folder holding one subfolder per class (what prepare.py and sample.py's
    --prompts-file write)."""
    if not Path(folder).is_dir():
        raise UserError(f"{flag} {folder}: no such folder; give a folder with one subfolder per class")
    subfolders = sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        raise UserError(f"{flag} {folder}: a label study needs one subfolder per class (e.g. {folder}/normal/, "
                        f"{folder}/effusion/); none found")
    return {p.name: images_of(p, flag) for p in subfolders}


def label_items(real, synthetic, per_set: int | None, rng: random.Random) -> tuple:
    """(items, class names): every image of each given source (or `per_set` of each, at random), its truth the
    class its folder names. The sources given must hold the same classes."""
    if real is None and synthetic is None:
        raise UserError("a label study needs --real DIR and/or --synthetic DIR, each with one subfolder per class")
    sources = {name: class_folders(folder, flag)
               for name, folder, flag in (("real", real, "--real"), ("synthetic", synthetic, "--synthetic"))
               if folder is not None}
    classes = [sorted(c) for c in sources.values()]
    if len(classes) == 2 and classes[0] != classes[1]:
        raise UserError(f"--real {real} has classes {', '.join(classes[0])} but --synthetic {synthetic} has "
                        f"{', '.join(classes[1])}; give both the same class subfolders")
    items = []
    for source, by_class in sources.items():
        pool = [Item(p, truth=c, source=source, label_class=c) for c, images in by_class.items() for p in images]
        if per_set is not None:
            folder = real if source == "real" else synthetic
            pool = _draw(pool, per_set, rng, f"--{source}", folder, "--per-set")
        items += pool
    return items, tuple(classes[0])


def draw_items(task: str, folders: dict, pairs: int, per_set: int | None, seed: int) -> tuple:
    """(items, class names) of a study; `folders` maps 'a', 'b', 'real', 'synthetic' to the folders given."""
    rng = random.Random(seed)
    if task == PREFERENCE:
        return preference_items(folders.get("a"), folders.get("b"), pairs, rng), ()
    if task == REAL_OR_SYNTHETIC:
        return real_or_synthetic_items(folders.get("real"), folders.get("synthetic"), per_set, rng), ()
    if task == LABEL:
        return label_items(folders.get("real"), folders.get("synthetic"), per_set, rng)
    raise UserError(f"--task {task}: unknown; choose preference, real-or-synthetic or label")
