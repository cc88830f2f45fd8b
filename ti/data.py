"""Training images -> tensors -> a cached latent distribution per image.

The folder is read by `readers.images` (any image format as 8-bit RGB). Training then encodes every image
once (`LatentCache`) and samples latents from the cached mean/std each step, so the VAE never runs inside
the training loop.
"""
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from tqdm import tqdm

from mini_ldm.io import safetensors_bytes, write_bytes_atomic
from mini_ldm.prompt import size_numbers, uncropped
from mini_ldm.vae import posterior_std
from readers.images import DataError, Warn, find_images, load_frames, to_rgb, warn_stderr

CACHE_FORMAT = "mini-ldm-latents-1"  # part of the cache key: bump it when the stored layout changes


# --------------------------------------------------------------------------- images -> tensors

def to_training_tensor(image: Image.Image, resolution: int, crop: str = "center", rng: random.Random | None = None) -> torch.Tensor:
    """Resize the shorter side to `resolution`, crop a square -> float tensor (3, R, R) in [-1, 1]."""
    return to_training_tensor_with_crop(image, resolution, crop, rng)[0]


def to_training_tensor_with_crop(image: Image.Image, resolution: int, crop: str = "center",
                                 rng: random.Random | None = None) -> tuple:
    """`to_training_tensor`, and where the square came from: (original height, width, crop top, left), the crop in the
    resized image's pixels, what SDXL's size conditioning records (as diffusers' SDXL training scripts)."""
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', not {crop!r}")
    if image.mode != "RGB":
        image = to_rgb(image)
    w, h = image.size
    original_h, original_w = h, w
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        image = image.resize(size, Image.LANCZOS)
    w, h = size
    if crop == "center":
        left, top = (w - resolution) // 2, (h - resolution) // 2
    else:
        rng = rng or random.Random()
        left, top = rng.randint(0, w - resolution), rng.randint(0, h - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(image, dtype=np.float32)  # (R, R, 3) in 0..255
    pixels = torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()
    return pixels, (original_h, original_w, top, left, w)


@dataclass
class TrainingImage:
    path: Path
    image: torch.Tensor  # (3, R, R) in [-1, 1]
    caption: str  # from <stem>.txt beside the image, "" if there is none
    flipped: bool = False
    geometry: tuple = ()  # (original height, width, crop top, left): SDXL's size conditioning


def read_caption(image_path: Path) -> str:
    txt = image_path.with_suffix(".txt")
    if not txt.is_file():
        return ""
    return " ".join(txt.read_text(encoding="utf-8", errors="replace").split())  # one line for the prompt


def load_dataset(root, resolution: int, crop: str = "center", flip: bool = False, warn: Warn = warn_stderr,
                 seed: int = 0, paths: Sequence[Path] | None = None) -> list[TrainingImage]:
    """Load every readable image under `root` as an TrainingImage; unreadable ones are skipped with a warning.

    flip=True also adds each image's horizontal mirror. Off by default: in chest X-rays laterality
    is anatomy (the heart is on the left), so a mirror is a different, implausible image.
    `seed` drives the random crop. `paths` skips the folder search when the caller already did it.
    """
    paths = find_images(root, warn) if paths is None else list(paths)
    rng = random.Random(seed)
    items = []
    for path in paths:
        try:
            images = [to_training_tensor_with_crop(frame, resolution, crop, rng) for frame in load_frames(path)]
        except DataError as e:
            warn(f"{e}; skipping it")
            continue
        caption = read_caption(path)
        for image, (h, w, top, left, resized_w) in images:  # a multi-frame DICOM file gives one item per frame
            items.append(TrainingImage(path, image, caption, geometry=(h, w, top, left)))
            if flip:  # the mirror's crop starts as far from the left edge as the original's from the right
                items.append(TrainingImage(path, image.flip(-1), caption, flipped=True,
                                           geometry=(h, w, top, resized_w - resolution - left)))
    if not items:
        raise DataError(f"none of the {len(paths)} image files in {root} could be read; check that they open in an image viewer")
    return items


# --------------------------------------------------------------------------- latent cache

class LatentCache:
    """The VAE's latent distribution (mean, std) of every training image, computed once.

    `sample` draws mean + std * noise, a fresh latent each step, exactly as encoding every step would,
    but without the VAE. Latents are *unscaled*: multiply by the VAE scale (0.18215) before the UNet.

    With crop="random" the cache fixes ONE crop per image, chosen once with the seeded rng when the
    images were loaded; it is not per-step crop augmentation (that would need the VAE in the loop).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, captions: list[str], names: list[str],
                 geometry: torch.Tensor | None = None):
        assert mean.shape == std.shape and mean.ndim == 4, (mean.shape, std.shape)
        assert len(captions) == len(names) == mean.shape[0]
        self.mean, self.std = mean, std  # (N, 4, r, r) each
        self.geometry = geometry  # (N, 4) original height, width, crop top, left; None in caches made before it
        self.captions = captions
        self.names = names  # image path, with " (flipped)" for mirrors; for messages only
        self.file: Path | None = None  # the .safetensors file this cache was saved to / loaded from
        self.reused = False  # True when loaded from disk instead of encoded in this run

    def __len__(self) -> int:
        return self.mean.shape[0]

    @classmethod
    @torch.no_grad()
    def build(cls, items: Sequence[TrainingImage], encode: Callable, batch_size: int = 4, device="cpu",
              progress: bool = True) -> "LatentCache":
        """`encode(images (B, 3, R, R) float32 CPU in [-1, 1]) -> (mean, logvar)`, each (B, 4, r, r).

        The callable moves the batch to the model's device and dtype itself.
        """
        means, stds = [], []
        with tqdm(total=len(items), desc="encoding images", unit="img", disable=not progress) as bar:
            for i in range(0, len(items), batch_size):
                batch = torch.stack([it.image for it in items[i:i + batch_size]])
                mean, logvar = encode(batch)
                if mean.shape != logvar.shape or mean.ndim != 4 or mean.shape[0] != batch.shape[0]:
                    raise ValueError(f"encode returned mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} "
                                     f"for {batch.shape[0]} images; expected two (B, C, h, w) tensors")
                means.append(mean.float().to(device))
                stds.append(posterior_std(logvar).to(device))
                bar.update(batch.shape[0])
        names = [str(it.path) + (" (flipped)" if it.flipped else "") for it in items]
        geometry = torch.tensor([it.geometry for it in items], dtype=torch.float32) if all(
            it.geometry for it in items) else None
        return cls(torch.cat(means), torch.cat(stds), [it.caption for it in items], names, geometry)

    def sample(self, indices, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents (B, 4, r, r) = mean + std * N(0, 1) for the given item indices (noise drawn on the cache's device)."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.mean.device).reshape(-1)
        mean, std = self.mean[idx], self.std[idx]
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * noise

    def caption(self, index: int) -> str:
        return self.captions[index]

    def size_conditioning(self, indices, size: int) -> torch.Tensor:
        """SDXL's six numbers per row (B, 6): each image's original size and crop, then the target size `size`
        (pixels). A cache without geometry (made before it was recorded) says (size, size, 0, 0)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        known = self.geometry[idx] if self.geometry is not None else uncropped(size, size).expand(len(idx), -1)
        return size_numbers(known, (size, size))

    def save(self, file, key: str = "") -> None:
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": CACHE_FORMAT, "key": key,
                "captions": json.dumps(self.captions), "names": json.dumps(self.names)}
        tensors = {"mean": self.mean.contiguous().cpu(), "std": self.std.contiguous().cpu()}
        if self.geometry is not None:
            tensors["geometry"] = self.geometry.contiguous().cpu()
        write_bytes_atomic(file, safetensors_bytes(tensors, meta))  # never half a file; the same bytes each run
        self.file = file

    @classmethod
    def load(cls, file, key: str | None = None, device="cpu") -> "LatentCache":
        """Read a saved cache; with `key`, refuse a file whose stored key differs (renamed or stale file)."""
        file = Path(file)
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                mean, std = f.get_tensor("mean"), f.get_tensor("std")
                geometry = f.get_tensor("geometry") if "geometry" in f.keys() else None
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
            if key is not None and meta.get("key") != key:
                raise ValueError("its key does not match these images and settings")
            cache = cls(mean.to(device), std.to(device), json.loads(meta["captions"]), json.loads(meta["names"]),
                        geometry)
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise DataError(f"cannot use latent cache {file}: {e}") from e
        cache.file, cache.reused = file, True
        return cache


def vae_encoder(sd) -> Callable:
    """`LatentCache.build`'s `encode` for a loaded model: CPU float32 images in [-1, 1] -> the VAE's latent
    distribution (mean, logvar), float32 on the CPU, as train.py and the membership audit encode images."""
    @torch.no_grad()
    def encode(images):
        mean, logvar = sd.vae.encode(images.to(sd.device, sd.dtype))
        return mean.float().cpu(), logvar.float().cpu()
    return encode


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_mtime_ns, st.st_size]


def cache_key(paths: Sequence[Path], resolution: int, crop: str, flip: bool, model_id: str, seed: int = 0) -> str:
    """Hash of everything that changes the cached latents: the image files (and their caption files),
    resolution, crop, flip, the model, and the crop seed when the crop is random."""
    files = []
    for p in paths:
        txt = Path(p).with_suffix(".txt")
        files.append(_file_stamp(Path(p)) + (_file_stamp(txt) if txt.is_file() else []))
    spec = {"format": CACHE_FORMAT, "files": files, "resolution": resolution, "crop": crop, "flip": flip,
            "model": model_id, "seed": seed if crop == "random" else None}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cached_latents(root, encode: Callable, model_id: str, cache_dir, resolution: int, crop: str = "center",
                   flip: bool = False, seed: int = 0, batch_size: int = 4, warn: Warn = warn_stderr,
                   device="cpu", progress: bool = True, paths: Sequence[Path] | None = None) -> LatentCache:
    """The latent cache for the images under `root`: loaded from `cache_dir` if this exact
    (images, settings, model) was encoded before, else encoded now and saved there.

    `model_id` must change whenever the encoder's output would (checkpoint path + mtime, dtype, ...).
    `cache.reused` tells a hit from a miss; `cache.file` is where it lives. `paths`: these images of `root`
    only (a concept's training or held-out share) instead of all of them.
    """
    paths = find_images(root, warn) if paths is None else list(paths)
    key = cache_key(paths, resolution, crop, flip, model_id, seed)
    file = Path(cache_dir) / f"latents-{key[:24]}.safetensors"
    if file.is_file():
        try:
            return LatentCache.load(file, key=key, device=device)
        except DataError as e:
            warn(f"{e}; re-encoding")
    items = load_dataset(root, resolution, crop, flip, warn, seed, paths=paths)
    cache = LatentCache.build(items, encode, batch_size, device, progress)
    cache.save(file, key)
    return cache
