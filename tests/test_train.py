"""Textual Inversion training (issue 3) on tiny random models.

The loss falls; only the learned vectors change (every model weight bit-identical, no weight gradient, optimiser
state for the vectors alone); --init follows AUTOMATIC1111's rule; our file is what the issue specifies and
diffusers' load_textual_inversion draws the same image with it as mini_ldm; an interrupted and resumed run ends
exactly where an uninterrupted one does (in process and through the CLI); train.py fails cleanly on bad input,
saves on Ctrl-C, and `--demo` runs end to end.

Time: the expensive pieces (a 30-step run per prediction type, one CLI run, the diffusers pipelines) are module
fixtures shared by several tests; the bad-input subprocesses run side by side.
"""
import csv
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import mini_ldm
from ti.concepts import Concept
from ti.data import cached_latents
from mini_ldm.embeddings import load_embeddings, read_embedding
from ti.phantoms import write_phantoms
from ti.run_files import loss_csv_path, state_path
from ti.train_settings import TrainSettings
from ti.trainer import Trainer
from processes import stop, wait_until

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"
TOKEN = "<phantom>"  # not in CLIP's vocabulary (diffusers refuses tokens that are)
RES = 32  # pixels: the tiny VAE halves it -> 16x16 latents
# Tiny models gain nothing from a second thread, and on a busy machine OpenMP threads thrash; results do not
# depend on it. (In process, conftest.py sets one thread for the session.)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Four synthetic chest X-ray phantoms in a folder named 'phantom' (so the default token is <phantom>)."""
    return write_phantoms(tmp_path_factory.mktemp("data") / "phantom", count=4)


# ---------------------------------------------------------------- helpers


def load(folder, precision="fp32"):
    return mini_ldm.load(folder, device="cpu", dtype=precision)


def make_trainer(sd, data, output: Path, **config) -> Trainer:
    """A Trainer as train.py builds one: latent cache of `data` at RES, the bare-token template."""
    def encode(images):
        with torch.no_grad():
            mean, logvar = sd.vae.encode(images.to(sd.device, sd.dtype))
        return mean.float(), logvar.float()

    cache = cached_latents(data, encode, f"{output.parent}:{sd.dtype}", output.parent / ".latent-cache", RES,
                           progress=False)
    cfg = TrainSettings(token=TOKEN, output=output, **{"vectors": 4, "steps": 30, "lr": 0.05, "save_every": 0,
                                                     **config})
    return plain_trainer(sd, cfg, cache)


def plain_trainer(sd, cfg: TrainSettings, cache=None) -> Trainer:
    """A one-token Trainer for the bare-token template (no latents needed until it trains)."""
    return Trainer(sd, ["[name]"], cfg, [Concept.single(cfg, cache=cache)], log=lambda *a: None)


@torch.no_grad()
def fixed_loss(trainer: Trainer, draws=32, seed=1234) -> float:
    """Mean loss of the current vectors over one FIXED set of draws (images, latent samples, noise, timesteps):
    the generator is reseeded for the measurement and put back after, so training never sees these draws."""
    saved = trainer.generator.get_state()
    trainer.generator.manual_seed(seed)
    try:
        return sum(trainer._batch_loss().item() for _ in range(draws)) / draws
    finally:
        trainer.generator.set_state(saved)


def model_parts(sd):
    return {"unet": sd.unet, "vae": sd.vae, "text_encoder": sd.text_encoder}


def snapshot(sd):
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in model_parts(sd).items()}


def token_embedding(sd) -> torch.nn.Embedding:
    found = [m for m in sd.text_encoder.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == 49408]
    assert len(found) == 1
    return found[0]


def train_cli(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, str(TRAIN), "--device", "cpu", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def csv_steps(path: Path, token: str = TOKEN) -> list:
    """The steps of a one-token run's loss log (no validation: one row per step, training loss only)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "concept", "loss", "val_loss", "seconds"], rows[:2]
    for row in rows[1:]:
        assert row[1] == token and row[3] == "", row
        assert math.isfinite(float(row[2])) and float(row[4]) >= 0, row
    return [int(row[0]) for row in rows[1:]]


# ---------------------------------------------------------------- one in-process run per prediction type


@dataclass
class Run:
    sd: object
    trainer: Trainer
    weights: dict  # model state dicts before training
    initial: torch.Tensor  # the vectors before training
    loss_before: float
    loss_after: float
    file: Path


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory, phantoms):
    """trained("sd1") / trained("sd2v"): 30 steps at lr 0.05 on the tiny epsilon (SD1) / v (SD2) model, once."""
    runs = {}

    def get(name) -> Run:
        if name not in runs:
            folder = request.getfixturevalue(f"{name}_folder")
            sd = load(folder)
            weights = snapshot(sd)
            trainer = make_trainer(sd, phantoms, tmp_path_factory.mktemp(name) / "phantom.safetensors")
            initial = trainer.vectors.detach().clone()
            before = fixed_loss(trainer)
            file = trainer.run(progress=False)
            runs[name] = Run(sd, trainer, weights, initial, before, fixed_loss(trainer), file)
        return runs[name]

    return get


@pytest.mark.parametrize("name, prediction", [("sd1", "epsilon"), ("sd2v", "v")])
def test_loss_falls(trained, name, prediction):
    run = trained(name)
    assert run.sd.prediction == prediction
    assert run.trainer.step == 30
    assert run.loss_after < 0.95 * run.loss_before, (run.loss_before, run.loss_after)


@pytest.mark.parametrize("name", ["sd1", "sd2v"])
def test_only_the_vectors_change(trained, name):
    run = trained(name)
    sd, trainer = run.sd, run.trainer
    after = snapshot(sd)
    for part, weights in run.weights.items():
        assert after[part].keys() == weights.keys()
        changed = [k for k in weights if not torch.equal(weights[k], after[part][k])]
        assert not changed, f"{part} weights changed: {changed[:5]}"
    # the vocabulary and the token embedding matrix in particular: same size, same values
    assert token_embedding(sd).weight.shape[0] == 49408
    emb_key = [k for k in run.weights["text_encoder"] if k.endswith("weight")
               and run.weights["text_encoder"][k].shape[0] == 49408]
    assert len(emb_key) == 1 and torch.equal(token_embedding(sd).weight, run.weights["text_encoder"][emb_key[0]])
    for part, module in model_parts(sd).items():
        for k, p in module.named_parameters():
            assert not p.requires_grad and p.grad is None, f"{part}.{k}"
    # the optimiser knows the vectors alone, and only they moved
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert len(params) == 1 and params[0] is trainer.vectors
    assert list(trainer.optimizer.state) == [trainer.vectors]
    assert trainer.optimizer.state[trainer.vectors]["exp_avg"].shape == trainer.vectors.shape
    assert trainer.vectors.dtype == torch.float32 and trainer.vectors.shape == (4, sd.width)
    assert not torch.equal(trainer.vectors.detach(), run.initial)
    assert sd.learned == {}


# ---------------------------------------------------------------- --init


@pytest.mark.parametrize("vectors", [1, 3, 16])
def test_init_vector_i_is_token_i_times_len_over_vectors(trained, sd1_folder, vectors):
    """A1111: vector i = embedding of token i*len/vectors of the init text. The oracle is independent of
    mini_ldm: transformers' tokenizer and the token embedding matrix read straight from the model file."""
    from transformers import CLIPTokenizer

    text = "a chest x-ray with pleural effusion"
    ids = CLIPTokenizer.from_pretrained(sd1_folder / "tokenizer")(text, add_special_tokens=False)["input_ids"]
    table = load_file(str(sd1_folder / "text_encoder" / "model.safetensors"))[
        "text_model.embeddings.token_embedding.weight"]
    assert 3 < len(ids) < 16  # fewer vectors than tokens, and more (tokens repeat)
    sd = trained("sd1").sd
    trainer = plain_trainer(sd, TrainSettings(token=TOKEN, output=Path("unused"), vectors=vectors, init_text=text))
    expected = torch.stack([table[ids[i * len(ids) // vectors]] for i in range(vectors)])
    assert trainer.vectors.dtype == torch.float32
    assert torch.equal(trainer.vectors.detach(), expected)


def test_no_init_gives_small_random_vectors(trained):
    sd = trained("sd1").sd

    def initial(seed):
        cfg = TrainSettings(token=TOKEN, output=Path("unused"), vectors=6, seed=seed)
        return plain_trainer(sd, cfg).vectors.detach()

    v = initial(0)
    assert v.shape == (6, sd.width) and v.dtype == torch.float32
    assert 0.005 < v.std() < 0.02 and v.abs().max() < 0.1  # small ...
    assert len(set(v.flatten().tolist())) == v.numel()  # ... random, not constant
    assert torch.equal(v, initial(0)) and not torch.equal(v, initial(1))  # and fixed by --seed


# ---------------------------------------------------------------- train.py: the files, and resuming


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, phantoms, sd2_folder):
    """train.py on the tiny SD2 folder, run from another folder with no --token and no --output: the token is
    <data-folder-name> and the file goes to embeddings/<name>.safetensors there."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = ok(train_cli("--data", phantoms, "--model", sd2_folder, "--vectors", 3, "--init", "chest x-ray",
                        "--steps", 4, "--lr", 0.01, "--save-every", 2, "--preview-every", 4,
                        "--resolution", RES, cwd=cwd))
    return cwd / "embeddings" / "phantom.safetensors", proc


def test_cli_embedding_file(cli_run, sd2_folder):
    out, proc = cli_run
    assert out.is_file() and out.stat().st_size < 1 << 20
    with safe_open(str(out), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        tensor = f.get_tensor(TOKEN)
    assert keys == [TOKEN]
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 192)
    expected = {"token": TOKEN, "vectors": "3", "step": "4", "family": "sd2", "base_model": sd2_folder.name,
                "init_text": "chest x-ray", "lr": "0.01"}
    assert {k: meta.get(k) for k in expected} == expected
    assert read_embedding(out).token == TOKEN
    assert "token <phantom>" in proc.stdout and "wrote embeddings" in proc.stdout


def test_cli_snapshots_loss_csv_and_preview(cli_run):
    out, _ = cli_run
    snapshot_file = out.with_name("phantom-2.safetensors")
    snap = read_embedding(snapshot_file)
    assert snap.metadata["step"] == "2" and snap.token == TOKEN
    assert not torch.equal(snap.vectors, read_embedding(out).vectors)
    assert csv_steps(loss_csv_path(out)) == [1, 2, 3, 4] and loss_csv_path(out).parent == out.parent
    preview = out.with_name("phantom-preview-4.png")
    with Image.open(preview) as im:
        band = max(12, RES // 10)  # the white label band above the strip (mini_ldm.images.grid)
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (4 * RES, band + RES)
        assert "Training step: 4" in im.info.get("parameters", "")
        assert np.asarray(im).std() > 0
        assert (np.asarray(im)[:band] < 128).any()  # "step 4" written in the band
    # what sample.py does with an embeddings folder: the final file wins, nothing else there trips it up
    found = load_embeddings(out.parent)
    assert list(found) == [TOKEN] and found[TOKEN].source == out


def test_cli_resume_equals_uninterrupted(cli_run, phantoms, sd2_folder, tmp_path):
    reference, _ = cli_run
    out = tmp_path / "resumed" / "phantom.safetensors"
    common = ["--data", phantoms, "--model", sd2_folder, "--vectors", 3, "--init", "chest x-ray", "--lr", 0.01,
              "--resolution", RES, "--output", out]
    ok(train_cli(*common, "--steps", 2))
    assert read_embedding(out).metadata["step"] == "2" and state_path(out).is_file()
    proc = ok(train_cli(*common, "--steps", 4, "--resume"))
    assert "resuming" in proc.stdout and "at step 2" in proc.stdout
    assert read_embedding(out).metadata["step"] == "4"
    assert torch.equal(read_embedding(out).vectors, read_embedding(reference).vectors)
    assert csv_steps(loss_csv_path(out)) == [1, 2, 3, 4]  # appended, not restarted


# ---------------------------------------------------------------- interrupted + resumed, in process


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_interrupted_and_resumed_equals_uninterrupted(sd1_folder, phantoms, tmp_path, monkeypatch, precision):
    """Ctrl-C (KeyboardInterrupt) lands in step k+1, between its two gradient-accumulation batches, after
    its random draws: the save holds the state after k steps, and resuming replays step k+1 exactly."""
    sd = load(sd1_folder, precision)
    n, k, accum = (6, 3, 2) if precision == "fp32" else (4, 2, 2)  # fp16 is slow on a CPU: a shorter run
    config = dict(vectors=2, steps=n, lr=0.05, batch=2 if precision == "fp32" else 1, grad_accum=accum,
                  dtype=precision)
    reference = make_trainer(sd, phantoms, tmp_path / "reference" / "phantom.safetensors", **config)
    reference.run(progress=False)

    out = tmp_path / "interrupted" / "phantom.safetensors"
    first = make_trainer(sd, phantoms, out, **config)
    original, calls = first._batch_loss, []

    def interrupted():
        calls.append(1)
        loss = original()
        if len(calls) == k * accum + 2:
            loss.backward()  # the first micro-batch's gradient is already in .grad; this one too
            raise KeyboardInterrupt
        return loss

    monkeypatch.setattr(first, "_batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        first.run(progress=False)
    assert first.step == k and read_embedding(out).metadata["step"] == str(k) and state_path(out).is_file()

    resumed = make_trainer(sd, phantoms, out, **config)
    resumed.resume(out)
    assert resumed.step == k
    resumed.run(progress=False)
    assert resumed.step == n
    assert torch.equal(resumed.vectors, reference.vectors)
    assert torch.equal(read_embedding(out).vectors, reference.vectors.detach().float())
    a, b = resumed.optimizer.state[resumed.vectors], reference.optimizer.state[reference.vectors]
    assert all(torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])) for key in ("step", "exp_avg", "exp_avg_sq"))
    assert resumed.scaler.get_scale() == reference.scaler.get_scale()
    assert torch.equal(resumed.generator.get_state(), reference.generator.get_state())
    assert csv_steps(loss_csv_path(out)) == list(range(1, n + 1))


def test_resume_refuses_what_does_not_fit(trained, tmp_path):
    """A save cut short between the embedding and its state file, or another --vectors: a clear error."""
    import shutil

    from mini_ldm.errors import UserError
    from mini_ldm.embeddings import Embedding, write_embedding

    run = trained("sd1")
    out = tmp_path / "phantom.safetensors"
    shutil.copy(state_path(run.file), state_path(out))
    emb = read_embedding(run.file)
    write_embedding(out, Embedding(emb.token, emb.vectors, None, {**emb.metadata, "step": "29"}))
    cfg = TrainSettings(token=TOKEN, output=out, vectors=4, lr=0.05)  # the saved run's own settings
    with pytest.raises(UserError, match="step 29 but"):
        plain_trainer(run.sd, cfg).resume(out)
    write_embedding(out, emb)
    with pytest.raises(UserError, match="--vectors 5"):
        plain_trainer(run.sd, TrainSettings(token=TOKEN, output=out, vectors=5, lr=0.05)).resume(out)
    trainer = plain_trainer(run.sd, cfg)
    trainer.resume(out)
    assert trainer.step == 30 and torch.equal(trainer.vectors.detach(), emb.vectors)


def test_resume_refuses_another_model_vae_or_prediction(phantoms, sd2_single, sd2v_single, sd1_folder, tmp_path):
    """Another checkpoint of the same shapes (sd2v_single beside sd2_single, as an SDXL fine-tune beside its
    base), another --vae or another --prediction used to continue the run silently: now one line, exit 2,
    naming what differs; the run's own model still resumes."""
    import train
    from in_process import run_main

    out = tmp_path / "phantom.safetensors"
    common = ["--device", "cpu", "--data", phantoms, "--vectors", 2, "--resolution", RES, "--output", out,
              "--save-every", 0]
    ok(run_main(train.main, *common, "--model", sd2_single, "--steps", 2))
    cases = [(["--model", sd2v_single, "--prediction", "epsilon"], ("--model", sd2v_single.name)),
             (["--model", sd2_single, "--vae", sd1_folder / "vae"], ("--vae vae", "the checkpoint's own VAE")),
             (["--model", sd2_single, "--prediction", "v"], ("--prediction epsilon", "predicts v"))]
    for flags, needles in cases:
        proc = run_main(train.main, *common, *flags, "--steps", 3, "--resume")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith("error: --resume") and proc.stderr.count("error:") == 1, proc.stderr
        assert all(str(needle) in error for needle in needles), error
        assert read_embedding(out).metadata["step"] == "2"  # nothing trained, nothing written
    ok(run_main(train.main, *common, "--model", sd2_single, "--steps", 3, "--resume"))
    assert read_embedding(out).metadata["step"] == "3"


# ---------------------------------------------------------------- diffusers draws the same image with our file


@pytest.fixture(scope="module")
def embedding_files(trained, cli_run, sd1_folder, sd2_folder):
    """Files written by our trainer: the in-process SD1 run, the CLI run on SD2."""
    return {"sd1": (sd1_folder, trained("sd1").file), "sd2": (sd2_folder, cli_run[0])}


@pytest.mark.parametrize("family, scheduler", [("sd1", "euler_a"), ("sd2", "ddim"), ("sd2", "euler_a")])
def test_diffusers_loads_our_file_and_draws_the_same_image(embedding_files, family, scheduler):
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    folder, file = embedding_files[family]
    emb = read_embedding(file)
    prompt, seed = f"a photo of {TOKEN}, chest", 7
    options = dict(seed=seed, steps=4, cfg=3.0, scheduler=scheduler, height=64, width=64, progress=False)

    sd = load(folder)
    sd.add_learned_token(emb.token, emb.vectors)
    ours = np.asarray(sd.sample(prompt, **options)[0][0]).astype(np.int16)
    without = np.asarray(sd.sample("a photo of, chest", **options)[0][0]).astype(np.int16)
    assert np.abs(ours - without).mean() > 1  # the learned token changes the image: the test is not vacuous

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    kind = {"euler_a": EulerAncestralDiscreteScheduler, "ddim": DDIMScheduler}[scheduler]
    pipe.scheduler = kind.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(file))  # our file as it is: one tensor keyed by the token
    assert pipe.maybe_convert_prompt(prompt, pipe.tokenizer).count(TOKEN) == emb.num_vectors
    image = pipe(prompt, num_inference_steps=4, guidance_scale=3.0, height=64, width=64,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    theirs = np.asarray(image).astype(np.int16)

    diff = np.abs(ours - theirs)
    assert ours.shape == theirs.shape == (64, 64, 3)
    assert diff.max() <= 3 and diff.mean() < 0.1, (diff.max(), diff.mean())


# ---------------------------------------------------------------- train.py on bad input


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, phantoms, sd1_single, sd2_single, sd2v_single, sd1_folder):
    """Every bad-input case of train.py, run side by side (each is a separate `python train.py`)."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty").mkdir()
    notes = tmp / "not-images"
    (notes / "sub").mkdir(parents=True)
    (notes / "readme.txt").write_text("no images here\n")
    (notes / "sub" / "labels.csv").write_text("id,label\n1,effusion\n")
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    data = ["--data", phantoms]
    cases = {  # name: (arguments, text the error line must contain)
        "empty data folder": (["--data", tmp / "empty", "--model", sd1_single], "no images found"),
        "only non-images": (["--data", notes, "--model", sd2_single], "no images found"),
        "unreadable image": (["--data", broken, "--model", sd1_folder], "could be read"),
        "missing data folder": (["--data", tmp / "nowhere", "--model", sd1_single], "nowhere"),
        "no --data": (["--model", sd1_single], "--data"),
        "missing model": ([*data, "--model", tmp / "nothing.safetensors"], "nothing.safetensors"),
        "vectors 0": ([*data, "--model", sd1_single, "--vectors", 0], "--vectors 0"),
        "vectors 100": ([*data, "--model", sd2v_single, "--vectors", 100], "--vectors 100"),
        "bad template": ([*data, "--model", sd2_single, "--template", "no-such-template"], "no-such-template"),
        "resume without state": ([*data, "--model", sd1_single, "--resume"], "--resume"),
        "resolution 37": ([*data, "--model", sd2v_single, "--resolution", 37], "--resolution 37"),
        "resolution -2": ([*data, "--model", sd1_folder, "--resolution", -2], "--resolution -2"),
        "steps 0": ([*data, "--model", sd1_single, "--steps", 0], "--steps 0"),
        "lr -1": ([*data, "--model", sd1_single, "--lr", -1], "--lr -1"),
        "token with a space": ([*data, "--model", sd1_single, "--token", "<a b>"], "--token"),
    }
    procs = {}
    for i, (name, (args, _)) in enumerate(cases.items()):
        argv = [sys.executable, str(TRAIN), "--device", "cpu", *map(str, args),
                "--output", str(tmp / f"out{i}" / "phantom.safetensors")]
        procs[name] = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr, cases[name][1], tmp / f"out{list(cases).index(name)}")
    return results


BAD_CASES = ["empty data folder", "only non-images", "unreadable image", "missing data folder", "no --data",
             "missing model", "vectors 0", "vectors 100", "bad template", "resume without state", "resolution 37",
             "resolution -2", "steps 0", "lr -1", "token with a space"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_cleanly(bad_runs, case):
    returncode, stdout, stderr, expected, out_dir = bad_runs[case]
    assert returncode == 2, f"exit {returncode}\n{stdout}\n{stderr}"
    assert "Traceback" not in stderr + stdout, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert expected in errors[0], errors[0]
    assert not out_dir.exists() or not list(out_dir.glob("*.safetensors"))  # nothing written


def test_bad_input_cases_all_ran(bad_runs):
    assert sorted(bad_runs) == sorted(BAD_CASES)


# ---------------------------------------------------------------- Ctrl-C, and the demo


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_and_exits_cleanly(phantoms, sd1_single, tmp_path):
    out = tmp_path / "phantom.safetensors"
    argv = [sys.executable, str(TRAIN), "--device", "cpu", "--data", str(phantoms), "--model", str(sd1_single),
            "--vectors", "2", "--steps", "1000000", "--save-every", "0", "--resolution", str(RES),
            "--output", str(out)]
    # SIG_DFL in the child, so Python turns SIGINT into KeyboardInterrupt even when our own shell ignores it
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = loss_csv_path(out)
    # header + 2 steps, written live
    wait_until(proc, lambda: log.is_file() and len(log.read_text().splitlines()) >= 3, "no loss rows", timeout=300)
    stdout, stderr = stop(proc, signal.SIGINT, timeout=120)
    assert proc.returncode not in (0, None), (proc.returncode, stderr)
    assert "Traceback" not in stderr + stdout, stderr
    assert "interrupted" in stdout + stderr
    emb = read_embedding(out)
    step = int(emb.metadata["step"])
    assert step >= 2 and emb.token == TOKEN and emb.vectors.shape == (2, 128)
    assert state_path(out).is_file()
    rows = csv_steps(log)  # every finished step is in the log, live (the last one may miss the row by a hair)
    assert rows == list(range(1, len(rows) + 1)) and step - 1 <= len(rows) <= step, (rows, step)


def test_demo_runs_end_to_end(tmp_path):
    """`python train.py --demo` from any folder (imports resolve from the script's own folder): 100 left-effusion
    phantoms, <effusion> from "dog" on the committed phantom model (a few steps here; that the full demo learns
    the finding is tests/test_demo_pipeline.py's and test_phantom_model.py's to show)."""
    proc = ok(subprocess.run([sys.executable, str(TRAIN), "--demo", "--steps", "6"], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=600))
    demo = tmp_path / "demo-output"
    assert len(list((demo / "phantoms").glob("*.png"))) == 100
    assert {p.read_text().strip() for p in (demo / "phantoms").glob("*.txt")} >= {
        "chest radiograph, left pleural effusion"}
    emb = read_embedding(demo / "effusion.safetensors")
    assert emb.token == "<effusion>" and emb.metadata["step"] == "6" and emb.vectors.shape == (4, 64)
    assert csv_steps(demo / "effusion-loss.csv", "<effusion>") == list(range(1, 7))
    with Image.open(demo / "effusion-preview-6.png") as im:
        assert im.format == "PNG" and im.size == (4 * 128, max(12, 128 // 10) + 128)  # the strip + its label band
    assert "wrote" in proc.stdout and "weights/phantom-sd2.safetensors" in proc.stdout
    run_suggested_command(proc.stdout, tmp_path)


def run_suggested_command(stdout: str, cwd: Path):
    """The command train.py suggests at the end works as printed (from the same folder)."""
    import shlex

    suggested = stdout.strip().splitlines()[-1].split("use it with: ", 1)[1]
    words = shlex.split(suggested)
    assert words[:2] == ["python", "sample.py"], suggested
    drawn = subprocess.run([sys.executable, str(ROOT / "sample.py"), *words[2:], "--steps", "2", "--device", "cpu"],
                           cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert drawn.returncode == 0 and "Traceback" not in drawn.stderr, drawn.stderr


def test_demo_model_is_the_committed_phantom_model_and_the_normal_loader_reads_it(tmp_path, monkeypatch):
    """--demo's model is weights/phantom-sd2.safetensors, found from any folder; mini_ldm.load reads it as an SD 2
    file at the demo's size; a missing file is refused in one line that says how to get it back."""
    from mini_ldm import demo
    from mini_ldm.errors import UserError

    monkeypatch.chdir(tmp_path)
    path = demo.demo_model_file()
    assert path == ROOT / "weights" / "phantom-sd2.safetensors" and path.is_file()
    sd = mini_ldm.load(path, device="cpu", dtype="fp32")
    assert (sd.family, sd.native_size, sd.prediction) == ("sd2", demo.DEMO_SIZE, "epsilon")
    with pytest.raises(UserError, match="phantom_model"):
        demo.demo_model_file(tmp_path / "gone.safetensors")


def test_demo_with_concepts_runs_and_its_suggested_command_works(tmp_path):
    """`train.py --demo --concepts`: two phantom folders (no finding, left effusion), one token each."""
    proc = ok(subprocess.run([sys.executable, str(TRAIN), "--demo", "--concepts", "--steps", "2"], cwd=tmp_path,
                             env=ENV, capture_output=True, text=True, timeout=600))
    out = tmp_path / "demo-output" / "concepts"
    assert {read_embedding(out / f"{x}.safetensors").token for x in ("no-finding", "effusion")} == {
        "<no-finding>", "<effusion>"}
    data = tmp_path / "demo-output" / "concepts-data"
    assert (data / "effusion" / "chest-000.txt").read_text().strip() == "chest radiograph, left pleural effusion"
    assert (data / "no-finding" / "chest-000.txt").read_text().strip() == "chest radiograph, no finding"
    run_suggested_command(proc.stdout, tmp_path)


def test_demo_fills_in_only_the_flags_not_given(tmp_path, monkeypatch):
    """--demo sizes the run for a CPU (its lr, steps, vectors, previews, no snapshots), but a flag typed with it
    keeps its value, even one typed at its ordinary default (--lr 0.005)."""
    import train
    from mini_ldm import demo

    monkeypatch.chdir(tmp_path)
    demo_only = train.resolve_settings(train.parse_args(["--demo"]))
    assert (demo_only.lr, demo_only.steps, demo_only.vectors, demo_only.save_every, demo_only.preview_every,
            demo_only.preview_steps, demo_only.batch, demo_only.init_text) == (0.05, 150, 4, 0, 150, 20, 4, "dog")
    args = train.parse_args(["--demo", "--lr", "0.005", "--steps", "100", "--vectors", "16", "--save-every", "50",
                             "--preview-every", "25", "--preview-steps", "3"])
    assert args.given == {"demo", "lr", "steps", "vectors", "save_every", "preview_every", "preview_steps"}
    mine = train.resolve_settings(args)
    assert (mine.lr, mine.steps, mine.vectors, mine.save_every, mine.preview_every, mine.preview_steps) == (
        0.005, 100, 16, 50, 25, 3)
    assert train.resolve_settings(train.parse_args(["--demo", "--steps", "7"])).preview_every == 7  # at the end
    assert demo.DEMO_TRAINING["lr"] != TrainSettings.lr  # else the first case could not tell


def test_demo_resumes_when_asked(tmp_path, monkeypatch):
    """--demo starts afresh (it replaces its own earlier run) unless --resume is given: then it continues, and
    is not refused as "--resume and --overwrite" for an --overwrite the user never typed."""
    import train

    monkeypatch.chdir(tmp_path)
    for argv, overwrite in ((["--demo"], True), (["--demo", "--resume"], False), (["--demo", "--resume", "--overwrite"], True)):
        args = train.parse_args(argv)
        train.resolve_settings(args)
        assert args.overwrite is overwrite, argv
