"""EvaluateSettings: evaluate.py's options (REAL and SYNTH are its positional arguments), the source of its
flags and of the README's table.

No torch here: evaluate.py checks its flags before torch is imported. The choices a flag offers are named here
and used by the modules that act on them (inception.py, preprocess.py, features.py)."""
from dataclasses import dataclass
from pathlib import Path

from mini_ldm.cli import weights_folder
from mini_ldm.demo import DEMO_DIR
from mini_ldm.errors import UserError
from mini_ldm.settings import check_positive, device_option, option

# the published Inception-v3 FID weights: pytorch-fid's file, and torch-fidelity's (the same network)
WEIGHTS_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
FEATURE_DIMS = (64, 192, 768, 2048)  # the Inception taps FID can use; 2048 is the final pool
RESIZE_MODES = ("antialias", "tf1")  # preprocess.py: to 299 px as torchmetrics >= 1.0, or as TensorFlow 1
WEIGHTS_HINT = ("download pt_inception-2015-12-05-6726825d.pth from "
                "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth "
                "(or torch-fidelity's weights-inception-2015-12-05-6726825d.pth from "
                "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth), "
                "put it in {folder}/ and run again, or pass --weights PATH (see weights/README.md)")


def missing_weights(path) -> str:
    """What to say when --weights names no file: checked with the flags, and again where weights are read."""
    return f"Inception weights file {path} does not exist; " + WEIGHTS_HINT.format(folder=weights_folder())


@dataclass
class EvaluateSettings:
    output: Path = option(Path("evaluation"), "folder for metrics.json, memorization.csv, memorization.png "
                                              "(and data_copying.png with --held-out)",
                          metavar="DIR", shown="evaluation/")
    weights: Path | None = option(None, f"Inception-v3 FID weights, {WEIGHTS_FILES[0]} (pytorch-fid) or "
                                        f"{WEIGHTS_FILES[1]} (torch-fidelity)", metavar="PATH",
                                  shown="the file in weights/")
    resize: str = option("antialias", "to 299 px: antialias (bilinear with antialiasing, torchmetrics >= 1.0) or "
                                      "tf1 (TensorFlow-1 bilinear, torch-fidelity and torchmetrics 0.x: the "
                                      "paper's numbers)", choices=RESIZE_MODES)
    zscore: bool = option(False, "the paper's per-image normalisation first: (x - mean) / std over the whole RGB "
                                 "image, * 64 + 128, clipped, 8-bit")
    dims: int = option(2048, "Inception features for FID and KID (2048: the final pool)", choices=FEATURE_DIMS)
    kid_subsets: int = option(100, "KID: random subsets averaged", metavar="N")
    kid_subset_size: int | None = option(None, "KID: images per subset", metavar="N", shown="min(1000, the smaller set)")
    is_splits: int = option(10, "Inception Score: splits of SYNTH (with fewer images than splits IS is "
                                "trivially 1.0 +- 0, and a warning says so)", metavar="N")
    memorization_top: int = option(16, "memorization.png shows the K closest synthetic/real pairs", metavar="K")
    no_mirror: bool = option(False, "memorisation audit: do not count a left-right mirrored copy of a real image "
                                    "as a copy (saves encoding the real set a second time, mirrored)")
    held_out: Path | None = option(None, "real images of REAL's kind that the generator never saw: adds the "
                                         "data-copying test C_T (Meehan et al. 2020) to metrics.json and "
                                         "data_copying.png", metavar="DIR")
    cells: int | None = option(None, "data-copying test: k-means cells on REAL (1 = no cells)", metavar="K",
                               shown="about 20 REAL images per cell, at most 20")
    min_cell: int = option(5, "data-copying test: a cell counts when it holds at least N synthetic and N "
                              "held-out images", metavar="N")
    seed: int = option(0, "seed of the KID subsets, the IS permutation and the k-means cells", metavar="N")
    device: str | None = device_option()
    batch: int = option(16, "images per Inception forward pass", metavar="N")
    cache_dir: Path | None = option(None, "where folder features are cached (key: files, sizes, mtimes, weights "
                                          "hash, settings; a damaged entry is computed again)", metavar="DIR",
                                    shown="~/.cache/mini-ldm/inception-features (under $XDG_CACHE_HOME if set)")
    no_cache: bool = option(False, "encode both folders again and cache nothing")
    demo: bool = option(False, "check the install: random Inception weights written once to "
                               f"{DEMO_DIR}/, REAL and SYNTH default to two small demo folders made there")

    def check(self) -> "EvaluateSettings":
        """Refuse bad numbers before anything is read."""
        for flag, value in (("--kid-subsets", self.kid_subsets), ("--is-splits", self.is_splits),
                            ("--batch", self.batch)):
            check_positive(flag, value)
        check_positive("--memorization-top", self.memorization_top, allow_zero=True)
        check_positive("--min-cell", self.min_cell)
        if self.cells is not None:
            check_positive("--cells", self.cells)
        if self.held_out is not None and not Path(self.held_out).is_dir():
            raise UserError(f"--held-out {self.held_out} does not exist or is not a folder; give the folder of real "
                            "images the generator never saw")
        if self.kid_subset_size is not None and self.kid_subset_size < 2:
            raise UserError(f"--kid-subset-size {self.kid_subset_size}: must be at least 2")
        return self
