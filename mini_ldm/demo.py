"""What every `--demo` shares: the committed phantom model, and the names of the files the demos write.

The model is `weights/phantom-sd2.safetensors` (docs/phantom-model.md): a small SD 2 single file of our own,
trained by devkit/phantom_model.py on synthetic chest radiographs with captioned findings. It draws what its
prompts name ("chest radiograph, left pleural effusion"), so a token that `train.py --demo` learns from phantoms
with a finding shows that finding when `sample.py --demo` draws with it: the demo's pictures can be judged.
With --sdxl the demos load a tiny random SDXL instead (demo_sdxl.py), to show the SDXL code paths run.

No torch here: the CLIs build and check their --demo and --sdxl flags before torch is imported.
"""
from pathlib import Path

from .errors import UserError

DEMO_SIZE = 128  # pixels: the phantom model's native size (its autoencoder downsamples by 8: 16x16 latents)
DEMO_DIR = Path("demo-output")  # where the demos write, relative to the current folder
DEMO_MODEL = Path(__file__).resolve().parents[1] / "weights" / "phantom-sd2.safetensors"  # committed with the code
DEMO_TOKEN = "<effusion>"  # the finding `train.py --demo` learns ...
DEMO_EMBEDDING = DEMO_DIR / "effusion.safetensors"  # ... and where it goes, for `sample.py --demo` to use
DEMO_INIT = "dog"  # an unrelated word to start from: what the token draws is then learned, not given
DEMO_IMAGES = 100  # phantoms of the finding `train.py --demo` learns
DEMO_CONCEPT_IMAGES = 20  # phantoms per folder with --concepts (few: the evaluate demo runs Inception on each)
# for the flags not given with --demo; measured on the phantom model: a left effusion in 24/24 draws, ~20 s
DEMO_TRAINING = {"vectors": 4, "steps": 150, "lr": 0.05, "batch": 4, "preview_steps": 20}
DEMO_CONCEPTS = {"no-finding": {"effusion": "", "cardiomegaly": False, "nodule": False},  # train.py --demo
                 "effusion": {"effusion": "left", "cardiomegaly": False, "nodule": False}}  # --concepts: neg, pos


def demo_model_file(path: Path = DEMO_MODEL) -> Path:
    """The phantom model every --demo loads, as committed in weights/."""
    if not Path(path).is_file():
        raise UserError(f"{path}: the phantom model every --demo uses is missing; it is committed in the "
                        "repository's weights/ (restore it with git checkout, or remake it: python -m "
                        "devkit.phantom_model)")
    return Path(path)


def add_sdxl_flag(parser) -> None:
    """--sdxl: the demo's tiny random SDXL (demo_sdxl.py) instead of the phantom model."""
    parser.add_argument("--sdxl", action="store_true", help="with --demo: the tiny random SDXL model (two text "
                        "encoders, size conditioning) instead of the SD 2 one")


def check_sdxl_flag(args) -> None:
    """--sdxl picks the demo's model; without --demo it would be silently ignored."""
    if args.sdxl and not args.demo:
        raise UserError("--sdxl: only with --demo (a real SDXL checkpoint is chosen with --model)")


def sdxl_path(path: Path) -> Path:
    """A demo output's SDXL twin (phantom.safetensors -> phantom-sdxl.safetensors), so that the SD 2 demo's
    files, whose vectors are another width, are not replaced."""
    path = Path(path)
    return path.with_name(f"{path.stem}-sdxl{path.suffix}")


def demo_model(args) -> Path:
    """The model file a --demo run loads: the tiny SDXL with --sdxl (built on first use), else the phantom model."""
    if args.sdxl:
        from .demo_sdxl import demo_sdxl_model_file  # builds the model with torch

        return demo_sdxl_model_file()
    return demo_model_file()
