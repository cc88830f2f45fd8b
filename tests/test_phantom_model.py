"""The phantom model's honesty checks: the finding detectors on labelled phantoms, then (below) the model.

Every tolerance here was written down before the numbers were looked at.
"""
import subprocess
import sys
from pathlib import Path

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


def test_an_interrupted_training_run_resumes_to_the_same_model(tmp_path, monkeypatch):
    """Killed after its UNet's second step (states saved every step here), then rerun: the same file, byte for
    byte, as a run never interrupted (every step's randomness comes from the seed, stage and step)."""
    from devkit import phantom_model as pm
    monkeypatch.setattr(pm, "CHECKPOINT_EVERY", 1)
    args = ["--images", "4", "--vae-steps", "2", "--unet-steps", "3"]
    pm.main(["--output", str(tmp_path / "whole" / "m.safetensors")] + args)
    real_loss, calls = pm.unet_loss, []

    def dies_at_the_third_step(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(pm, "unet_loss", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        pm.main(["--output", str(tmp_path / "cut" / "m.safetensors")] + args)
    monkeypatch.setattr(pm, "unet_loss", real_loss)
    pm.main(["--output", str(tmp_path / "cut" / "m.safetensors")] + args)
    assert "UNet: resumed at step 2" in (tmp_path / "cut" / "m.log").read_text()
    assert (tmp_path / "cut" / "m.safetensors").read_bytes() == (tmp_path / "whole" / "m.safetensors").read_bytes()


def test_the_bundled_phantom_model_yields_to_a_users_checkpoint(tmp_path):
    from mini_ldm.cli import BUNDLED_MODEL, find_default_model
    (tmp_path / BUNDLED_MODEL).write_bytes(b"x")
    assert find_default_model(tmp_path) == tmp_path / BUNDLED_MODEL
    (tmp_path / "512-base-ema.safetensors").write_bytes(b"x")
    assert find_default_model(tmp_path) == tmp_path / "512-base-ema.safetensors"


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


# --- the committed model ---------------------------------------------------------------------------
# Stated before the model was sampled: N seeds per prompt (0..N-1), DPM++ 2M, 20 steps, CFG 3 (the paper's 2-3).
#   "left pleural effusion": left effusion measured in >= 60% ("most"), right effusion in <= 30%
#   "no finding":            left effusion in <= 25%, right effusion in <= 25% ("few")
#   "enlarged heart":        mean CTR above "no finding"'s by >= 0.05, one-sided Mann-Whitney p < 0.01
#   unprompted (empty prompt, no guidance) vs 200 fresh training-distribution phantoms: Fisher's exact test
#   on effusion (either side) and on cardiomegaly, Mann-Whitney on the CTR, each two-sided, none rejects at
#   alpha = 0.01.
MODEL = Path(__file__).resolve().parents[1] / "weights" / "phantom-sd2.safetensors"
N = 24
ALPHA = 0.01


@pytest.fixture(scope="module")
def phantom_sd():
    import mini_ldm
    assert MODEL.is_file(), f"{MODEL} is missing: it is committed; python -m devkit.phantom_model remakes it"
    return mini_ldm.load(MODEL, device="cpu", dtype="fp32")


def _measured(sd, prompt: str, cfg: float = 3.0, n: int = N, learned: dict | None = None) -> list:
    from mini_ldm import SampleSettings
    settings = SampleSettings(prompt=prompt, steps=20, cfg=cfg, scheduler="dpm++2m")
    images, _ = sd.sample_seeds(settings, list(range(n)), learned=learned or {})
    return [measure(image) for image in images]


@pytest.fixture(scope="module")
def no_finding(phantom_sd):
    return _measured(phantom_sd, "chest radiograph, no finding")


def test_committed_model_is_a_small_sd2_file_the_loader_reads(phantom_sd):
    assert MODEL.stat().st_size < 20e6
    assert (phantom_sd.family, phantom_sd.native_size, phantom_sd.prediction) == ("sd2", 128, "epsilon")


def test_left_effusion_prompt_draws_left_effusions_and_no_finding_few(phantom_sd, no_finding):
    left = _measured(phantom_sd, "chest radiograph, left pleural effusion")
    assert np.mean([m.effusion_left for m in left]) >= 0.6
    assert np.mean([m.effusion_right for m in left]) <= 0.3
    assert np.mean([m.effusion_left for m in no_finding]) <= 0.25
    assert np.mean([m.effusion_right for m in no_finding]) <= 0.25


def test_enlarged_heart_prompt_raises_the_cardiothoracic_ratio(phantom_sd, no_finding):
    from scipy.stats import mannwhitneyu
    enlarged = [m.ctr for m in _measured(phantom_sd, "chest radiograph, enlarged heart")]
    normal = [m.ctr for m in no_finding]
    assert np.mean(enlarged) - np.mean(normal) >= 0.05, (np.mean(enlarged), np.mean(normal))
    assert mannwhitneyu(enlarged, normal, alternative="greater").pvalue < ALPHA


def test_unprompted_samples_match_the_training_phantoms(phantom_sd):
    from scipy.stats import fisher_exact, mannwhitneyu
    drawn = _measured(phantom_sd, "", cfg=1.0, n=32)
    real = [measure(image) for image, _ in chest_cases(seed=11, count=200)]

    def table(feature):
        return [[sum(map(feature, drawn)), sum(not feature(m) for m in drawn)],
                [sum(map(feature, real)), sum(not feature(m) for m in real)]]

    assert fisher_exact(table(lambda m: m.effusion_left or m.effusion_right)).pvalue >= ALPHA
    assert fisher_exact(table(lambda m: m.cardiomegaly)).pvalue >= ALPHA
    assert mannwhitneyu([m.ctr for m in drawn], [m.ctr for m in real]).pvalue >= ALPHA


# --- Textual Inversion on the committed model ------------------------------------------------------
# Stated before the run: train.py learns <effusion> from TI_IMAGES phantoms that all show a left pleural effusion
# (their other findings at the generator's rates; captions unused: the template is the bare token), from the
# unrelated word "dog". Of N images drawn with "<effusion>" (seeds 0..N-1, as above) >= 70% show a left effusion
# (the training rate is 100%: a tolerance of 30 points).
# The control first stated here, "of N drawn with 'dog' alone <= 30% do", failed on its first run: 8/24 = 33%.
# An unrelated word draws from the model's overall distribution, where a quarter of the phantoms have a left
# effusion (40% effusion x 62.5% left or both): the tolerance was wrong, not the model. Restated before the next
# run: the token's rate exceeds the init word's (Fisher's exact test, one-sided, p < ALPHA); and a token trained
# the same way on phantoms WITHOUT effusion draws a left effusion in <= 25% (its training rate is 0%).
TI_IMAGES, TI = 100, {"vectors": 4, "steps": 150, "lr": 0.05, "batch": 4}


def _learn(tmp_path, name: str, effusion: str) -> dict:
    """{token: vectors} learned by train.py (a subprocess, as a user runs it) on TI_IMAGES phantoms."""
    from mini_ldm.embeddings import read_embedding
    from ti.phantoms import write_chest_phantoms
    data = write_chest_phantoms(tmp_path / name, TI_IMAGES, seed=5, effusion=effusion)
    out = tmp_path / f"{name}.safetensors"
    args = [sys.executable, "train.py", "--model", str(MODEL), "--device", "cpu", "--data", str(data),
            "--token", "<effusion>", "--init", "dog", "--save-every", "0", "--output", str(out)]
    args += [str(a) for k, v in TI.items() for a in (f"--{k}", v)]
    done = subprocess.run(args, cwd=MODEL.parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"<effusion>": read_embedding(out).vectors}


def test_textual_inversion_learns_a_left_effusion_from_phantoms(phantom_sd, tmp_path):
    from scipy.stats import fisher_exact
    with_token = sum(m.effusion_left for m in _measured(phantom_sd, "<effusion>", learned=_learn(
        tmp_path, "effusion", "left")))
    init_word = sum(m.effusion_left for m in _measured(phantom_sd, "dog"))
    clear = sum(m.effusion_left for m in _measured(phantom_sd, "<effusion>", learned=_learn(tmp_path, "clear", "")))
    assert with_token >= 0.7 * N, with_token
    assert fisher_exact([[with_token, N - with_token], [init_word, N - init_word]],
                        alternative="greater").pvalue < ALPHA, (with_token, init_word)
    assert clear <= 0.25 * N, clear
