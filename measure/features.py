"""Image folders -> Inception features, cached on disk.

A folder is read the way `train.py --data` reads it (`readers.images.find_images` / `load_image`: recursive, any
supported format and bit depth, 8-bit RGB out, grayscale repeated to RGB). Unreadable files are skipped with a
warning and counted. The features are cached under a key made of every file's path, size and mtime, the weights
file's SHA-256 and the preprocessing settings, so comparing ten synthetic sets with one real set encodes the
real set once, and changing any image or setting encodes it again.
"""
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save

from measure.evaluate_settings import FEATURE_DIMS
from measure.preprocess import inception_input, to_uint8_tensor, zscore_paper
from mini_ldm.cli import naming_out_of_memory
from mini_ldm.errors import first_line
from mini_ldm.io import user_cache_dir, write_bytes_atomic
from readers.images import DataError, find_images, load_image, warn_stderr

CACHE_FORMAT = "mini-ldm-inception-features-1"  # bump when the stored layout changes


def default_cache_dir() -> Path:
    return user_cache_dir() / "inception-features"


@dataclass
class FolderFeatures:
    root: Path
    names: list  # relative paths of the images read, in find_images order
    features: torch.Tensor  # (N, dims): the tap FID and KID use
    pool: torch.Tensor  # (N, 2048): the pool features the memorisation audit compares
    logits: torch.Tensor  # (N, 1008) bias-free logits, for the Inception Score
    pool_mirrored: torch.Tensor | None = None  # (N, 2048) of the images flipped left-right, when asked for
    skipped: list = field(default_factory=list)  # files that could not be read
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.names)


def preprocess(image: Image.Image, zscore: bool) -> torch.Tensor:
    """8-bit RGB PIL image -> (3, H, W) uint8 tensor, after the paper's z-scoring if asked."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return to_uint8_tensor(zscore_paper(rgb) if zscore else rgb)


@torch.no_grad()
def encode_batch(model, images: list, resize: str, dims: int, mirror: bool = False) -> dict:
    """(3, H, W) uint8 tensors of any sizes -> {"features", "pool", "logits"} rows, float64 on CPU,
    and "pool_mirrored" (the images flipped left-right) with mirror=True."""
    param = next(model.parameters())
    # each image is resized on its own (sizes may differ); the result is the same as a batched resize
    x = torch.cat([inception_input(im[None].to(param.device), resize, param.dtype) for im in images])
    taps = model(x)
    rows = {"features": taps[str(dims)].double().cpu(), "pool": taps["2048"].double().cpu(),
            "logits": taps["logits_unbiased"].double().cpu()}
    if mirror:
        flipped = torch.cat([inception_input(im[None].flip(-1).to(param.device), resize, param.dtype) for im in images])
        rows["pool_mirrored"] = model(flipped)["2048"].double().cpu()
    return rows


def image_features(images, model, resize: str = "antialias", zscore: bool = False, dims: int = 2048,
                   batch: int = 16, progress: str | None = None, mirror: bool = False) -> dict:
    """PIL images (or (3, H, W) uint8 tensors) -> {"features": (N, dims), "pool": (N, 2048), "logits": (N, 1008)},
    plus "pool_mirrored" (N, 2048) of the left-right mirrored images with mirror=True."""
    from tqdm import tqdm

    if dims not in FEATURE_DIMS:
        raise ValueError(f"dims must be one of {FEATURE_DIMS}, not {dims}")
    out = {"features": [], "pool": [], "logits": []} | ({"pool_mirrored": []} if mirror else {})
    pending = []
    bar = tqdm(total=len(images), desc=progress, unit="img", disable=progress is None, leave=False)
    for image in images:
        pending.append(image if torch.is_tensor(image) else preprocess(image, zscore))
        if len(pending) == batch:
            _append(out, encode_batch(model, pending, resize, dims, mirror))
            bar.update(len(pending))
            pending = []
    if pending:
        _append(out, encode_batch(model, pending, resize, dims, mirror))
        bar.update(len(pending))
    bar.close()
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def _append(out: dict, rows: dict) -> None:
    for k, v in rows.items():
        out[k].append(v)


def cache_key(root: Path, paths: list, weights_sha256: str, resize: str, zscore: bool, dims: int, dtype,
              mirror: bool) -> str:
    files = []
    for p in paths:
        st = p.stat()
        files.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    settings = {"format": CACHE_FORMAT, "files": files, "weights": weights_sha256, "resize": resize,
                "zscore": zscore, "dims": dims, "dtype": str(dtype),
                "mirror": mirror}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def read_images(root: Path, paths: list, zscore: bool, warn) -> tuple:
    """Readable images as uint8 tensors, their names, and the names of the files that could not be read."""
    images, names, skipped = [], [], []
    for p in paths:
        name = p.relative_to(root).as_posix()
        # one huge image (a 100k x 100k slide export): name it, stop with one line
        with naming_out_of_memory(f"reading image {p}", f"make it smaller (or leave it out of {root}), or free memory"):
            try:
                images.append(preprocess(load_image(p), zscore))
                names.append(name)
            except DataError as e:
                warn(f"warning: {e}; skipping it")
                skipped.append(name)
    return images, names, skipped


def folder_features(folder, model, resize: str = "antialias", zscore: bool = False, dims: int = 2048,
                    batch: int = 16, cache_dir=None, warn=warn_stderr, progress: bool = True,
                    mirror: bool = False) -> FolderFeatures:
    """Every readable image under `folder` -> FolderFeatures, from the cache when nothing changed.
    `model` comes from `measure.inception.load_inception` (its weights hash keys the cache); cache_dir=False
    turns the cache off, None uses ~/.cache/mini-ldm/inception-features. mirror=True also encodes every image
    flipped left-right (pool features only), for the memorisation audit's real set."""
    root = Path(folder)
    paths = find_images(root, warn, tool="evaluate.py")
    dtype = next(model.parameters()).dtype
    cache_file = None
    if cache_dir is not False:
        key = cache_key(root, paths, model.weights_sha256, resize, zscore, dims, dtype, mirror)
        cache_file = Path(cache_dir or default_cache_dir()) / f"{key[:40]}.safetensors"
        if cache_file.is_file():
            cached = _read_cache(cache_file, root, len(paths), warn)
            if cached is not None:
                return cached
    images, names, skipped = read_images(root, paths, zscore, warn)
    if not images:
        raise DataError(f"none of the {len(paths)} image files in {root} could be read; check that they open in an image viewer")
    taps = image_features(images, model, resize, zscore, dims, batch, str(root) if progress else None, mirror)
    result = FolderFeatures(root, names, taps["features"], taps["pool"], taps["logits"], taps.get("pool_mirrored"),
                            skipped)
    if cache_file is not None:
        meta = {"format": CACHE_FORMAT, "names": json.dumps(names), "skipped": json.dumps(skipped)}
        write_bytes_atomic(cache_file, save({k: v.contiguous() for k, v in taps.items()}, metadata=meta))
    return result


def _read_cache(path: Path, root: Path, n_files: int, warn) -> FolderFeatures | None:
    """The cached features, or None (with a warning) when the entry is damaged: a cache only saves time, so
    a truncated or foreign file is encoded again and overwritten, never an error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        taps = load_file(str(path))
        names, skipped = json.loads(meta["names"]), json.loads(meta["skipped"])
        rows = {len(taps[k]) for k in ("features", "pool", "logits")}
        if meta.get("format") != CACHE_FORMAT or rows != {len(names)} or len(names) + len(skipped) != n_files:
            raise ValueError("its contents do not match its key")
    except Exception as e:  # SafetensorError, a JSON or key error, a short file: all mean "damaged"
        warn(f"warning: cached features {path} are damaged ({first_line(e)}); encoding the images again")
        return None
    return FolderFeatures(root, names, taps["features"], taps["pool"], taps["logits"],
                          taps.get("pool_mirrored"), skipped, from_cache=True)
