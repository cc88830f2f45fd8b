"""Class folders -> images in memory: every split folder holds one subfolder per class (exactly two), read
once, resized to SIZE x SIZE and kept as uint8, then shared by every arm and repeat."""
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from mini_ldm.errors import UserError
from mini_ldm.settings import check_utf8
from readers.images import DataError, find_images, load_image


@dataclass
class ImageSet:
    """Images of one folder: `names` relative to it (e.g. pos/case1.png), `labels` 1 = positive, `pixels`
    (N, 3, SIZE, SIZE) uint8."""
    names: list
    labels: torch.Tensor
    pixels: torch.Tensor

    def fingerprint(self) -> str:
        """SHA-256 of the names, labels and pixels: what a training on this set saw (at this --size), so a
        rerun can tell that a folder changed (files added, removed, renamed or edited) since."""
        h = hashlib.sha256("\0".join(self.names).encode())
        h.update(self.labels.numpy().tobytes())
        h.update(self.pixels.contiguous().numpy().tobytes())
        return h.hexdigest()

    def per_class(self, classes: list, positive: str) -> dict:
        return {c: int((self.labels == int(c == positive)).sum()) for c in classes}

    def subset(self, keep: torch.Tensor) -> "ImageSet":
        return ImageSet([self.names[i] for i in keep.tolist()], self.labels[keep], self.pixels[keep])

    @staticmethod
    def join(a: "ImageSet", b: "ImageSet", prefix_b: str) -> "ImageSet":
        return ImageSet(a.names + [f"{prefix_b}/{n}" for n in b.names], torch.cat([a.labels, b.labels]),
                        torch.cat([a.pixels, b.pixels]))


def class_names(folder: Path, flag: str) -> list:
    """The sorted class subfolders of a split folder (hidden ones skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such folder; give a folder with one subfolder per class")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:  # a name results.json and predictions.csv cannot hold: refused before any training
        check_utf8(flag, folder / name)
    if len(names) != 2:
        found = ", ".join(names) or "none"
        raise UserError(f"{flag} {folder}: needs exactly two class subfolders for an AUC, found {len(names)} "
                        f"({found})")
    return names


def check_classes(folders: dict, positive: str | None) -> tuple:
    """`folders` {flag: folder}: the classes they share and the positive one; one line when they differ."""
    found = {flag: class_names(folder, flag) for flag, folder in folders.items() if folder is not None}
    first_flag, classes = next(iter(found.items()))
    for flag, names in found.items():
        if names != classes:
            raise UserError(f"{flag} {folders[flag]}: its classes ({', '.join(names)}) differ from {first_flag}'s "
                            f"({', '.join(classes)}); every folder needs the same class subfolders")
    if positive is None:
        positive = "pos" if "pos" in classes else classes[1]
    elif positive not in classes:
        raise UserError(f"--positive {positive}: not a class; choose {' or '.join(classes)}")
    return classes, positive


def check_pixels(path: Path, flag: str, max_pixels: int) -> None:
    """Refuse an image whose header promises more than `max_pixels` pixels, before it is decoded whole."""
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: the message below says it in our words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                pixels, size = im.width * im.height, f"{im.width} x {im.height} pixels"
    except Image.DecompressionBombError:  # over twice PIL's own limit: refused while opening
        pixels, size = max_pixels + 1, f"over {2 * Image.MAX_IMAGE_PIXELS} pixels"
    except Exception:  # not an image PIL reads (DICOM, damaged): load_image reads it or says why
        return
    if pixels > max_pixels:
        raise UserError(f"{flag}: {path} is {size}, more than --max-pixels {max_pixels}; shrink it (it is "
                        "resized to --size anyway) or raise --max-pixels")


def read_images(folder: Path, flag: str, classes: list, positive: str, size: int, least: int = 1,
                max_pixels: int | None = None) -> ImageSet:
    """Every image under folder/<class>/, resized; refuses a class with fewer than `least` images, a name that
    is not UTF-8 and (with `max_pixels`) an image larger than that, all before the first image is decoded."""
    names, labels, paths = [], [], []
    for c in classes:
        found = _find(Path(folder) / c, flag, folder)
        if len(found) < least:
            raise UserError(f"{flag} {folder}: class {c} has {len(found)} image{'s' * (len(found) != 1)}; "
                            f"it needs at least {least}")
        for path in found:
            check_utf8(flag, path)
            if max_pixels is not None:
                check_pixels(path, flag, max_pixels)
        paths += found
        names += [p.relative_to(folder).as_posix() for p in found]
        labels += [int(c == positive)] * len(found)
    pixels = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc=f"reading {flag[2:]}", unit="image", leave=False)):
        pixels[i] = resize(load_image(path), size)
    return ImageSet(names, torch.tensor(labels), pixels)


def _find(class_folder: Path, flag: str, folder: Path) -> list:
    if not any(p.is_file() and not p.name.startswith(".") for p in class_folder.rglob("*")):
        return []  # an empty class: the caller counts it
    try:
        return find_images(class_folder, warn=lambda message: None, tool="classify.py")
    except DataError as e:  # files but no images, or a 3-D volume: the reader's message says what to do
        raise UserError(f"{flag} {folder}: {e}") from None


def resize(image, size: int) -> torch.Tensor:
    """8-bit RGB PIL image -> (3, size, size) uint8. Bilinear without antialiasing on the [0, 1] tensor, as
    the paper's torchvision Resize did on tensors; the aspect ratio is not kept (no crop), as there."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (x[0] * 255).round().clamp(0, 255).to(torch.uint8)


def synthetic_subset(images: ImageSet, count: int, seed: int) -> ImageSet:
    """`count` images per class, drawn without replacement with `seed` (the same subset for every repeat)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for label in (0, 1):
        members = torch.nonzero(images.labels == label).flatten()  # at least `count`: checked by the caller
        keep.append(members[torch.randperm(len(members), generator=g)[:count]].sort().values)
    return images.subset(torch.cat(keep))
