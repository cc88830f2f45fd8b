"""The data-copying test C_T (measure/copying.py, stats/ranks.py) and `evaluate.py --held-out`.

The math is checked on feature arrays drawn here, where the truth is known: a "generator" that returns noisy
copies of REAL, one that draws fresh samples of REAL's distribution, one whose samples spread wider than REAL's.
The Mann-Whitney Z is checked against scipy (test-only oracle), and C_T with one cell against it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from devkit.eval_images import noised_recompressed, structured_image, write_images
from devkit.inception_weights import random_inception_state, save_pytorch_fid_layout
from measure.copying import data_copying, default_cells, kmeans, nearest
from stats.ranks import mann_whitney_u, mann_whitney_z

REPO = Path(__file__).resolve().parents[1]
DIMS = 32


def scipy_z(x, y) -> float:
    """Z from scipy's one-sided asymptotic p (tie-corrected, no continuity correction): p = Phi(Z)."""
    p = scipy_stats.mannwhitneyu(x, y, alternative="less", use_continuity=False, method="asymptotic").pvalue
    return float(scipy_stats.norm.ppf(p))


# --------------------------------------------------------------------------- Mann-Whitney Z

@pytest.mark.parametrize("ties", [False, True])
def test_mann_whitney_z_equals_scipy(ties):
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, 40), rng.normal(0.4, 1, 55)
    if ties:  # few distinct values: the tie correction matters
        x, y = np.round(x), np.round(y)
    assert mann_whitney_u(x, y) == scipy_stats.mannwhitneyu(x, y).statistic
    assert mann_whitney_z(x, y) == pytest.approx(scipy_z(x, y), abs=1e-9)
    assert mann_whitney_z(x, y) < 0  # x is the smaller sample
    assert mann_whitney_z(y, x) == pytest.approx(-mann_whitney_z(x, y))


def test_mann_whitney_z_of_all_equal_values_is_zero():
    assert mann_whitney_z([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.0


# --------------------------------------------------------------------------- k-means

def test_kmeans_finds_separated_clusters_and_is_seeded():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 30)
    points = rng.normal(0, 0.1, (120, 5)) + np.eye(5)[truth] * 10
    centres = kmeans(points, 4, seed=1)
    labels = nearest(points, centres)
    for j in range(4):  # each true cluster is one cell
        assert len(set(labels[truth == j])) == 1
    assert len(set(labels)) == 4
    np.testing.assert_array_equal(centres, kmeans(points, 4, seed=1))


def test_default_cells():
    assert [default_cells(n) for n in (5, 29, 30, 100, 10_000)] == [1, 1, 2, 5, 20]


# --------------------------------------------------------------------------- C_T

def gaussian(rng, n, scale=1.0):
    return rng.normal(0, scale, (n, DIMS))


def test_noisy_copies_of_real_are_copying():
    rng = np.random.default_rng(0)
    real, held = gaussian(rng, 200), gaussian(rng, 200)
    copies = real[rng.integers(200, size=200)] + rng.normal(0, 0.05, (200, DIMS))
    result = data_copying(real, copies, held)
    assert result.ct < -3 and result.verdict == "copying"
    assert "copies" in result.explanation()


def test_fresh_samples_of_reals_distribution_are_neither():
    cts = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        result = data_copying(gaussian(rng, 200), gaussian(rng, 200), gaussian(rng, 200), seed=seed)
        cts.append(result.ct)
        assert result.verdict == "neither", result.ct
    assert abs(np.mean(cts)) < 1.5  # C_T is a Z under the null: centred on 0


def test_samples_spread_wider_than_real_are_underfitting():
    """Meehan et al.'s over-smoothed generator (a wide kernel): further from REAL than new real images are."""
    rng = np.random.default_rng(1)
    result = data_copying(gaussian(rng, 200), gaussian(rng, 200, scale=1.5), gaussian(rng, 200))
    assert result.ct > 3 and result.verdict == "underfitting"


def test_one_cell_is_the_mann_whitney_z_of_the_nearest_real_distances():
    rng = np.random.default_rng(2)
    real, synth, held = gaussian(rng, 60), gaussian(rng, 40, scale=0.9), gaussian(rng, 50)
    result = data_copying(real, synth, held, cells=1)
    nn = lambda a: np.sqrt(((a[:, None, :] - real[None]) ** 2).sum(-1)).min(1)  # noqa: E731, by brute force
    assert result.ct == pytest.approx(scipy_z(nn(synth), nn(held)), abs=1e-9)
    assert result.cells == [{"n_real": 60, "n_synth": 40, "n_held_out": 50, "z": result.ct, "weight": 1.0}]


def test_ct_is_the_real_share_weighted_mean_over_the_cells_that_count():
    rng = np.random.default_rng(4)
    centres = np.eye(DIMS)[:3] * 20
    real = np.concatenate([c + gaussian(rng, n) for c, n in zip(centres, (30, 60, 90))])
    synth = np.concatenate([c + gaussian(rng, n) for c, n in zip(centres, (20, 20, 2))])  # the third: too few
    held = np.concatenate([c + gaussian(rng, 20) for c in centres])
    result = data_copying(real, synth, held, cells=3, min_cell=5)
    counted = [c for c in result.cells if c["z"] is not None]
    assert sorted(c["n_real"] for c in counted) == [30, 60]
    expected = sum(c["n_real"] * c["z"] for c in counted) / 90
    assert result.ct == pytest.approx(expected)
    assert sum(c["weight"] for c in result.cells) == pytest.approx(1.0)


def test_no_cell_with_enough_images_is_undetermined():
    rng = np.random.default_rng(5)
    result = data_copying(gaussian(rng, 30), gaussian(rng, 3), gaussian(rng, 30), cells=1)
    assert result.ct is None and result.verdict == "undetermined" and "--min-cell" in result.explanation()


# --------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("copying")
    weights = save_pytorch_fid_layout(random_inception_state(seed=0), root / "pt_inception-2015-12-05-6726825d.pth")
    real = [structured_image(s) for s in range(10)]
    write_images(root / "real", real)
    write_images(root / "copies", [noised_recompressed(im, s, sigma=2.0) for s, im in enumerate(real)])
    write_images(root / "held-out", [structured_image(100 + s) for s in range(10)])
    return root, weights


def evaluate(root, weights, *args):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MINI_LDM_WEIGHTS="/nonexistent-weights")
    cmd = [sys.executable, str(REPO / "evaluate.py"), *map(str, args), "--weights", str(weights), "--device", "cpu",
           "--dims", "64", "--kid-subsets", "2", "--is-splits", "2", "--cache-dir", str(root / "cache"),
           "--output", str(root / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_finds_copies_and_draws_both_distributions(setup):
    root, weights = setup
    code, out, err = evaluate(root, weights, root / "real", root / "copies", "--held-out", root / "held-out",
                              "--cells", "1")
    assert code == 0, err
    copying = json.loads((root / "out" / "metrics.json").read_text())["data_copying"]
    assert copying["k"] == 1 and copying["verdict"] == "copying" and copying["ct"] < -3
    assert copying["cells"][0] | {"z": None} == {"n_real": 10, "n_synth": 10, "n_held_out": 10, "z": None,
                                                 "weight": 1.0}
    assert "data copying C_T" in out and "copying" in out
    with Image.open(root / "out" / "data_copying.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    assert ((pixels[..., 0] > 150) & (pixels[..., 2] < 100)).any()  # the red (synthetic) curve
    assert ((pixels[..., 2] > 150) & (pixels[..., 0] < 100)).any()  # the blue (held-out) curve
    # without --held-out nothing of it
    code, _, err = evaluate(root, weights, root / "real", root / "copies")
    assert code == 0, err
    assert "data_copying" not in json.loads((root / "out" / "metrics.json").read_text())


@pytest.mark.parametrize("args, words", [
    (["--held-out", "{root}/nothing"], "--held-out"),
    (["--held-out", "{root}/held-out", "--cells", "0"], "--cells 0"),
    (["--held-out", "{root}/held-out", "--cells", "11"], "--cells 11"),
    (["--held-out", "{root}/held-out", "--min-cell", "0"], "--min-cell 0"),
])
def test_bad_data_copying_flags_are_one_line_and_exit_2(setup, args, words):
    root, weights = setup
    code, _, err = evaluate(root, weights, root / "real", root / "copies", *(a.format(root=root) for a in args))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0]
