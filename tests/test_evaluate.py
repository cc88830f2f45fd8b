"""evaluate.py and its parts: the Inception network, its input, FID/KID/IS, the memorisation audit, the CLI.

Random Inception weights (every tensor random, none zero) are made once per session and saved in both public
key layouts. Metrics are checked against independent computations written here (closed forms, loops,
torchmetrics' algorithm restated); the CLI is run as a user runs it. The runs are few and small, because the
real architecture costs about 6 GFLOP per image whatever the image size.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import save_file

from devkit.eval_images import blob_image, noised_recompressed, structured_image, write_images
from devkit.inception_weights import random_inception_state, save_pytorch_fid_layout, save_torch_fidelity_layout
from measure.features import image_features, preprocess
from measure.inception import load_inception
from measure.preprocess import inception_input, resize_tf1
from measure.metrics import fid, fid_from_stats, inception_score, kid, memorization_audit
from readers.images import load_image

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inception")
    state = random_inception_state(seed=0)
    return (save_pytorch_fid_layout(state, folder / "pt_inception-2015-12-05-6726825d.pth"),
            save_torch_fidelity_layout(state, folder / "weights-inception-2015-12-05-6726825d.pth"))


@pytest.fixture(scope="session")
def model(weight_files):
    return load_inception(weight_files[0])


# --------------------------------------------------------------------------- the network

def test_both_key_layouts_load_identically(weight_files, model):
    other = load_inception(weight_files[1])
    assert model.weights_sha256 != other.weights_sha256  # two different files ...
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(a, b), name  # ... the same network
    images = torch.stack([preprocess(structured_image(s), zscore=False) for s in range(2)])
    x = inception_input(images, "tf1")
    ours, theirs = model(x), other(x)
    for tap in ours:
        assert torch.equal(ours[tap], theirs[tap]), tap


def bn_conv_relu(state, prefix, x, stride=1, padding=0):
    """BasicConv2d written out from the raw tensors: conv, then (x - mean) / sqrt(var + 0.001) * gamma + beta."""
    y = F.conv2d(x, state[f"{prefix}.conv.weight"], stride=stride, padding=padding)
    shape = (1, -1, 1, 1)
    y = (y - state[f"{prefix}.bn.running_mean"].view(shape)) / (state[f"{prefix}.bn.running_var"].view(shape) + 1e-3).sqrt()
    return (y * state[f"{prefix}.bn.weight"].view(shape) + state[f"{prefix}.bn.bias"].view(shape)).clamp(min=0)


def tf_same_avg_pool(x):
    """TF's 3x3 SAME average: the window's sum divided by how many of its pixels are inside the image."""
    ones = torch.ones(1, 1, 3, 3, dtype=x.dtype)
    sums = F.conv2d(x.flatten(0, 1)[:, None], ones, padding=1).view_as(x)
    counts = F.conv2d(torch.ones(1, 1, *x.shape[2:], dtype=x.dtype), ones, padding=1)
    return sums / counts


def test_layers_match_an_independent_computation(weight_files):
    state = torch.load(weight_files[1], weights_only=True)
    state = {k: v.double() for k, v in state.items()}
    net = load_inception(weight_files[1], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    # the stem's first layer
    x = torch.randn(1, 3, 31, 29, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(net.Conv2d_1a_3x3(x), bn_conv_relu(state, "Conv2d_1a_3x3", x, stride=2))
    # Mixed_5b: its pool branch averages over the pixels inside the image only
    x = torch.randn(1, 192, 9, 9, generator=gen, dtype=torch.float64)
    p = "Mixed_5b"
    expected = torch.cat([
        bn_conv_relu(state, f"{p}.branch1x1", x),
        bn_conv_relu(state, f"{p}.branch5x5_2", bn_conv_relu(state, f"{p}.branch5x5_1", x), padding=2),
        bn_conv_relu(state, f"{p}.branch3x3dbl_3", bn_conv_relu(state, f"{p}.branch3x3dbl_2",
                     bn_conv_relu(state, f"{p}.branch3x3dbl_1", x), padding=1), padding=1),
        bn_conv_relu(state, f"{p}.branch_pool", tf_same_avg_pool(x)),
    ], 1)
    torch.testing.assert_close(net.Mixed_5b(x), expected)
    # Mixed_7c: the graph's max pool in the pool branch
    x = torch.randn(1, 2048, 5, 5, generator=gen, dtype=torch.float64)
    pool_branch = bn_conv_relu(state, "Mixed_7c.branch_pool", F.max_pool2d(x, 3, stride=1, padding=1))
    torch.testing.assert_close(net.Mixed_7c(x)[:, -192:], pool_branch)
    # the taps: 2048 = spatial mean after Mixed_7c, logits without the fc bias
    x = inception_input(preprocess(structured_image(3), False)[None], "tf1", torch.float64)
    taps = net(x)
    h = x
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
        h = getattr(net, name)(h)
    h = F.max_pool2d(h, 3, 2)
    torch.testing.assert_close(taps["64"], h.mean((2, 3)))
    for name in ("Conv2d_3b_1x1", "Conv2d_4a_3x3"):
        h = getattr(net, name)(h)
    h = F.max_pool2d(h, 3, 2)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                 "Mixed_7a", "Mixed_7b", "Mixed_7c"):
        h = getattr(net, name)(h)
    pool = h.mean((2, 3))
    torch.testing.assert_close(taps["2048"], pool)
    torch.testing.assert_close(taps["logits_unbiased"], pool @ state["fc.weight"].T)


# --------------------------------------------------------------------------- input

def test_tf1_resize_matches_the_tensorflow_formula():
    x = torch.arange(7 * 5, dtype=torch.float64).view(1, 1, 7, 5) ** 1.5
    out = resize_tf1(x, 11).numpy()[0, 0]
    src = x.numpy()[0, 0]
    for i in range(11):
        for j in range(11):
            # TF1 resize_bilinear, align_corners=False: source = dst * (in / out) with a float32 scale
            y, xx = i * float(np.float32(7 / 11)), j * float(np.float32(5 / 11))
            y0, x0 = int(y), int(xx)
            y1, x1 = min(y0 + 1, 6), min(x0 + 1, 4)
            top = src[y0, x0] + (src[y0, x1] - src[y0, x0]) * (xx - x0)
            bottom = src[y1, x0] + (src[y1, x1] - src[y1, x0]) * (xx - x0)
            assert out[i, j] == pytest.approx(top + (bottom - top) * (y - y0), rel=1e-12)


def test_zscore_is_the_papers_formula_on_a_16_bit_grayscale_image(tmp_path):
    yy, xx = np.mgrid[0:40, 0:50]
    arr = (300 + 40 * xx + 700 * np.sin(yy / 5.0) ** 2).astype(np.uint16)
    path = tmp_path / "ct.png"
    Image.fromarray(arr).save(path)  # 16-bit grayscale PNG (mode I;16)
    rgb8 = np.asarray(load_image(path))  # train.py --data's reading: min/max to 8 bits, grey repeated to RGB
    assert rgb8.shape == (40, 50, 3) and (rgb8[..., 0] == rgb8[..., 2]).all()
    # the paper's script: numpy z-score over the whole 8-bit RGB array, * 64 + 128, clip, astype(uint8)
    z = (rgb8 - rgb8.mean()) / rgb8.std()
    expected = np.clip(z * 64 + 128, 0, 255).astype(np.uint8)
    got = preprocess(load_image(path), zscore=True)
    assert got.dtype == torch.uint8
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)
    assert not np.array_equal(expected, rgb8)


# --------------------------------------------------------------------------- metrics

def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(30, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    assert abs(fid(x, x)) < 1e-9 * fid(x, x + 1)  # fewer images than dimensions: still finite and 0
    y = torch.randn(200, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(fid(y, y)) < 1e-10


def test_fid_of_gaussians_matches_the_closed_form():
    from scipy.linalg import sqrtm  # test-only oracle

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + 0.5 * np.eye(4), b @ b.T + 0.5 * np.eye(4)
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    closed = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert fid_from_stats(m1, s1, m2, s2) == pytest.approx(closed, rel=1e-9)
    # and from samples of those Gaussians, within sampling error
    x = rng.multivariate_normal(m1, s1, size=40000)
    y = rng.multivariate_normal(m2, s2, size=40000)
    assert fid(x, y) == pytest.approx(closed, rel=0.03)


def test_fid_with_singular_covariances_equals_the_eigenvalue_form():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 40, generator=gen, dtype=torch.float64)
    y = torch.randn(15, 40, generator=gen, dtype=torch.float64) + 0.3
    # torchmetrics' formula: eigenvalues of sigma1 @ sigma2, square roots, real parts
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = torch.cov(x.T), torch.cov(y.T)
    ref = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    assert fid(x, y) == pytest.approx(float(ref), rel=1e-6)  # both carry round-off from the zero eigenvalues


def test_kid_is_torchmetrics_algorithm():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(14, 6, generator=gen, dtype=torch.float64)
    y = torch.rand(11, 6, generator=gen, dtype=torch.float64) + 0.2
    mean, std = kid(x, y, subsets=5, subset_size=9, seed=7)
    torch.manual_seed(7)  # torchmetrics draws from the global generator: real, then synthetic, per subset
    scores = []
    for _ in range(5):
        xs, ys = x[torch.randperm(14)[:9]], y[torch.randperm(11)[:9]]
        k = lambda a, b: (a @ b / 6 + 1) ** 3  # noqa: E731
        within = sum(k(xs[i], xs[j]) + k(ys[i], ys[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
        scores.append(float(within - 2 * sum(k(xs[i], ys[j]) for i in range(9) for j in range(9)) / 81))
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores), rel=1e-8)


def test_inception_score_is_torchmetrics_algorithm():
    logits = torch.randn(23, 1008, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    mean, std = inception_score(logits, splits=4, seed=5)
    torch.manual_seed(5)
    z = logits[torch.randperm(23)].numpy()
    scores = []
    for part in np.array_split(z, [6, 12, 18]):  # torch.chunk: parts of ceil(23 / 4) = 6
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1)
        scores.append(np.exp(kl.mean()))
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores, ddof=1), rel=1e-8)


# --------------------------------------------------------------------------- memorisation audit, in Python

def test_audit_flags_planted_copies_and_no_unrelated_image(model):
    real = [structured_image(s) for s in range(10)]
    planted = [real[0], ImageOps.mirror(real[1]), noised_recompressed(real[2], 0),
               noised_recompressed(ImageOps.mirror(real[3]), 1)]
    unrelated = [blob_image(100 + s) for s in range(4)]
    r = image_features(real, model, "tf1", mirror=True)
    s = image_features(planted + unrelated, model, "tf1")
    audit = memorization_audit(r["pool"], s["pool"], r["pool_mirrored"])
    assert audit.flagged.tolist() == [True] * 4 + [False] * 4
    assert audit.nearest_real[:4].tolist() == [0, 1, 2, 3]
    assert audit.similarity[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)  # exact copy, exact mirror


def two_grey_levels(image: Image.Image, seed: int) -> Image.Image:
    noise = np.random.default_rng(seed).integers(-2, 3, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=int) + noise, 0, 255).astype(np.uint8))


def test_audit_per_real_rule_sees_past_a_duplicate_pair_in_the_real_set(model):
    """The real set holds the same image twice (a near-duplicate pair), which lifts the global threshold to
    ~1: a copy of another real image with 2 grey levels of noise escapes the global rule, and the per-real
    rule still flags it; new images stay unflagged by both."""
    real = [structured_image(s) for s in range(10)]
    real.append(two_grey_levels(real[0], 99))  # the same patient twice
    synth = [two_grey_levels(real[3], 1)] + [structured_image(500 + s) for s in range(3)] + [blob_image(100 + s) for s in range(3)]
    r = image_features(real, model, "tf1", mirror=True)
    audit = memorization_audit(r["pool"], image_features(synth, model, "tf1")["pool"], r["pool_mirrored"])
    assert not audit.flagged_global[0] and audit.flagged_per_real[0] and audit.flagged[0]
    assert int(audit.nearest_real[0]) == 3 and audit.distance_ratio[0] < 0.05
    assert not audit.flagged[1:].any(), audit.distance_ratio
    assert (audit.distance_ratio[1:] > 0.6).all(), audit.distance_ratio


def test_memorization_png_names_the_files_and_fills_the_tiles_with_small_images(tmp_path):
    """32-px images are scaled up to fill their 160-px tiles (no black border), and each image's file name
    is written under it."""
    from types import SimpleNamespace

    from measure.report import THUMB, memorization_sheet

    grey = Image.new("RGB", (32, 32), (200, 200, 200))
    grey.save(tmp_path / "synth-long-name-0001.png")
    grey.save(tmp_path / "real-0001.png")
    audit = SimpleNamespace(similarity=torch.tensor([0.5]), nearest_real=torch.tensor([0]), flagged=torch.tensor([False]))
    sheet = np.asarray(memorization_sheet(audit, tmp_path, ["real-0001.png"], tmp_path, ["synth-long-name-0001.png"], 4))
    assert (sheet[:THUMB, :2 * THUMB] == 200).all()  # both tiles filled edge to edge
    under_real = sheet[THUMB + 2:THUMB + 20, THUMB + 2:2 * THUMB - 2]
    assert (under_real < 128).any()  # the real image's name, where nothing was written before


# --------------------------------------------------------------------------- the CLI

def environment(weights_folder=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env["MINI_LDM_WEIGHTS"] = str(weights_folder) if weights_folder else "/nonexistent-weights"
    return env


def start(*args, weights_folder=None):
    cmd = [sys.executable, str(REPO / "evaluate.py"), *map(str, args), "--device", "cpu"]
    return subprocess.Popen(cmd, cwd=REPO, env=environment(weights_folder), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    real = [structured_image(s) for s in range(8)]
    write_images(root / "real", real)
    synth = write_images(root / "synth", [real[0], ImageOps.mirror(real[1]), noised_recompressed(real[2], 0),
                                          noised_recompressed(ImageOps.mirror(real[3]), 1)], prefix="copy")
    write_images(synth, [blob_image(200 + s) for s in range(2)], prefix="new")
    (synth / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable: skipped and counted
    write_images(root / "unrelated", [blob_image(300 + s) for s in range(4)])
    write_images(root / "one", [structured_image(50)])
    (root / "empty").mkdir()
    sd = root / "v1-5-pruned-emaonly.safetensors"  # a Stable Diffusion checkpoint passed as Inception weights
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3),
               "first_stage_model.decoder.conv_in.weight": torch.randn(8, 4, 3, 3)}, sd)
    return root


def test_cli_end_to_end(folders, weight_files, tmp_path):
    out, cache = tmp_path / "evaluation", tmp_path / "cache"
    args = ["--output", out, "--cache-dir", cache, "--resize", "tf1", "--dims", "64", "--kid-subsets", "5",
            "--memorization-top", "6"]
    code, stdout, stderr = finish(start(folders / "real", folders / "synth", *args, weights_folder=weight_files[0].parent))
    assert code == 0, stderr
    assert "broken.png" in stderr and "skipping" in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "n_real", "n_synth", "memorized", "weights_sha256",
                "resize", "zscore", "dims"):
        assert key in metrics, key
    assert (metrics["n_real"], metrics["n_synth"], metrics["n_unreadable"]) == (8, 6, 1)
    assert metrics["unreadable_synth"] == ["broken.png"]
    assert metrics["memorized"] == 4
    rows = (out / "memorization.csv").read_text().splitlines()
    assert rows[0].startswith("synthetic,nearest_real,similarity,flagged,")  # + the two rules' columns
    flagged = {r.split(",")[0]: r.split(",")[3] for r in rows[1:]}
    assert flagged == {**{f"copy-{i:03d}.png": "1" for i in range(4)}, **{f"new-{i:03d}.png": "0" for i in range(2)}}
    with Image.open(out / "memorization.png") as im:
        assert im.width > 320 and im.height > 160
    assert "4 of 6 (66.7%)" in stdout and "KID" in stdout and "trust" in stdout
    assert "6 synthetic images and --is-splits 10" in stderr and "1.0 +- 0" in stderr  # IS would mean nothing

    # an unrelated SYNTH flags nothing, and the real set comes from the cache
    code, stdout, stderr = finish(start(folders / "real", folders / "unrelated", *args,
                                        "--weights", weight_files[1], weights_folder=None))
    assert code == 0, stderr
    assert "cached" not in stdout.splitlines()[1]  # another weights file: another cache key
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["memorized"] == 0 and metrics["n_synth"] == 4


def test_a_damaged_cache_entry_is_encoded_again_with_a_warning(folders, weight_files, tmp_path):
    cache = tmp_path / "cache"
    args = ["--weights", weight_files[0], "--cache-dir", cache, "--dims", "64", "--kid-subsets", "2", "--output",
            tmp_path / "out"]
    assert finish(start(folders / "unrelated", folders / "unrelated", *args))[0] == 0
    entries = sorted(cache.glob("*.safetensors"))  # REAL (with mirrors) and SYNTH
    assert len(entries) == 2
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated, as by a full disk or a crash elsewhere
    entries[1].write_bytes(b"not safetensors at all")
    code, stdout, stderr = finish(start(folders / "unrelated", folders / "unrelated", *args))
    assert code == 0 and "Traceback" not in stderr, stderr
    assert all(f"cached features {e} are damaged" in stderr for e in entries), stderr
    assert "(cached features)" not in stdout
    code, stdout, _ = finish(start(folders / "unrelated", folders / "unrelated", *args))
    assert code == 0 and stdout.count("(cached features)") == 2  # the entries were written again, whole


def test_demo_writes_random_weights_in_pytorch_fids_layout_once_and_evaluates(tmp_path):
    runs = [subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--demo", "--device", "cpu", "--dims", "64",
                            "--kid-subsets", "2"], cwd=tmp_path, env=environment(), capture_output=True, text=True,
                           timeout=TIMEOUT) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "writing random Inception-v3 weights" in runs[0].stdout and "writing" not in runs[1].stdout
    weights = tmp_path / "demo-output" / "pt_inception-2015-12-05-6726825d.pth"
    state = torch.load(weights, weights_only=True)
    assert "Mixed_7c.branch_pool.bn.num_batches_tracked" in state and state["fc.weight"].shape == (1008, 2048)
    assert all(v.float().abs().sum() > 0 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    metrics = json.loads((tmp_path / "demo-output" / "evaluation" / "metrics.json").read_text())
    assert metrics["n_real"] == metrics["n_synth"] == 6 and metrics["is_splits"] == 2
    assert "(cached features)" in runs[1].stdout


def test_out_of_memory_is_one_line_naming_the_image(folders, weight_files, tmp_path, monkeypatch):
    import evaluate
    import measure.features
    from mini_ldm.errors import UserError

    def too_big(path):
        raise MemoryError
    monkeypatch.setattr(measure.features, "load_image", too_big)
    with pytest.raises(UserError, match=r"out of memory reading image .*img-000\.png: make it smaller"):
        evaluate.main([str(folders / "real"), str(folders / "unrelated"), "--weights", str(weight_files[0]),
                       "--no-cache", "--device", "cpu", "--output", str(tmp_path / "out")])


def test_out_of_memory_encoding_a_folder_is_one_line_with_the_allocators_words(folders, weight_files, tmp_path,
                                                                               monkeypatch):
    """The allocator's error while a folder is encoded: one line naming the folder, what the allocator said and
    the CLI's memory hint (it used to drop the allocator's words)."""
    import evaluate
    from in_process import run_main
    from measure import features

    def too_big(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
    monkeypatch.setattr(features, "folder_features", too_big)  # evaluate.py imports it when it encodes
    r = run_main(evaluate.main, folders / "real", folders / "unrelated", "--weights", weight_files[0], "--no-cache",
                 "--device", "cpu", "--output", tmp_path / "out", memory_hint=evaluate.OUT_OF_MEMORY_HINT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "encoding REAL folder" in r.stderr and "(CUDA out of memory)" in r.stderr and "--batch" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_reuses_cached_features(folders, weight_files, tmp_path):
    args = ["--weights", weight_files[0], "--cache-dir", tmp_path / "cache", "--dims", "64", "--kid-subsets", "2",
            "--output", tmp_path / "out"]
    first = finish(start(folders / "unrelated", folders / "unrelated", *args))
    second = finish(start(folders / "unrelated", folders / "unrelated", *args))
    assert first[0] == second[0] == 0, first[2] + second[2]
    assert "(cached features)" not in first[1] and second[1].count("(cached features)") == 2
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["fid"] == pytest.approx(0, abs=1e-6)


BAD = {
    "empty folder": (["{empty}", "{real}"], "no images found"),
    "missing folder before missing weights": (["{empty}/nothing", "{real}"], "REAL folder"),  # cheap checks first
    "one image": (["{one}", "{real}"], "at least two"),
    "sd checkpoint": (["{real}", "{real}", "--weights", "{sd}"], "not an Inception-v3 FID weights file"),
    "missing weights": (["{real}", "{real}"], "pt_inception-2015-12-05-6726825d.pth"),
    "missing weights file": (["{real}", "{real}", "--weights", "{empty}/nothing.pth"], "does not exist"),
}


@pytest.fixture(scope="module")
def bad_runs(folders, weight_files, tmp_path_factory):
    names = {"empty": folders / "empty", "real": folders / "real", "one": folders / "one",
             "sd": folders / "v1-5-pruned-emaonly.safetensors"}
    procs = {}
    for case, (args, _) in BAD.items():
        args = [a.format(**names) for a in args]
        weights = None if "weights" in case or case == "sd checkpoint" else weight_files[0].parent
        procs[case] = start(*args, "--output", tmp_path_factory.mktemp("bad"), "--no-cache", weights_folder=weights)
    return {case: finish(p) for case, p in procs.items()}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(case, bad_runs):
    code, _, stderr = bad_runs[case]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert BAD[case][1] in lines[0], lines[0]


def test_memorization_png_says_which_side_is_synthetic_and_what_the_number_is(tmp_path):
    """The sheet carries its own key (issue 24, item A.9): which side is synthetic, which real, and that the
    number is a cosine similarity; the key's band is written below the pairs."""
    from types import SimpleNamespace

    from measure.report import MEMORIZATION_KEY, THUMB, memorization_sheet

    grey = Image.new("RGB", (32, 32), (200, 200, 200))
    grey.save(tmp_path / "s.png")
    grey.save(tmp_path / "r.png")
    audit = SimpleNamespace(similarity=torch.tensor([0.5]), nearest_real=torch.tensor([0]), flagged=torch.tensor([False]))
    sheet = np.asarray(memorization_sheet(audit, tmp_path, ["r.png"], tmp_path, ["s.png"], 4))
    key_band = sheet[THUMB + 2 * 22 + 8:]
    assert key_band.shape[0] >= 14 * len(MEMORIZATION_KEY) and (key_band < 128).any()
    text = " ".join(MEMORIZATION_KEY)
    assert "LEFT = a synthetic image" in text and "RIGHT = the real image" in text and "cosine similarity" in text


def test_an_empty_folder_is_refused_in_evaluates_words_before_the_weights(folders, tmp_path):
    """Issue 24 A.10: the message names evaluate.py, not train.py's concept, and comes before the weights are
    looked for (none exist here)."""
    import evaluate
    from in_process import run_main

    (tmp_path / "volume").mkdir()
    (tmp_path / "volume" / "scan.nii.gz").write_bytes(b"")
    for folder in (folders / "empty", tmp_path / "volume"):
        r = run_main(evaluate.main, folder, folders / "real", "--weights", tmp_path / "none.pth", "--no-cache",
                     "--output", tmp_path / "out")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "evaluate.py" in r.stderr and "concept" not in r.stderr and "train" not in r.stderr, r.stderr
        assert str(folder) in r.stderr and "none.pth" not in r.stderr, r.stderr
