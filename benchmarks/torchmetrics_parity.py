#!/usr/bin/env python
"""Our FID / KID / IS against torchmetrics' (FrechetInceptionDistance, KernelInceptionDistance, InceptionScore).

Both sides get the same random-weight Inception file (torch-fidelity layout), the same uint8 images and the same
resize mode, and run in float64. torchmetrics needs torch-fidelity, whose import pulls in torchvision, which is
not installable next to the project's CPU torch; so the torchmetrics side runs in its own venv under /tmp (made
on first use from the local wheels / PyPI), with torchvision replaced by an empty stub module (no torchvision code
is on the metrics' path). Nothing is installed into the project's environment.

    python benchmarks/torchmetrics_parity.py                 # both resize modes
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("MINI_LDM_ORACLE_VENV", "/tmp/mini-ldm-torchmetrics-venv"))
PACKAGES = ["torch==2.13.0+cpu", "torchmetrics", "torch-fidelity", "numpy", "pillow", "scipy", "tqdm",
            "lightning-utilities", "packaging", "typing-extensions", "filelock", "sympy", "networkx", "jinja2",
            "fsspec", "mpmath", "markupsafe", "setuptools"]

ORACLE = r'''
import importlib.abc, importlib.machinery, json, sys, types
import torch

class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """torchvision stand-in: every torchvision.* module exists and every attribute is a dummy class."""
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        m = types.ModuleType(spec.name); m.__path__ = []; m.__version__ = "0.0"
        m.__getattr__ = lambda attr: type(attr, (), {}); return m
    def exec_module(self, module): pass
sys.meta_path.insert(0, _Stub())

from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.image.inception import InceptionScore
import torchmetrics

args = json.loads(sys.argv[1])
data = torch.load(args["images"])
real, synth = data["real"], data["synth"]
antialias = args["resize"] == "antialias"

def net(tap):
    n = NoTrainInceptionV3("inception-v3-compat", [tap], args["weights"], antialias=antialias).to(torch.float64)
    n._dtype = torch.float64
    return n

fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=args["weights"], antialias=antialias)
fid.inception = net("2048"); fid.set_dtype(torch.float64)
fid.update(real, real=True); fid.update(synth, real=False)
# KID and IS take no weights path: their network is passed in (a Module `feature`), built as FID builds its own
kid = KernelInceptionDistance(feature=net("2048"), subsets=args["subsets"], subset_size=args["subset_size"])
kid.set_dtype(torch.float64)
kid.update(real, real=True); kid.update(synth, real=False)
isc = InceptionScore(feature=net("logits_unbiased"), splits=args["splits"])
isc.set_dtype(torch.float64)
isc.update(synth)
torch.manual_seed(args["seed"]); kid_mean, kid_std = kid.compute()
torch.manual_seed(args["seed"]); is_mean, is_std = isc.compute()
print(json.dumps({"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
                  "is_mean": float(is_mean), "is_std": float(is_std), "torchmetrics": torchmetrics.__version__}))
'''


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *PACKAGES], check=True)
    return python


def ours(images: dict, weights: Path, resize: str, args) -> dict:
    import torch

    from measure.inception import load_inception
    from measure.metrics import fid, inception_score, kid
    from measure.features import image_features

    model = load_inception(weights, dtype=torch.float64)
    real = image_features(list(images["real"]), model, resize, batch=8)
    synth = image_features(list(images["synth"]), model, resize, batch=8)
    kid_mean, kid_std = kid(real["features"], synth["features"], args.subsets, args.subset_size, seed=args.seed)
    is_mean, is_std = inception_score(synth["logits"], args.splits, seed=args.seed)
    return {"fid": fid(real["features"], synth["features"]), "kid_mean": kid_mean, "kid_std": kid_std,
            "is_mean": is_mean, "is_std": is_std}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-real", type=int, default=24)
    p.add_argument("--n-synth", type=int, default=20)
    p.add_argument("--subsets", type=int, default=10)
    p.add_argument("--subset-size", type=int, default=16)
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resize", nargs="+", default=["tf1", "antialias"])
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "torchmetrics_parity.json")
    args = p.parse_args()
    sys.path[:0] = [str(REPO)]
    import torch

    from devkit.eval_images import blob_image, structured_image
    from devkit.inception_weights import random_inception_state, save_torch_fidelity_layout
    from measure.features import preprocess

    python = ensure_venv()
    tmp = Path(tempfile.mkdtemp())
    weights = save_torch_fidelity_layout(random_inception_state(seed=0), tmp / "weights-inception-random.pth")
    images = {"real": torch.stack([preprocess(structured_image(s, 96), False) for s in range(args.n_real)]),
              "synth": torch.stack([preprocess((structured_image if s % 2 else blob_image)(500 + s, 96), False)
                                    for s in range(args.n_synth)])}
    torch.save(images, tmp / "images.pt")
    results = {}
    for resize in args.resize:
        spec = dict(images=str(tmp / "images.pt"), weights=str(weights), resize=resize, seed=args.seed,
                    subsets=args.subsets, subset_size=args.subset_size, splits=args.splits)
        run = subprocess.run([str(python), "-c", ORACLE, json.dumps(spec)], capture_output=True, text=True)
        if run.returncode:
            sys.exit(run.stderr)
        theirs = json.loads(run.stdout.strip().splitlines()[-1])
        mine = ours(images, weights, resize, args)
        rel = {k: abs(mine[k] - theirs[k]) / abs(theirs[k]) for k in mine}
        results[resize] = {"ours": mine, "torchmetrics": theirs, "relative_difference": rel}
        print(resize, json.dumps(results[resize], indent=1))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
