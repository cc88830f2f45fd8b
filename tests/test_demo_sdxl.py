"""`train.py --demo --sdxl` then `sample.py --demo --sdxl`, as a user runs them in a fresh folder: the tiny random
SDXL (mini_ldm/demo_sdxl.py) is written once, loads through the normal loader as SDXL, a token is learned into an
SDXL embedding file (clip_l and clip_g) and drawn with. `--sdxl` without `--demo` is refused in one line."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import mini_ldm
from mini_ldm.demo_sdxl import BIG_G, CLIP_L

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run(script, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The two demo commands in one fresh folder; (folder, train's output, sample's output)."""
    cwd = tmp_path_factory.mktemp("sdxl-demo")
    trained = ok(run("train.py", "--demo", "--sdxl", "--steps", "3", "--device", "cpu", cwd=cwd))
    drawn = ok(run("sample.py", "--demo", "--sdxl", "--steps", "3", "--seed", "1", "--device", "cpu", cwd=cwd))
    return cwd, trained.stdout, drawn.stdout


def test_the_demo_model_is_an_sdxl_single_file(demo_run):
    cwd, trained, drawn = demo_run
    model = cwd / "demo-output" / "tiny-random-sdxl.safetensors"
    assert f"loaded demo-output/{model.name} (sdxl," in trained and f"loaded demo-output/{model.name} (sdxl," in drawn
    sd = mini_ldm.load(model)
    assert sd.family == "sdxl"
    assert sd.widths == (CLIP_L.width, BIG_G.width)  # two text encoders, side by side in the context
    assert sd.unet.cfg.adm_in_channels == BIG_G.projection_dim + 6 * 256  # pooled vector + size conditioning


def test_the_learned_token_is_an_sdxl_embedding_and_sample_uses_it(demo_run):
    cwd, _, drawn = demo_run
    embedding = cwd / "demo-output" / "effusion-sdxl.safetensors"  # the SD 2 demo's effusion.safetensors' twin
    with safe_open(str(embedding), "pt") as f:
        assert sorted(f.keys()) == ["clip_g", "clip_l"]
        assert f.get_tensor("clip_l").shape[1] == CLIP_L.width and f.get_tensor("clip_g").shape[1] == BIG_G.width
    assert not (cwd / "demo-output" / "effusion.safetensors").exists()  # the SD 2 demo's file is left alone
    assert f"learned tokens: <effusion> (4 vectors) from demo-output/{embedding.name}" in drawn
    png = cwd / "demo-output" / "00000-1.png"
    assert f"wrote demo-output/{png.name}" in drawn
    pixels = np.asarray(Image.open(png))
    assert pixels.shape[:2] == (64, 64) and pixels.std() > 0  # noise (the model is random), but drawn


@pytest.mark.parametrize("script", ["train.py", "sample.py"])
def test_sdxl_without_demo_is_refused_in_one_line(script, tmp_path):
    proc = run(script, "--sdxl", "--prompt" if script == "sample.py" else "--data", "x", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --sdxl: only with --demo (a real SDXL checkpoint is chosen with --model)"
