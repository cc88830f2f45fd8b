"""classify.py and classifier/: the statistics against independent computations, ResNet-18 against a functional
reference forward in torchvision's key layout (torchvision itself stays out), the augmentations' geometry,
a small two-class task where informative training images raise the AUC, resume, and bad input."""
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from stats import auc as stats
from classifier.augment import RECIPES, affine, augment, optical_distortion
from classifier.experiment import epoch_batches, run_experiment, steps_per_epoch
from classifier.report import write_outputs
from classifier.settings import ClassifySettings
from processes import stop, wait_until
from classifier.resnet import ResNet18, build, read_backbone
from classifier.toy_classes import write_toy_classes
from mini_ldm.errors import UserError

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- statistics

def brute_force_auc(pos, neg) -> float:
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in pos for y in neg) / (len(pos) * len(neg))


def reference_delong(scores_list, labels) -> tuple:
    """DeLong et al. (1988) straight from the definition, O(m n): AUCs and their covariance matrix."""
    labels = np.asarray(labels)
    aucs, v10s, v01s = [], [], []
    for scores in scores_list:
        scores = np.asarray(scores, dtype=float)
        pos, neg = scores[labels == 1], scores[labels == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (m, n)
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    s10, s01 = np.atleast_2d(np.cov(np.array(v10s))), np.atleast_2d(np.cov(np.array(v01s)))
    return np.array(aucs), s10 / len(v10s[0]) + s01 / len(v01s[0])


def random_case(seed: int, m: int = 23, n: int = 31, levels: int = 7):
    """Scores on a coarse grid (many ties), positives shifted up a little."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(m, int), np.zeros(n, int)]
    rng.shuffle(labels)
    a = rng.integers(0, levels, m + n) + labels
    b = a + rng.integers(-2, 3, m + n)  # a correlated second scorer
    return a.astype(float), b.astype(float), labels


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_the_mann_whitney_statistic_with_half_ties(seed):
    a, _, labels = random_case(seed)
    pos, neg = a[labels == 1], a[labels == 0]
    assert stats.auc_mann_whitney(a, labels) == pytest.approx(brute_force_auc(pos, neg), abs=1e-12)
    u = scipy.stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert stats.auc_mann_whitney(a, labels) == pytest.approx(u / (len(pos) * len(neg)), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_delong_variance_ci_and_paired_test_equal_the_definition(seed):
    a, b, labels = random_case(seed)
    aucs, cov = reference_delong([a, b], labels)
    assert stats.delong_variance(a, labels) == pytest.approx(cov[0, 0], rel=1e-10)
    assert stats.delong_variance(b, labels) == pytest.approx(cov[1, 1], rel=1e-10)
    half = 1.959963984540054 * math.sqrt(cov[0, 0])
    assert stats.auc_ci95(a, labels) == pytest.approx((max(0, aucs[0] - half), min(1, aucs[0] + half)), abs=1e-12)
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert stats.delong_paired_test(a, b, labels) == pytest.approx(2 * scipy.stats.norm.sf(abs(z)), rel=1e-9)


def test_statistics_edge_cases():
    labels = [0, 0, 1, 1]
    assert stats.auc_mann_whitney([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert stats.auc_mann_whitney([0.5] * 4, labels) == 0.5
    assert stats.auc_ci95([0.1, 0.2, 0.8, 0.9], labels) == (1.0, 1.0)  # no spread: a zero-width CI at 1
    assert stats.auc_ci95([0.1, 0.85, 0.8, 0.9], labels)[1] == 1.0  # clipped at 1
    assert stats.delong_paired_test([0.1, 0.3, 0.2, 0.9], [0.1, 0.3, 0.2, 0.9], labels) == 1.0
    assert stats.mean_std([0.7, 0.8, 0.9]) == pytest.approx((0.8, statistics.stdev([0.7, 0.8, 0.9])))
    assert stats.mean_std([0.7]) == (0.7, None)
    with pytest.raises(ValueError):
        stats.auc_mann_whitney([0.1, 0.2], [1, 1])


def test_roc_curve_area_is_the_auc():
    a, _, labels = random_case(7)
    fpr, tpr = stats.roc_curve(a, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(stats.auc_mann_whitney(a, labels), abs=1e-12)


def test_mean_roc_averages_tprs_at_each_fpr_and_starts_at_the_origin():
    grid = np.linspace(0, 1, 5)
    perfect = (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]))  # every positive above every negative
    chance = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    assert stats.mean_roc([perfect, chance], grid).tolist() == [0.0, 0.5, 0.625, 0.75, 0.875, 1.0]
    a, b, labels = random_case(3)
    curve = stats.roc_curve(a, labels)
    assert stats.mean_roc([curve, curve], curve[0])[1:] == pytest.approx(np.interp(curve[0], *curve, right=1.0))


# --------------------------------------------------------------------------- ResNet-18

def random_torchvision_state(seed: int = 0, classes: int = 1000) -> dict:
    """Every tensor of a torchvision ResNet-18 state dict, in its key layout, random (BN statistics included)."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(key, c_out, c_in, k):
        state[key] = torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5

    def bn(key, c):
        state[f"{key}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{key}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{key}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=g)
        state[f"{key}.num_batches_tracked"] = torch.tensor(100)

    conv("conv1.weight", 64, 3, 7)
    bn("bn1", 64)
    c_in = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            conv(f"{p}.conv1.weight", width, c_in if block == 0 else width, 3)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2.weight", width, width, 3)
            bn(f"{p}.bn2", width)
            if block == 0 and layer > 1:
                conv(f"{p}.downsample.0.weight", width, c_in, 1)
                bn(f"{p}.downsample.1", width)
        c_in = width
    state["fc.weight"] = torch.randn(classes, 512, generator=g) * 0.04
    state["fc.bias"] = torch.randn(classes, generator=g) * 0.04
    return state


def reference_forward(state: dict, x: torch.Tensor, fc_weight, fc_bias) -> torch.Tensor:
    """ResNet-18 (eval mode) written with functional calls over the torchvision key layout."""
    def bn(h, key):
        return F.batch_norm(h, state[f"{key}.running_mean"], state[f"{key}.running_var"], state[f"{key}.weight"],
                            state[f"{key}.bias"], training=False, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, kernel_size=3, stride=2, padding=1)
    for layer in range(1, 5):
        for block in (0, 1):
            p, stride = f"layer{layer}.{block}", 2 if layer > 1 and block == 0 else 1
            out = F.relu(bn(F.conv2d(h, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in state:
                h = bn(F.conv2d(h, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            h = F.relu(out + h)
    return F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), fc_weight, fc_bias)


def test_resnet18_loads_the_torchvision_layout_and_equals_the_reference(tmp_path):
    state = random_torchvision_state()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    backbone, sha = read_backbone(path)
    assert len(sha) == 64 and not any(k.startswith("fc.") for k in backbone)
    model = build(backbone, 2, torch.Generator().manual_seed(0)).eval()
    assert set(ResNet18().state_dict()) == set(state)  # the same keys as torchvision's file, nothing renamed
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
    expected = reference_forward(state, x, model.fc.weight, model.fc.bias)
    assert ours.shape == (2, 2)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # a file without the BN counters (older torchvision saves) loads too
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    assert len(read_backbone(path)[0]) == len(backbone) - 20


def save_code_pickle(path: Path, marker: Path):
    """A weights file whose unpickling would run `touch marker` (os.system): it must be refused, never run."""
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"conv1.weight": RunsCode()}, path, pickle_protocol=2)


@pytest.mark.parametrize("content", ["garbage", "code", "foreign"])
def test_bad_weights_files_are_refused(tmp_path, content):
    marker, path = tmp_path / "code-ran", tmp_path / "weights.pth"
    if content == "garbage":
        path.write_bytes(b"\x00not a torch file at all")
    elif content == "code":
        save_code_pickle(path, marker)
    else:
        torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(UserError) as e:
        read_backbone(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    if content == "code":
        assert "run code" in str(e.value)


def test_missing_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(UserError, match=r"download\.pytorch\.org/models/resnet18-f37072fd\.pth.*--from-scratch"):
        read_backbone(tmp_path / "resnet18-f37072fd.pth")


# --------------------------------------------------------------------------- augmentation

def test_augmentation_geometry_against_exact_transforms():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ones, zeros = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(affine(x, zeros, ones, torch.zeros(3, 2)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(optical_distortion(x, zeros), x, atol=1e-6, rtol=0)
    # a quarter turn about the centre moves pixel centres onto pixel centres: exactly torch.rot90
    quarter = affine(x, 90 * ones, ones, torch.zeros(3, 2))
    assert any(torch.allclose(quarter, x.rot90(k, dims=(2, 3)), atol=1e-5) for k in (1, 3))
    # a shift of a quarter of the size moves the image 4 pixels right and down
    shifted = affine(x, zeros, ones, torch.full((3, 2), 0.25))
    torch.testing.assert_close(shifted[..., 4:, 4:], x[..., :-4, :-4], atol=1e-5, rtol=0)
    # zoom 2 about the centre: output pixel i samples input position i / 2 + 3.75, which is where a 2x bilinear
    # upsampling of the crop starting at pixel 3 puts its pixel i + 2
    zoomed = affine(x, zeros, 2 * ones, torch.zeros(3, 2))
    upsampled = F.interpolate(x[..., 3:13, 3:13], scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(zoomed, upsampled[..., 2:18, 2:18], atol=1e-5, rtol=0)
    # the lens model on a ramp image (value = column), where bilinear sampling is exact: the output pixel at
    # normalised position u = (pixel centre - image centre) / size samples column (u_x (1 + k r^2 + k r^4) + 1/2) 16 - 1/2
    k = 0.08
    ramp = torch.arange(16.0).expand(1, 3, 16, 16)
    u = (torch.arange(16.0) + 0.5) / 16 - 0.5
    r2 = u[None, :] ** 2 + u[:, None] ** 2  # (row, column)
    expected = (u[None, :] * (1 + k * r2 + k * r2 ** 2) + 0.5) * 16 - 0.5
    inside = slice(2, 14)  # away from the mirrored border
    torch.testing.assert_close(optical_distortion(ramp, torch.tensor([k]))[0, 0, inside, inside],
                               expected[inside, inside], atol=1e-4, rtol=0)


def test_augment_levels_stay_in_range_and_are_seeded():
    from classifier.settings import LEVELS

    assert set(LEVELS) == {"none", *RECIPES}  # --augment offers exactly the recipes augment() knows
    x = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert augment(x, "none", torch.Generator()) is x
    for level in RECIPES:
        a = augment(x, level, torch.Generator().manual_seed(5))
        b = augment(x, level, torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
        assert not torch.equal(a, augment(x, level, torch.Generator().manual_seed(6)))
    dropped = augment(x, "heavy", torch.Generator().manual_seed(1))
    zero_channels = (dropped.flatten(2).amax(-1) == 0).sum(1)  # (B,) channels set to 0 per image
    assert zero_channels.max() == 1 and zero_channels.sum() >= 1  # p 0.8: one channel of most images


# --------------------------------------------------------------------------- the experiment

def test_epochs_see_every_image_once_in_full_batches_as_flash_did():
    batches = epoch_batches(10, 4, torch.Generator().manual_seed(0))
    epoch = [next(batches) for _ in range(2)]  # 10 > 4: floor(10 / 4) = 2 full batches, the rest dropped
    assert [len(b) for b in epoch] == [4, 4] and len(set(torch.cat(epoch).tolist())) == 8
    assert not torch.equal(torch.cat(epoch), torch.cat([next(batches) for _ in range(2)]))  # reshuffled
    small = epoch_batches(3, 4, torch.Generator().manual_seed(0))  # a set smaller than a batch: all of it
    assert sorted(next(small).tolist()) == [0, 1, 2]
    assert (steps_per_epoch(10, 4), steps_per_epoch(3, 4)) == (2, 1)


def toy_settings(root: Path, **changes) -> ClassifySettings:
    base = ClassifySettings(train=root / "train", val=root / "val", test=root / "test", synthetic=root / "synthetic",
                            repeats=1, steps=16, batch=8, lr=1e-3, size=32, val_every=4, augment="none",
                            from_scratch=True, device="cpu", output=root / "out")
    return replace(base, **changes)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Real training images that do not show the blob (uninformative), synthetic ones that show it clearly,
    and the same synthetic images with their labels swapped."""
    root = tmp_path_factory.mktemp("toy")
    write_toy_classes(root / "train", 3, 0.0, seed=1, size=32)
    write_toy_classes(root / "val", 6, 0.6, seed=2, size=32)
    write_toy_classes(root / "test", 16, 0.6, seed=3, size=32)
    write_toy_classes(root / "synthetic", 16, 1.0, seed=4, size=32)
    write_toy_classes(root / "swapped", 16, 1.0, seed=4, size=32, swap=True)
    return root


@pytest.fixture(scope="module")
def toy_run(toy):
    torch.set_num_threads(1)
    results = run_experiment(toy_settings(toy, arms="real,real+synthetic", steps=24), log=lambda *a: None)
    return toy / "out", results


def test_informative_synthetic_images_raise_the_auc_and_swapped_ones_invert_it(toy, toy_run):
    _, results = toy_run
    real, mixed = (results["arms"][arm]["auc"][0] for arm in ("real", "real+synthetic"))
    # --seed 0-3 gave real 0.21-0.66, real+synthetic 0.84-0.97, swapped 0.07-0.42
    assert mixed > 0.75 and mixed > real + 0.15, (real, mixed)
    swapped = run_experiment(toy_settings(toy, arms="synthetic", synthetic=toy / "swapped", output=toy / "swapped-out",
                                          steps=24), log=lambda *a: None)
    assert swapped["arms"]["synthetic"]["auc"][0] < 0.45


def test_results_json_equals_what_predictions_csv_gives(toy_run):
    out, results = toy_run
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["arm", "repeat", "file", "label", "score"]
    assert json.loads((out / "results.json").read_text()) == results
    by_arm = {}
    for row in rows:
        by_arm.setdefault(row["arm"], ([], []))
        by_arm[row["arm"]][0].append(float(row["score"]))
        by_arm[row["arm"]][1].append(int(row["label"]))
    assert sorted(by_arm) == ["real", "real+synthetic"] and len(rows) == 2 * 32
    for arm, (scores, labels) in by_arm.items():
        pos = [s for s, y in zip(scores, labels) if y == 1]
        neg = [s for s, y in zip(scores, labels) if y == 0]
        (auc,), cov = reference_delong([scores], labels)
        assert results["arms"][arm]["auc"] == [pytest.approx(brute_force_auc(pos, neg), abs=1e-12)]
        half = 1.959963984540054 * math.sqrt(cov[0, 0])
        assert results["arms"][arm]["ci95"][0] == pytest.approx([max(0, auc - half), min(1, auc + half)], abs=1e-12)
    aucs, cov = reference_delong([by_arm["real"][0], by_arm["real+synthetic"][0]], by_arm["real"][1])
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    (comparison,) = results["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("real", "real+synthetic")
    assert comparison["p"] == [pytest.approx(2 * scipy.stats.norm.sf(abs(z)), rel=1e-9)]
    assert comparison["delta_mean"] == pytest.approx(aucs[1] - aucs[0], abs=1e-12)
    assert results["arms"]["real+synthetic"]["n_train"] == {"neg": 19, "pos": 19}
    assert results["positive"] == "pos" and results["weights_sha256"] is None


def test_resume_equals_an_uninterrupted_run_and_other_settings_are_refused(toy):
    settings = toy_settings(toy, arms="real", repeats=2, steps=3, val_every=2, augment="heavy", output=toy / "resume")
    quiet = lambda *a: None  # noqa: E731
    first = run_experiment(settings, log=quiet)
    files = {name: (settings.output / name).read_bytes() for name in ("results.json", "predictions.csv")}
    (settings.output / "runs" / "real-r1.json").unlink()  # as if killed during repeat 2 (runs are saved atomically)
    (settings.output / "results.json").unlink()
    said = []
    assert run_experiment(settings, log=said.append) == first
    assert {name: (settings.output / name).read_bytes() for name in files} == files
    assert any("repeat 1/2: finished earlier" in line for line in said)
    with pytest.raises(UserError, match=r"other settings \(--steps\).*--overwrite"):
        run_experiment(replace(settings, steps=4), log=quiet)
    replaced = run_experiment(replace(settings, steps=4, repeats=1, overwrite=True), log=quiet)
    assert list((settings.output / "runs").iterdir()) == [settings.output / "runs" / "real-r0.json"]
    assert len(replaced["arms"]["real"]["auc"]) == 1  # the earlier repeats were removed, not mixed in


def test_outputs_are_written_after_each_new_training_and_once_at_the_end(toy, monkeypatch):
    """results.json, predictions.csv and roc.png: rewritten after every training that finished now (so a
    killed experiment keeps them), never once per run read back."""
    import classifier.experiment as experiment
    settings = toy_settings(toy, arms="real,synthetic", repeats=2, steps=1, output=toy / "writes")
    quiet = lambda *a: None  # noqa: E731
    writes = []
    monkeypatch.setattr(experiment, "write_outputs", lambda *a: writes.append(len(a[4])) or write_outputs(*a))
    run_experiment(settings, log=quiet)
    assert writes == [1, 2, 3, 4]  # how many finished runs each write holds
    writes.clear()
    run_experiment(settings, log=quiet)  # everything read back
    assert writes == [4]
    writes.clear()
    (settings.output / "runs" / "real-r1.json").unlink()
    run_experiment(settings, log=quiet)  # the new run's write, then the end's (the synthetic ones read back)
    assert writes == [2, 4]


def test_a_second_run_on_the_same_output_is_refused(toy):
    settings = toy_settings(toy, arms="real", steps=1, output=toy / "locked")
    settings.output.mkdir()
    (settings.output / "classify.lock").write_text(str(os.getppid()))  # a live process that is not us
    with pytest.raises(UserError, match="another classify.py run"):
        run_experiment(settings, log=lambda *a: None)
    assert not (settings.output / "runs").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (settings.output / "classify.lock").write_text(dead.stdout.strip())  # left by a run killed with -9: stale
    run_experiment(settings, log=lambda *a: None)
    assert (settings.output / "results.json").is_file() and not (settings.output / "classify.lock").exists()


# --------------------------------------------------------------------------- bad input

def bad_layouts(root: Path) -> dict:
    """name -> (settings changes, text the one-line error must hold)."""
    write_toy_classes(root / "one-class", 3, 0.5, seed=9, size=32)
    (root / "one-class" / "pos").rename(root / "one-class-pos")
    write_toy_classes(root / "other-names", 3, 0.5, seed=9, size=32)
    (root / "other-names" / "pos").rename(root / "other-names" / "tumour")
    write_toy_classes(root / "thin-val", 3, 0.5, seed=9, size=32)
    for extra in sorted((root / "thin-val" / "neg").iterdir())[1:]:
        extra.unlink()
    write_toy_classes(root / "broken", 3, 0.5, seed=9, size=32)
    (root / "broken" / "pos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return {
        "missing": ({"train": root / "nowhere"}, "no such folder"),
        "unreadable image": ({"test": root / "broken"}, "cannot read image"),
        "one class": ({"val": root / "one-class"}, "exactly two class subfolders"),
        "other names": ({"test": root / "other-names"}, "differ from"),
        "one val image": ({"val": root / "thin-val"}, "class neg has 1 image; it needs at least 2"),
        "bad positive": ({"positive": "tumour"}, "--positive tumour: not a class"),
        "arm without folder": ({"synthetic": None, "arms": "synthetic"}, "--synthetic: the synthetic arm needs it"),
        "too many synthetic": ({"synthetic_count": "500"}, "--synthetic-count 500"),
        "bad count": ({"synthetic_count": "10,x"}, "--synthetic-count 10,x"),
        "unknown arm": ({"arms": "real,fake"}, "--arms real,fake"),
    }


def test_bad_input_fails_in_one_line_before_training(toy, tmp_path):
    for name, (changes, text) in bad_layouts(tmp_path).items():
        settings = toy_settings(toy, output=tmp_path / "out", **changes)
        with pytest.raises(UserError) as e:
            run_experiment(settings, log=lambda *a: None)
        assert text in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
        assert not (tmp_path / "out" / "runs").exists(), name


def test_cli_exit_status_2_for_unsafe_weights_and_help_lists_the_flags(toy, tmp_path):
    marker, weights = tmp_path / "code-ran", tmp_path / "resnet18-f37072fd.pth"
    save_code_pickle(weights, marker)
    args = [sys.executable, str(REPO / "classify.py"), "--train", str(toy / "train"), "--val", str(toy / "val"),
            "--test", str(toy / "test"), "--weights", str(weights), "--output", str(tmp_path / "out"),
            "--device", "cpu", "--steps", "1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "run code" in proc.stderr, proc.stderr
    assert not marker.exists() and not (tmp_path / "out" / "runs").exists()


def test_cli_run_writes_the_files_and_prints_the_table(toy, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, str(REPO / "classify.py"), "--train", str(toy / "train"), "--val", str(toy / "val"),
            "--test", str(toy / "test"), "--synthetic", str(toy / "synthetic"), "--arms", "real,synthetic",
            "--synthetic-count", "4", "--from-scratch", "--steps", "2", "--batch", "4", "--size", "32",
            "--repeats", "1", "--augment", "light", "--device", "cpu", "--output", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "positive class (label 1): pos" in proc.stdout
    table = proc.stdout[proc.stdout.index("\narm "):].splitlines()[1:]
    header, *rows = [line for line in table if line.startswith(("arm ", "real", "synthetic"))]
    assert header.split()[:3] == ["arm", "real", "synthetic"]
    assert [row.split()[:3] for row in rows] == [["real", "6", "0"], ["synthetic", "0", "32"],
                                                 ["real+synthetic:4", "6", "8"]]
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == ["real", "synthetic", "real+synthetic:4"]
    assert [c["b"] for c in results["comparisons"]] == ["synthetic", "real+synthetic:4"]
    assert results["arms"]["real+synthetic:4"]["n_train"] == {"neg": 7, "pos": 7}
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_keeps_the_flags_and_folders_given(tmp_path, monkeypatch):
    """classify.py --demo sizes the run for a CPU, but a flag or folder given with it is not silently dropped
    (the README's demo pipeline passes --synthetic from its sample.py step)."""
    import classify
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    settings = classify.demo_settings(replace(ClassifySettings(demo=True), steps=3, synthetic=mine))  # the API
    assert (settings.steps, settings.synthetic) == (3, mine)
    assert (settings.batch, settings.size, settings.repeats) == (16, 32, 2)  # the demo's, where nothing was given
    assert settings.train == Path("demo-output/classify/data/train") and (tmp_path / settings.train / "pos").is_dir()
    assert not (tmp_path / "demo-output/classify/data/synthetic").exists()


def test_demo_decides_given_from_what_was_typed(tmp_path, monkeypatch):
    """A flag typed with --demo wins even at its default value (--steps 6250); --weights and --dtype are kept;
    only the demo's own folder is replaced without --overwrite."""
    import classify
    from mini_ldm.settings import from_flags
    monkeypatch.chdir(tmp_path)

    def demo(*argv):
        args, typed = classify.parse_args(["--demo", *argv])
        return classify.demo_settings(from_flags(ClassifySettings, args), typed)

    plain = demo()
    assert (plain.steps, plain.from_scratch, plain.weights, plain.dtype) == (24, True, None, "fp32")
    assert plain.output == Path("demo-output/classify/results") and plain.overwrite
    typed = demo("--steps", "6250", "--lr", "0.0001", "--weights", "w.pth", "--dtype", "bf16",
                 "--output", "classification")
    assert (typed.steps, typed.lr, typed.batch) == (6250, 1e-4, 16)
    assert (typed.weights, typed.from_scratch, typed.dtype) == (Path("w.pth"), False, "bf16")
    assert typed.output == Path("classification") and not typed.overwrite
    assert demo("--output", "mine", "--overwrite").overwrite


def test_demo_never_replaces_an_experiment_given_with_output(tmp_path):
    """classify.py --demo --output myexp on an earlier experiment: refused in one line, its files untouched."""
    runs = tmp_path / "myexp" / "runs"
    runs.mkdir(parents=True)
    earlier = {"myexp/settings.json": json.dumps({"settings": {"steps": 6250}, "weights_sha256": "ab"}),
               "myexp/runs/real-r0.json": '{"scores": [0.5]}', "myexp/results.json": '{"arms": {}}'}
    for name, text in earlier.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run([sys.executable, str(REPO / "classify.py"), "--demo", "--output", "myexp", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "TQDM_DISABLE": "1"})  # stderr: the error alone
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--output myexp" in proc.stderr and "--overwrite" in proc.stderr
    assert {name: (tmp_path / name).read_text() for name in earlier} == earlier


def test_help_shows_no_doubled_percent_signs():
    proc = subprocess.run([sys.executable, str(REPO / "classify.py"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "95% CIs" in proc.stdout and "%%" not in proc.stdout


# --------------------------------------------------------------------------- faults of issue 24 (B.12-17, 21)

def copy_of(toy: Path, tmp_path: Path) -> Path:
    """A copy of the toy folders a test may change (the module's own stay untouched)."""
    import shutil
    for name in ("train", "val", "test", "synthetic"):
        shutil.copytree(toy / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("where", ["file", "class"])
def test_names_that_are_not_utf8_are_refused_before_any_training(toy, tmp_path, where):
    """B.12: a name results.json and predictions.csv cannot hold used to fail after the first training, and on
    every rerun; now one line before any (and the line itself prints)."""
    root = copy_of(toy, tmp_path)
    bad = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: a lone surrogate in Python's str
    if where == "file":
        first = sorted((root / "test" / "pos").iterdir())[0]
        first.rename(first.with_name(f"{bad}.png"))
    else:
        (root / "train" / "pos").rename(root / "train" / bad)
    with pytest.raises(UserError, match="not UTF-8") as e:
        run_experiment(toy_settings(root, arms="real", steps=1, output=tmp_path / "out"), log=lambda *a: None)
    str(e.value).encode("utf-8")  # printable
    assert "\n" not in str(e.value) and not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("flag", ["train", "val", "test", "synthetic"])
def test_an_output_inside_an_input_folder_is_refused(toy, tmp_path, flag):
    """B.13: under test/pos/ its roc.png would be scored as a test case on the next run, under train/ its
    folders would count as classes."""
    root = copy_of(toy, tmp_path)
    output = root / flag / "pos" / "results"
    with pytest.raises(UserError, match=f"--output .*inside --{flag}") as e:
        run_experiment(toy_settings(root, steps=1, output=output), log=lambda *a: None)
    assert "\n" not in str(e.value) and not output.exists()


@pytest.mark.parametrize("flag, arms", [("train", "real"), ("val", "real"), ("synthetic", "synthetic"),
                                        ("test", "synthetic")])
def test_a_rerun_after_an_input_folder_changed_is_refused_and_overwrite_restarts(toy, tmp_path, flag, arms):
    """B.14: repeat 0 trained on the old images, repeat 1 would train on the new ones, both averaged; now the
    rerun stops at once naming the folder, and --overwrite trains both repeats on the new images."""
    root = copy_of(toy, tmp_path)
    settings = toy_settings(root, arms=arms, repeats=2, steps=1, output=tmp_path / "out")
    quiet = lambda *a: None  # noqa: E731
    run_experiment(settings, log=quiet)
    (settings.output / "runs" / f"{arms}-r1.json").unlink()  # as if killed during repeat 2
    before = (settings.output / "results.json").read_bytes()
    extra = sorted((root / flag / "neg").iterdir())[0]
    if flag == "test":  # the same names, other pixels: caught too
        extra.write_bytes((root / "val" / "neg" / sorted(os.listdir(root / "val" / "neg"))[0]).read_bytes())
    else:
        extra.with_name("added.png").write_bytes(extra.read_bytes())
    with pytest.raises(UserError, match=f"--{flag} .*other images.*--overwrite"):
        run_experiment(settings, log=quiet)
    assert (settings.output / "results.json").read_bytes() == before
    assert not (settings.output / "runs" / f"{arms}-r1.json").exists()
    results = run_experiment(replace(settings, overwrite=True), log=quiet)
    assert results["arms"][arms]["repeats"] == [0, 1]
    runs = [json.loads((settings.output / "runs" / f"{arms}-r{r}.json").read_text()) for r in (0, 1)]
    assert runs[0]["inputs"] == runs[1]["inputs"] and f"--{flag}" in runs[0]["inputs"]
    assert run_experiment(settings, log=quiet) == results  # and it continues from there
    older = settings.output / "runs" / f"{arms}-r0.json"  # as an older classify.py wrote it
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "inputs"}))
    with pytest.raises(UserError, match=r"does not record which images.*--overwrite"):
        run_experiment(settings, log=quiet)


def test_a_deeper_resnet_file_is_refused_naming_its_extra_keys(tmp_path):
    """B.15: a ResNet-34's first blocks have ResNet-18's shapes; its third block of layer1 (and the rest) used
    to be dropped silently."""
    state = random_torchvision_state()
    g = torch.Generator().manual_seed(3)
    for name, shape in (("conv1.weight", (64, 64, 3, 3)), ("conv2.weight", (64, 64, 3, 3))):
        state[f"layer1.2.{name}"] = torch.randn(shape, generator=g)
    for bn in ("bn1", "bn2"):
        for part in ("weight", "bias", "running_mean", "running_var"):
            state[f"layer1.2.{bn}.{part}"] = torch.rand(64, generator=g) + 0.5
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"not a ResNet-18 file.*layer1\.2\.bn1\.bias.*and 7 more") as e:
        read_backbone(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("changes, words", [
    ({"synthetic_count": "3,3"}, "--synthetic-count 3,3"),  # B.16: as --arms real,real is
    ({"seed": 2**64 - 1, "repeats": 2}, "--seed 18446744073709551615"),  # B.17: seed + 1 overflows
    ({"batch": 1, "size": 32}, "--batch 1 --size 32"),  # B.17: BatchNorm with one value per channel
    ({"seed": -5}, "--seed -5"),  # B.21: without suggesting -1, which classify.py refuses
])
def test_settings_that_would_fail_mid_run_are_refused_before_any_image_is_read(toy, tmp_path, changes, words):
    settings = toy_settings(toy, output=tmp_path / "out", **changes)
    with pytest.raises(UserError) as e:
        settings.check()
    assert words in str(e.value) and "random" not in str(e.value) and "or -1" not in str(e.value), str(e.value)
    with pytest.raises(UserError):
        run_experiment(settings, log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_the_batch_check_matches_resnet18s_batchnorm():
    """--batch 1 is refused exactly where training fails: at --size 32 the last maps are 1x1, at 33 they are 2x2."""
    model = ResNet18().train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.rand(1, 3, 32, 32))
    model(torch.rand(1, 3, 33, 33))
    toy = ClassifySettings(val=Path("v"), test=Path("t"), train=Path("r"), batch=1)
    replace(toy, size=33).check()
    replace(toy, size=32, batch=2).check()
    replace(toy, seed=2**64 - 5, repeats=5).check()  # the last seed that still fits


def test_an_image_over_max_pixels_is_refused_before_it_is_decoded(toy, tmp_path, monkeypatch):
    """B.21: one 12000 x 12000 image cost 4.5 GB; the header is read first, as prepare.py's --max-voxels does."""
    import classifier.data
    from PIL import Image
    root = copy_of(toy, tmp_path)
    Image.new("L", (300, 200)).save(root / "val" / "pos" / "huge.png")
    decoded = []
    monkeypatch.setattr(classifier.data, "load_image", lambda path: decoded.append(path))
    with pytest.raises(UserError, match=r"huge\.png is 300 x 200 pixels, more than --max-pixels 50000") as e:
        run_experiment(toy_settings(root, steps=1, max_pixels=50_000, output=tmp_path / "out"), log=lambda *a: None)
    assert "\n" not in str(e.value) and not decoded and not (tmp_path / "out").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_removes_the_lock_and_keeps_the_finished_trainings(toy, tmp_path):
    """B.21: SIGTERM (timeout, kill, SLURM) used to end the process on the spot, leaving classify.lock and a
    temporary file; now it stops as Ctrl-C does."""
    out = tmp_path / "out"
    args = [sys.executable, str(REPO / "classify.py"), "--train", str(toy / "train"), "--val", str(toy / "val"),
            "--test", str(toy / "test"), "--arms", "real", "--from-scratch", "--steps", "100000", "--batch", "4",
            "--size", "32", "--repeats", "1", "--device", "cpu", "--output", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    # settings.json is written under the lock: the handler is in place
    wait_until(proc, (out / "settings.json").is_file, "no settings.json", timeout=120, poll=0.2)
    time.sleep(1)
    _, stderr = stop(proc, signal.SIGTERM, timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, (proc.returncode, stderr)
    assert not (out / "classify.lock").exists()
    assert not [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_names_the_file(toy, tmp_path, monkeypatch):
    """B.21: the file system says only "No space left on device"; the line names the file being written and no
    temporary file is left."""
    import classify
    from in_process import run_main

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "out"
    r = run_main(classify.main, "--train", toy / "train", "--val", toy / "val", "--test", toy / "test", "--arms",
                 "real", "--from-scratch", "--steps", "1", "--size", "32", "--repeats", "1", "--device", "cpu",
                 "--output", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "No space left on device" in r.stderr and str(out / "settings.json") in r.stderr, r.stderr
    assert not [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
