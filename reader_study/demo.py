"""`study.py create --demo`: a small study from generated grey 'chest X-rays' (readers.phantom), so the whole
loop (create, serve, read, report) runs with nothing to download. The 'synthetic' (B) set carries random blobs,
the 'real' (A) set none: a reader can learn to tell them apart, which is what the demo's report should show."""
import tempfile
from pathlib import Path

import numpy as np

from readers.phantom import chest_phantom

from .create import StudySpec, create_study
from .tasks import LABEL, PREFERENCE

DEMO_IMAGES = 8  # per set (per class for label)
DEMO_SIZE = 128


def _write_set(folder: Path, seed: int, blobs: int, n: int = DEMO_IMAGES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        chest_phantom(np.random.default_rng(seed + i), DEMO_SIZE, blobs=blobs).save(folder / f"phantom_{i:03d}.png")
    return folder


def create_demo(study, task: str, readers: tuple, seed: int, overwrite: bool) -> Path:
    with tempfile.TemporaryDirectory(prefix="study-demo-") as tmp:
        tmp = Path(tmp)
        if task == LABEL:
            for source, offset in (("real", 0), ("synthetic", 1000)):
                _write_set(tmp / source / "normal", seed + offset, blobs=0, n=DEMO_IMAGES // 2)
                _write_set(tmp / source / "nodule", seed + offset + 100, blobs=2, n=DEMO_IMAGES // 2)
        else:
            _write_set(tmp / "real", seed, blobs=0)
            _write_set(tmp / "synthetic", seed + 1000, blobs=3)
        keys = ("a", "b") if task == PREFERENCE else ("real", "synthetic")
        folders = {key: tmp / name for key, name in zip(keys, ("real", "synthetic"))}
        spec = StudySpec(task=task, folders=folders, names={"a": "phantom-plain", "b": "phantom-blobs"},
                         pairs=DEMO_IMAGES, readers=readers, seed=seed)
        return create_study(study, spec, overwrite=overwrite)
