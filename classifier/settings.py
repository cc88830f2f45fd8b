"""ClassifySettings: everything that defines a classifier experiment; the source of classify.py's flags and
what results.json records. Defaults follow the paper's classifier (its train.py and conf/config.yaml)."""
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from mini_ldm.demo import DEMO_DIR
from mini_ldm.errors import UserError
from mini_ldm.model_settings import DTYPE_NAMES
from mini_ldm.settings import SEED_LIMIT, check_positive, check_utf8, device_option, option

LEVELS = ("none", "light", "heavy")  # --augment: none, or one of augment.RECIPES
ARM_KINDS = ("real", "real+synthetic", "synthetic")
INPUTS = ("train", "val", "test", "synthetic")  # the image folders, as fields (and flags)
MAX_PIXELS = 2**26  # 8192 x 8192; PIL decodes a whole image first, 12000 x 12000 cost 4.5 GB
# what does not change a result: a rerun may differ in these and still continue the same experiment
NOT_IDENTITY = ("output", "overwrite", "device", "demo", "max_pixels")


@dataclass(frozen=True)
class Arm:
    """One training set: the real train folder, the synthetic folder (all of it, or `count` per class), or both."""
    real: bool
    synthetic: bool
    count: int | None = None  # synthetic images per class; None: all

    @property
    def name(self) -> str:
        base = "+".join(part for part, used in (("real", self.real), ("synthetic", self.synthetic)) if used)
        return base if self.count is None else f"{base}:{self.count}"


@dataclass
class ClassifySettings:
    train: Path | None = option(None, "real training images, one subfolder per class (exactly two)", metavar="DIR",
                                shown="(required for the real arms)")
    val: Path | None = option(None, "real validation images (picks the best checkpoint), same class subfolders",
                              metavar="DIR", shown="(required)")
    test: Path | None = option(None, "real test images, same class subfolders; every AUC is measured here",
                               metavar="DIR", shown="(required)")
    synthetic: Path | None = option(None, "synthetic training images, same class subfolders (what sample.py "
                                          "--prompts-file writes)", metavar="DIR")
    positive: str | None = option(None, "the positive class (label 1, its probability is the score)",
                                  metavar="NAME", shown="pos if present, else the second class in sorted order")
    arms: str | None = option(None, "training sets to compare, comma-separated: real, real+synthetic, synthetic",
                              shown="every arm the given folders allow")
    synthetic_count: str | None = option(None, "also one real+synthetic arm per count N, with N synthetic images "
                                               "per class (a subset fixed by --seed)", metavar="N[,N...]")
    repeats: int = option(5, "trainings per arm; repeat r of every arm uses seed --seed + r (paired arms)")
    seed: int = option(0, "first seed (head, batches, augmentation; synthetic subsets); a fixed one (0 or more), "
                          "so that repeats pair up across arms")
    steps: int = option(6250, "optimiser steps per training (the paper's)")
    batch: int = option(32, "images per step (at least 2 at --size 32, where BatchNorm's last layers see 1x1 maps)")
    lr: float = option(1e-4, "Adam learning rate, constant")
    size: int = option(196, "images are resized to SIZE x SIZE pixels (bilinear, no ImageNet normalisation)")
    max_pixels: int = option(MAX_PIXELS, "refuse, before any training, an image whose header says it holds more "
                                         "pixels than this (it is decoded whole before resizing)", metavar="N",
                             shown="67108864 (8192 x 8192)")
    val_every: int | None = option(None, "validation AUC every N steps and at the end; the best is tested",
                                   metavar="N", shown="one epoch of the training set (the paper's)")
    augment: str = option("heavy", "training augmentation, the paper's levels written in torch", choices=LEVELS)
    weights: Path | None = option(None, "torchvision's ImageNet ResNet-18 file", metavar="FILE",
                                  shown="weights/resnet18-f37072fd.pth")
    from_scratch: bool = option(False, "random initial weights instead of ImageNet ones (no weights file needed)")
    device: str | None = device_option()
    dtype: str | None = option(None, "autocast precision on CUDA (fp32 elsewhere)", choices=DTYPE_NAMES,
                               shown="bf16 on a CUDA GPU that has it, else fp32")
    output: Path = option(Path("classification"), "folder for results.json, predictions.csv, roc.png and the "
                                                   "finished trainings (runs/); not inside an input folder",
                          metavar="DIR")
    overwrite: bool = option(False, "start afresh where --output holds an experiment with other settings or "
                                    "trainings on images that have changed since")
    demo: bool = option(False, "check the install: a tiny from-scratch run on generated chest phantoms "
                               "where --train, --val, --test or --synthetic is not given; flags given win "
                               f"(writes {DEMO_DIR / 'classify'}/, replacing an earlier demo there; an --output "
                               "given is replaced only with --overwrite)")

    def __post_init__(self):  # the Python API may pass folders as text
        for name in ("train", "val", "test", "synthetic", "weights", "output"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, Path(getattr(self, name)))

    def check(self) -> "ClassifySettings":
        """Refuse what cannot be honoured, before any image is read. Returns self."""
        self.check_values()
        for flag, value in (("--val", self.val), ("--test", self.test)):
            if value is None:
                raise UserError(f"{flag}: give the folder of real {flag[2:]} images (one subfolder per class)")
        self.check_paths()
        self.arm_list()
        return self

    def check_values(self) -> None:
        """The numbers and the choices among flags, which --demo leaves as typed: checked before it writes."""
        for flag, value in (("--repeats", self.repeats), ("--steps", self.steps), ("--batch", self.batch),
                            ("--size", self.size), ("--max-pixels", self.max_pixels)):
            check_positive(flag, value)
        if self.size < 32:
            raise UserError(f"--size {self.size}: ResNet-18 downsamples 32 times; use at least 32")
        if self.batch * last_map_side(self.size) ** 2 < 2:  # BatchNorm in training needs two values per channel
            raise UserError(f"--batch {self.batch} --size {self.size}: ResNet-18's last layers see 1x1 maps at this "
                            "size, and BatchNorm needs more than one value per channel in training; use --batch 2 "
                            "or more, or --size 33 or more")
        if self.val_every is not None:
            check_positive("--val-every", self.val_every)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr {self.lr}: must be a positive number, e.g. 0.0001")
        last = SEED_LIMIT - self.repeats  # repeat r uses --seed + r, and a seed must stay below SEED_LIMIT
        if not isinstance(self.seed, int) or not 0 <= self.seed <= last:
            raise UserError(f"--seed {self.seed}: needs a fixed seed, a whole number from 0 to {last} (repeat r "
                            f"uses --seed + r, with --repeats {self.repeats})")
        if self.weights is not None and self.from_scratch:
            raise UserError(f"--weights {self.weights} and --from-scratch: choose one")

    def check_paths(self) -> None:
        """Folder names in UTF-8 (they are written into results.json), and no --output inside an input folder:
        its roc.png would be read back as a test image, its runs/ as a class folder."""
        for name in (*INPUTS, "weights", "output"):
            check_utf8(f"--{name}", getattr(self, name))
        output = self.output.resolve()
        for name in INPUTS:
            folder = getattr(self, name)
            if folder is not None and output.is_relative_to(folder.resolve()):
                raise UserError(f"--output {self.output}: lies inside --{name} {folder}, so its files would be read "
                                f"as images on the next run; choose an --output outside the image folders")

    def counts(self) -> list:
        if self.synthetic_count is None:
            return []
        try:
            counts = [int(text) for text in self.synthetic_count.split(",")]
        except ValueError:
            counts = [0]
        if not counts or min(counts) < 1 or len(set(counts)) != len(counts):  # a count twice: one arm listed twice
            raise UserError(f"--synthetic-count {self.synthetic_count}: give whole numbers of at least 1, "
                            "comma-separated, each once, e.g. 100,500")
        return counts

    def arm_list(self) -> list:
        """The arms to train, in order; refuses arms whose folders were not given."""
        if self.arms is None:
            kinds = [k for k in ARM_KINDS if ("real" not in k or self.train) and ("synthetic" not in k or self.synthetic)]
        else:
            kinds = [k.strip() for k in self.arms.split(",")]
            unknown = [k for k in kinds if k not in ARM_KINDS]
            if unknown or len(set(kinds)) != len(kinds):
                raise UserError(f"--arms {self.arms}: choose among {', '.join(ARM_KINDS)}, each once")
        arms = [Arm("real" in k, "synthetic" in k) for k in kinds]
        arms += [Arm(True, True, n) for n in self.counts()]
        for arm in arms:
            for needed, flag, folder in ((arm.real, "--train", self.train), (arm.synthetic, "--synthetic", self.synthetic)):
                if needed and folder is None:
                    raise UserError(f"{flag}: the {arm.name} arm needs it; give the folder (or leave the arm out "
                                    "with --arms)")
        if not arms:
            raise UserError("--train or --synthetic: give at least one training folder")
        return arms

    def identity(self) -> dict:
        """The settings a finished training depends on, as JSON-ready values."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k not in NOT_IDENTITY}


def last_map_side(size: int) -> int:
    """The side of ResNet-18's last feature maps for SIZE x SIZE input: five stride-2 steps (conv1, the max
    pool, layer2-4), each rounding up."""
    for _ in range(5):
        size = (size - 1) // 2 + 1
    return size
