"""The phantom model's honesty checks: the finding detectors on labelled phantoms, then (below) the model.

Every tolerance here was written down before the numbers were looked at.
"""
import numpy as np
import pytest

from readers.chest_findings import chest_case, chest_cases
from readers.findings import measure

DETECTOR_CASES = 300  # labelled phantoms the detectors are scored on (seed 7, the generator's own rates)


@pytest.fixture(scope="module")
def scored():
    return [(truth, measure(image)) for image, truth in chest_cases(seed=7, count=DETECTOR_CASES)]


def test_effusion_detector_is_right_per_side_on_97_percent(scored):
    for side in ("left", "right"):
        right = np.mean([getattr(t, f"effusion_{side}") == getattr(m, f"effusion_{side}") for t, m in scored])
        assert right >= 0.97, (side, right)


def test_cardiothoracic_ratio_within_002_and_cardiomegaly_right_on_97_percent(scored):
    errors = np.array([abs(t.ctr - m.ctr) for t, m in scored])
    assert errors.mean() <= 0.02, errors.mean()
    assert np.mean([t.cardiomegaly == m.cardiomegaly for t, m in scored]) >= 0.97


def test_nodule_detector_sensitivity_90_specificity_95_percent(scored):
    with_nodule = [m.nodule for t, m in scored if t.nodule]
    without = [not m.nodule for t, m in scored if not t.nodule]
    assert len(with_nodule) >= 50 and len(without) >= 50
    assert np.mean(with_nodule) >= 0.9, np.mean(with_nodule)
    assert np.mean(without) >= 0.95, np.mean(without)


def test_side_convention_patient_left_is_image_right():
    image, truth = chest_case(np.random.default_rng(3), effusion="left", cardiomegaly=False, nodule=False)
    pixels = np.asarray(image, dtype=float)
    lower = slice(int(0.66 * 128), int(0.76 * 128))  # the lung bases' rows
    assert pixels[lower, 64:].mean() > pixels[lower, :64].mean() + 20  # fluid is brighter than air: image right
    assert truth.caption == "chest radiograph, left pleural effusion"


# --- the training script, a few steps --------------------------------------------------------------

def test_training_script_runs_resumes_and_writes_a_loadable_sd2_file(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import mini_ldm
    out = tmp_path / "phantom.safetensors"
    base = [sys.executable, "-m", "devkit.phantom_model", "--output", str(out), "--images", "8", "--vae-steps", "2"]
    root = Path(__file__).resolve().parents[1]
    for steps in ("2", "3"):  # the second run continues the first from its saved state
        done = subprocess.run(base + ["--unet-steps", steps], cwd=root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    log = out.with_suffix(".log").read_text()
    assert "UNet: resumed at step 2" in log and "UNet step 3/3" in log and "latent std" in log
    sd = mini_ldm.load(out, device="cpu")
    assert (sd.family, sd.native_size, sd.prediction) == ("sd2", 128, "epsilon")
    assert sd.text_encoder.embeddings.token_embedding.weight.shape == (49408, 64)


def test_folding_the_latent_scale_keeps_the_decoder_and_gives_unit_std(tmp_path):
    import torch

    from devkit import phantom_model as pm
    from mini_ldm.vae import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(pm.VAE).eval()
    images = torch.from_numpy(np.stack([np.asarray(im) for im, _ in chest_cases(seed=1, count=8)]))
    x = pm.to_pixels(images)
    with torch.no_grad():
        before = vae.decode(vae.encode(x)[0])
        pm.fold_latent_scale(vae, images, tmp_path, pm.Log(tmp_path / "log"))
        mean, _ = vae.encode(x)
        after = vae.decode(mean)
    assert torch.allclose(before, after, atol=1e-4)
    assert abs((mean * pm.SD_LATENT_SCALE).std().item() - 1) < 1e-3
