"""privacy.py and membership/: the membership-inference audit of an embedding.

On the tiny random models (which cannot memorise anything, so no test here expects a leak): the per-image loss
is the training loss computed independently (the pipeline's prompt path, the forward process written out), the
numbers in membership.json are what scores.csv gives, the same seed gives the same scores, SD 1/2/XL and several
concepts run, bad input is one line and exit 2. The honest controls (a memorising embedding is flagged, one
trained on other images is not) need the phantom model, weights/phantom-sd2.safetensors, and skip without it.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mini_ldm
from devkit.eval_images import structured_image, write_images
from membership.attacks import detectable_auc, tpr_at_fpr
from membership.loss import encode_images, image_losses, shared_draws
from mini_ldm.embeddings import Embedding, write_embedding
from readers.images import find_images
from tests.in_process import run_main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--timesteps", "100,600", "--draws", "2", "--device", "cpu", "--batch", "4"]


def brute_auc(members, held) -> float:
    """Pairs (member, held-out) with the member scoring higher, ties 1/2: the AUC's definition."""
    pairs = [(m > h) + 0.5 * (m == h) for m in members for h in held]
    return float(np.mean(pairs))


def embedding(path: Path, token: str, width: int, init: str = "a scan", seed: int = 0, widths=()) -> Path:
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(seed))
    write_embedding(path, Embedding(token, vectors, None, {"token": token, "init_text": init}, widths))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy-images")
    write_images(root / "members", [structured_image(s) for s in range(3)])
    write_images(root / "held-out", [structured_image(40 + s) for s in range(3)])
    for k, name in enumerate(("alpha", "beta")):  # two concepts' members, held-out shared or their own
        write_images(root / "concepts" / name, [structured_image(10 * k + 60 + s) for s in range(2)])
        write_images(root / "concepts-held-out" / name, [structured_image(10 * k + 80 + s) for s in range(2)])
    return root


# --------------------------------------------------------------------------- the numbers

def test_tpr_at_fpr_counts_and_says_when_one_image_decides():
    held = np.arange(100.0)  # 100 held-out scores 0..99
    members = np.array([99.5, 98.5, 97.5, 50.0])
    one = tpr_at_fpr(members, held, 0.01)  # one false positive allowed: threshold 98, flags 99.5 and 98.5
    assert (one["true_positives"], one["false_positives"], one["tpr"]) == (2, 1, 0.5)
    assert "single image" in one["note"]
    ten = tpr_at_fpr(members, held, 0.10)  # ten allowed: threshold 89
    assert (ten["true_positives"], ten["false_positives"]) == (3, 10)
    few = tpr_at_fpr(members, held[:20], 0.01)  # 20 held-out images: 1% allows none
    assert few["false_positives"] == 0 and "no false positive" in few["note"]


def test_detectable_auc_shrinks_with_more_images():
    assert 0.5 < detectable_auc(1000, 1000) < detectable_auc(100, 100) < detectable_auc(10, 10) <= 1.0
    assert 0.6 < detectable_auc(100, 100) < 0.7  # about 0.62 with 100 a side


def scores_of(member_scores, held_scores):
    from membership.attacks import attack_numbers
    return attack_numbers(np.asarray(member_scores), np.asarray(held_scores), {})


def test_verdict_words_follow_the_evidence():
    from membership.attacks import verdict

    rng = np.random.default_rng(0)
    same = lambda: scores_of(rng.normal(0, 1, 100), rng.normal(0, 1, 100))  # noqa: E731
    apart = lambda: scores_of(rng.normal(2, 1, 100), rng.normal(0, 1, 100))  # noqa: E731
    leak = verdict(same(), apart(), 100, 100)
    assert leak["level"] == "leak" and "memorised" in leak["text"] and "Do not share" in leak["text"]
    none = verdict(same(), same(), 100, 100)
    assert none["level"] == "no evidence" and "does not prove there is none" in none["text"]
    assert f"{detectable_auc(100, 100):.2f}" in none["text"] and "1/100" in none["text"]  # what it could find
    kind = verdict(apart(), same(), 100, 100)
    assert kind["level"] == "no evidence" and "differ in kind" in kind["text"]
    backwards = verdict(same(), scores_of(rng.normal(0, 1, 100), rng.normal(2, 1, 100)), 100, 100)
    assert backwards["level"] == "reversed"


@pytest.mark.parametrize("stem", ["sd2v", "sd1"])  # v and epsilon targets
def test_loss_is_the_training_loss_computed_independently(request, images, stem):
    sd = mini_ldm.load(request.getfixturevalue(f"{stem}_folder"), device="cpu")  # our own: tokens get added
    sd.add_learned_token("<tok>", torch.randn(2, sd.width, generator=torch.Generator().manual_seed(1)))
    paths = find_images(images / "members")[:2]
    cache = encode_images(sd, images / "members", paths, 32, batch=2, progress=False)
    draws = shared_draws([100, 600], 2, tuple(cache.mean.shape[1:]), seed=3)
    templates = ["a photo of [name]", "[name] scan"]

    class Bar:
        def update(self, n):
            pass

    got = image_losses(sd, cache, draws, templates, "<tok>", batch=3, bar=Bar())  # batch 3: rows mix images
    alphas = sd.alphas_cumprod
    for i in range(2):
        for j, t in enumerate(draws.timesteps):
            errors = []
            for d in range(2):
                x0, noise, a = cache.mean[i] * sd.vae.cfg.scale, draws.noise[j, d], alphas[t]
                noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
                target = noise if sd.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
                context = sd.encode_prompt(templates[(j * 2 + d) % 2].replace("[name]", "<tok>"))
                with torch.no_grad():
                    out = sd.unet(noisy[None], torch.tensor([t]), context)
                errors.append(float((out[0] - target).pow(2).mean()))
            assert float(got[i, j]) == pytest.approx(np.mean(errors), rel=1e-5)


# --------------------------------------------------------------------------- the CLI

def privacy(*args):
    from privacy import OUT_OF_MEMORY_HINT, main
    return run_main(main, *args, memory_hint=OUT_OF_MEMORY_HINT)


def read_scores(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_json_equals_what_scores_csv_gives_and_the_seed_fixes_the_scores(sd2_folder, images, tmp_path):
    emb = embedding(tmp_path / "tok.safetensors", "<tok>", 192)
    common = ["--model", sd2_folder, "--embeddings", emb, "--members", images / "members",
              "--held-out", images / "held-out", *FAST]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "privacy.py"), *map(str, common), "--output",
                           str(tmp_path / "a")], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "verdict:" in proc.stdout and "no false positive" in proc.stdout  # 3 held-out images: FPR 1% is 0
    result = json.loads((tmp_path / "a" / "membership.json").read_text())
    entry, = result["concepts"]
    assert (entry["token"], entry["n_members"], entry["n_held_out"], entry["reference"]) == ("<tok>", 3, 3, "init")
    assert entry["reference_text"] == "a scan" and result["timesteps"] == [100, 600]
    rows = read_scores(tmp_path / "a" / "scores.csv")
    assert [r["member"] for r in rows] == ["1"] * 3 + ["0"] * 3
    for attack, column in (("loss", "loss"), ("calibrated", "calibrated")):
        sign = -1.0 if attack == "loss" else 1.0
        score = lambda r, c=column: sign * float(r[c])  # noqa: E731
        members = [score(r) for r in rows if r["member"] == "1"]
        held = [score(r) for r in rows if r["member"] == "0"]
        assert entry["attacks"][attack]["auc"] == pytest.approx(brute_auc(members, held), abs=1e-12)
        for t in (100, 600):
            per = lambda r, c=f"{column}_t{t}": sign * float(r[c])  # noqa: E731
            expected = brute_auc([per(r) for r in rows if r["member"] == "1"], [per(r) for r in rows if r["member"] == "0"])
            assert entry["attacks"][attack]["auc_per_timestep"][str(t)] == pytest.approx(expected, abs=1e-12)
    for r in rows:  # calibrated = reference - loss, and the loss is the mean over timesteps
        assert float(r["calibrated"]) == pytest.approx(float(r["reference_loss"]) - float(r["loss"]), abs=1e-12)
        assert float(r["loss"]) == pytest.approx((float(r["loss_t100"]) + float(r["loss_t600"])) / 2, rel=1e-12)
    assert (tmp_path / "a" / "membership.png").stat().st_size > 1000

    same = privacy(*common, "--output", tmp_path / "b")
    other = privacy(*common, "--output", tmp_path / "c", "--seed", "1")
    assert same.returncode == other.returncode == 0, same.stderr + other.stderr
    assert (tmp_path / "b" / "scores.csv").read_text() == (tmp_path / "a" / "scores.csv").read_text()
    assert read_scores(tmp_path / "c" / "scores.csv")[0]["loss"] != rows[0]["loss"]


def test_several_concepts_each_on_its_own_members(sd1_folder, images, tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    embedding(folder / "alpha.safetensors", "<alpha>", 128, init="", seed=1)
    embedding(folder / "beta.safetensors", "<beta>", 128, init="", seed=2)
    run = privacy("--model", sd1_folder, "--embeddings", folder, "--members", images / "concepts",
                  "--held-out", images / "held-out", "--output", tmp_path / "out", "--templates", "object", *FAST)
    assert run.returncode == 0, run.stderr
    entries = json.loads((tmp_path / "out" / "membership.json").read_text())["concepts"]
    assert [(e["token"], e["n_members"], e["n_held_out"], e["reference"], e["templates"]) for e in entries] == [
        ("<alpha>", 2, 3, "empty", "object"), ("<beta>", 2, 3, "empty", "object")]
    assert {r["token"] for r in read_scores(tmp_path / "out" / "scores.csv")} == {"<alpha>", "<beta>"}
    embedding(folder / "gamma.safetensors", "<gamma>", 128, init="", seed=3)  # a token without images: skipped
    own = privacy("--model", sd1_folder, "--embeddings", folder, "--members", images / "concepts",
                  "--held-out", images / "concepts-held-out", "--output", tmp_path / "own", *FAST)
    assert own.returncode == 0, own.stderr
    assert "<gamma> has no subfolder" in own.stderr
    rows = read_scores(tmp_path / "own" / "scores.csv")
    assert [(r["token"], r["member"]) for r in rows] == [(t, m) for t in ("<alpha>", "<beta>") for m in "1100"]
    assert {r["file"] for r in rows if r["token"] == "<beta>"} == {"img-000.png", "img-001.png"}


def test_audits_what_train_py_wrote(sd2v_folder, images, tmp_path):
    """train.py's own file: its init text is the reference, its family and base model match, v target."""
    from train import main as train_main
    trained = run_main(train_main, "--model", sd2v_folder, "--data", images / "members", "--output",
                       tmp_path / "tok.safetensors", "--steps", "2", "--vectors", "2", "--init", "chest scan",
                       "--save-every", "0", "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    run = privacy("--model", sd2v_folder, "--embeddings", tmp_path / "tok.safetensors", "--members",
                  images / "members", "--held-out", images / "held-out", "--output", tmp_path / "out", *FAST)
    assert run.returncode == 0, run.stderr
    assert "trained on" not in run.stderr  # the same checkpoint: no warning
    entry = json.loads((tmp_path / "out" / "membership.json").read_text())["concepts"][0]
    assert (entry["token"], entry["reference"], entry["reference_text"]) == ("<members>", "init", "chest scan")


def test_sdxl_embedding_runs(sdxl_folder, images, tmp_path):
    emb = embedding(tmp_path / "xl.safetensors", "<xl>", 64 + 128, widths=(64, 128))
    run = privacy("--model", sdxl_folder, "--embeddings", emb, "--members", images / "members",
                  "--held-out", images / "held-out", "--output", tmp_path / "out", *FAST)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "out" / "membership.json").read_text())["family"] == "sdxl"


# --------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("privacy-bad")
    shutil.copytree(images / "held-out", root / "overlap-file")
    shutil.copy(images / "members" / "img-000.png", root / "overlap-file" / "img-000.png")
    overlap_pixels = write_images(root / "overlap-pixels", [structured_image(40), structured_image(1)], prefix="x")
    write_images(root / "one", [structured_image(90)])
    embedding(root / "sd2.safetensors", "<tok>", 192)
    embedding(root / "sd1.safetensors", "<tok>", 128)
    embedding(root / "no-init.safetensors", "<tok>", 192, init="")
    (root / "two").mkdir()
    embedding(root / "two" / "alpha.safetensors", "<alpha>", 192)
    embedding(root / "two" / "gamma.safetensors", "<gamma>", 192)
    return root, overlap_pixels


BAD = {  # case: (arguments after --model, words the error line must hold)
    "same file in both": (["{root}/sd2.safetensors", "{images}/concepts/alpha", "{images}/concepts"],  # nested
                          "also under --members"),
    "a copy in both": (["{root}/sd2.safetensors", "{images}/members", "{root}/overlap-file"], "same pixels"),
    "identical pixels": (["{root}/sd2.safetensors", "{images}/members", "{root}/overlap-pixels"], "same pixels"),
    "another family": (["{root}/sd1.safetensors", "{images}/members", "{images}/held-out"], "128 wide"),
    "one member": (["{root}/sd2.safetensors", "{root}/one", "{images}/held-out"], "at least 2"),
    "token absent": (["{root}/two", "{images}/concepts", "{images}/held-out"], "no token for this folder"),
    "no init text": (["{root}/no-init.safetensors", "{images}/members", "{images}/held-out", "--reference", "init"],
                     "--reference init"),
    "timestep outside": (["{root}/sd2.safetensors", "{images}/members", "{images}/held-out", "--timesteps", "1000"],
                         "outside the model's schedule"),
    "timesteps not numbers": (["{root}/sd2.safetensors", "{images}/members", "{images}/held-out", "--timesteps",
                               "a,b"], "--timesteps a,b"),
    "missing folder": (["{root}/sd2.safetensors", "{root}/nowhere", "{images}/held-out"], "--members"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(case, bad, images, sd2_folder, tmp_path):
    root, _ = bad
    args, words = BAD[case]
    args = [a.format(root=root, images=images) for a in args]
    run = privacy("--model", sd2_folder, "--embeddings", args[0], "--members", args[1], "--held-out", args[2],
                  *args[3:], "--output", tmp_path / "out", "--device", "cpu")
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert words in lines[0], lines[0]
    assert not (tmp_path / "out" / "membership.json").exists()


# --------------------------------------------------------------------------- the honest controls

PHANTOM = REPO / "weights" / "phantom-sd2.safetensors"
needs_phantom = pytest.mark.skipif(not PHANTOM.is_file(), reason=f"needs the phantom model {PHANTOM} (the "
                                   "phantom-model issue): tiny random models cannot memorise anything")


def train(data: Path, output: Path, steps: int, vectors: int, seed: int = 0):
    cmd = [sys.executable, str(REPO / "train.py"), "--model", str(PHANTOM), "--data", str(data), "--output",
           str(output), "--steps", str(steps), "--vectors", str(vectors), "--lr", "0.02", "--save-every", "0",
           "--seed", str(seed), "--device", "cpu", "--overwrite"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr
    return output


def audit(emb: Path, members: Path, held: Path, out: Path) -> dict:
    run = privacy("--model", PHANTOM, "--embeddings", emb, "--members", members, "--held-out", held,
                  "--output", out, "--device", "cpu", "--reference", "empty")
    assert run.returncode == 0, run.stderr
    return json.loads((out / "membership.json").read_text())["concepts"][0]["attacks"]["calibrated"]


MEMORISING = {"steps": 1000, "vectors": 64}  # many vectors, many steps for two images: about 30 s on one core


@pytest.fixture(scope="module")
def phantom_sets(tmp_path_factory):
    """Chest phantoms of the kind the phantom model was trained on (readers.chest_findings; it saw the phantoms
    of seed 2026): two members, six unseen images and twelve held-out ones, every image from the same generator
    with its own seed, so the folders differ only by chance, never in kind."""
    from readers.chest_findings import chest_cases

    root = tmp_path_factory.mktemp("phantom-sets")
    for name, seed, count in (("members", 1, 2), ("unseen", 3, 6), ("held-out", 2, 12)):
        folder = root / name
        folder.mkdir()
        for i, (image, _) in enumerate(chest_cases(seed, count)):
            image.save(folder / f"{name}-{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def memorised(phantom_sets, tmp_path_factory):
    """An embedding trained to memorise the two members, shared by both controls."""
    out = tmp_path_factory.mktemp("memorised") / "memorised.safetensors"
    return train(phantom_sets / "members", out, **MEMORISING)


@needs_phantom
@pytest.mark.timeout(1200)
def test_an_embedding_that_memorised_a_few_images_is_flagged(memorised, phantom_sets, tmp_path):
    """64 vectors and 1,000 steps on two phantoms: the calibrated attack ranks both above all 12 held-out
    phantoms. (On phantoms unlike the model's own, readers.phantom's blobs at 64 px, every image gained
    alike from such a token and none was flagged: the gain for the kind of image drowned the members'.)"""
    calibrated = audit(memorised, phantom_sets / "members", phantom_sets / "held-out", tmp_path / "audit")
    assert calibrated["auc"] >= 0.9 and calibrated["ci95"][0] > 0.5, calibrated


@needs_phantom
@pytest.mark.timeout(1200)
def test_an_embedding_trained_on_other_images_is_not_flagged(memorised, phantom_sets, tmp_path):
    """The same embedding, audited on images it never saw (the six unseen phantoms as "members"): trained on
    other images with the recipe that memorised them, so the contrast with the test above is membership alone.
    The interval holds 0.5, and over 20 random re-splits of the same scores into "members" and "held-out" it
    misses 0.5 no more often than a 95% interval should (3 of 20 or fewer; a binomial(20, 0.05) exceeds 3 with
    probability 0.016)."""
    from stats.auc import auc_ci95

    calibrated = audit(memorised, phantom_sets / "unseen", phantom_sets / "held-out", tmp_path / "audit")
    assert calibrated["ci95"][0] <= 0.5 <= calibrated["ci95"][1], calibrated
    scores = np.array([float(r["calibrated"]) for r in read_scores(tmp_path / "audit" / "scores.csv")])
    rng = np.random.default_rng(0)
    misses = 0
    for _ in range(20):
        labels = np.zeros(len(scores))
        labels[rng.permutation(len(scores))[:6]] = 1
        low, high = auc_ci95(scores, labels)
        misses += not low <= 0.5 <= high
    assert misses <= 3, misses


# --------------------------------------------------------------------------- the documentation

def test_docs_tables_are_generated_and_every_flag_is_documented():
    """docs/privacy.md holds the tables made from the settings (regenerate with markdown_table when a setting
    changes) and names every flag of privacy.py and of evaluate.py's data-copying test."""
    import re

    from measure.evaluate_settings import EvaluateSettings
    from membership.settings import PrivacySettings
    from mini_ldm.model_settings import ModelSettings
    from mini_ldm.settings import markdown_table

    docs = (REPO / "docs" / "privacy.md").read_text()
    assert markdown_table(PrivacySettings) in docs
    model_rows = markdown_table(ModelSettings, skip=("device", "dtype")).splitlines()[2:]
    assert all(row in docs for row in model_rows)
    copying_rows = [row for row in markdown_table(EvaluateSettings).splitlines()
                    if row.startswith(("| `--held-out`", "| `--cells`", "| `--min-cell`"))]
    assert len(copying_rows) == 3 and all(row in docs for row in copying_rows)
    proc = subprocess.run([sys.executable, str(REPO / "privacy.py"), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    flags = set(re.findall(r"\[(--[a-z][a-z0-9-]+)", proc.stdout))  # the usage line's options
    assert flags and not sorted(f for f in flags if f"`{f}`" not in docs)
    assert "privacy.md" in (REPO / "README.md").read_text()
