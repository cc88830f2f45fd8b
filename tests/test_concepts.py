"""Several concepts in one run, a held-out validation loss, early stopping, the loss plot (issue 11), on the
tiny random SD1 model.

Each token learns only from its own folder (swap one folder's images: only its token changes, the others are
bit-identical); the validation loss is exactly reproducible and falls on a learnable toy set; early stopping
stops a concept whose validation loss has flattened and keeps its best vectors; a run interrupted and resumed
with validation and early stopping on equals an uninterrupted one; bad input is one line, exit 2.
"""
import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mini_ldm
from ti import concepts as concept_plan
from ti.concepts import Concept
from ti.data import cached_latents
from mini_ldm.embeddings import read_embedding
from ti.loss_plot import COLOURS, draw_loss_plot
from ti.phantoms import write_phantoms
from ti.train_settings import TrainSettings
from ti.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"
RES = 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
COLUMNS = ["step", "concept", "loss", "val_loss", "seconds"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three concept folders of five phantoms each (different seeds), and a folder with no images."""
    root = tmp_path_factory.mktemp("concepts")
    for i, name in enumerate(["effusion", "pneumonia", "edema"]):
        write_phantoms(root / name, count=5, seed=i)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not images\n")
    return root


@pytest.fixture(scope="module")
def sd(sd1_folder):
    return mini_ldm.load(sd1_folder, device="cpu", dtype="fp32")


def make_trainer(sd, data: Path, output: Path, **config) -> Trainer:
    """A Trainer as train.py builds one for --concepts: the plan, then each concept's latents."""
    settings = TrainSettings(data=data, output=output, concepts=True, **{"vectors": 2, "steps": 6, "lr": 0.05,
                                                                         "save_every": 0, **config}).check()
    concepts = concept_plan.plan(settings, warn=lambda message: None)

    def encode(images):
        with torch.no_grad():
            return tuple(x.float() for x in sd.vae.encode(images))

    for c in concepts:
        c.cache = cached_latents(c.data, encode, "tiny", output / ".latent-cache", RES, paths=c.train_paths,
                                 progress=False)
        if c.val_paths:
            c.val_cache = cached_latents(c.data, encode, "tiny", output / ".latent-cache", RES, paths=c.val_paths,
                                         progress=False)
    return Trainer(sd, ["[name]"], settings, concepts, log=lambda *a: None)


def vectors_by_token(trainer: Trainer) -> dict:
    return {c.token: p.detach().clone() for c, p in zip(trainer.concepts, trainer.params)}


def rows(path: Path) -> list:
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == COLUMNS, table[:2]
    return table[1:]


def train_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(TRAIN), "--device", "cpu", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# ---------------------------------------------------------------- each token from its own images


def test_each_token_learns_only_from_its_own_folder(sd, data, tmp_path):
    """Swap pneumonia's images for others: only <pneumonia> ends differently, the others bit for bit the same."""
    swapped = tmp_path / "swapped"
    for name in ("effusion", "edema"):
        (swapped / name).mkdir(parents=True)
        for f in (data / name).iterdir():
            (swapped / name / f.name).write_bytes(f.read_bytes())
    write_phantoms(swapped / "pneumonia", count=5, seed=99)
    first = make_trainer(sd, data, tmp_path / "a")
    second = make_trainer(sd, swapped, tmp_path / "b")
    assert [c.token for c in first.concepts] == ["<edema>", "<effusion>", "<pneumonia>"]  # notes/ skipped
    initial = vectors_by_token(first)
    first.run(progress=False)
    second.run(progress=False)
    a, b = vectors_by_token(first), vectors_by_token(second)
    for token in ("<edema>", "<effusion>"):
        assert torch.equal(a[token], b[token]), token
        assert not torch.equal(a[token], initial[token])  # they did train
    assert not torch.equal(a["<pneumonia>"], b["<pneumonia>"])
    # one optimiser over one tensor per concept; only the vectors have gradients
    assert [p for g in first.optimizer.param_groups for p in g["params"]] == first.params
    assert all(not p.requires_grad for p in sd.unet.parameters())


def test_one_concept_run_equals_the_plain_run(sd, data, tmp_path):
    """--concepts with one subfolder draws exactly what a plain run on that folder draws."""
    one = tmp_path / "one"
    (one / "effusion").mkdir(parents=True)
    for f in (data / "effusion").iterdir():
        (one / "effusion" / f.name).write_bytes(f.read_bytes())
    concepts_run = make_trainer(sd, one, tmp_path / "c")
    plain_settings = replace(concepts_run.settings, concepts=False, token="<effusion>",
                             data=one / "effusion", output=tmp_path / "p" / "effusion.safetensors")
    plain = Trainer(sd, ["[name]"], plain_settings,
                    [Concept.single(plain_settings, cache=concepts_run.concepts[0].cache)], log=lambda *a: None)
    concepts_run.run(progress=False)
    plain.run(progress=False)
    assert torch.equal(concepts_run.params[0], plain.vectors)


# ---------------------------------------------------------------- the validation loss


def test_validation_loss_is_reproducible_and_falls(sd, data, tmp_path):
    config = dict(val_images=2, val_every=10, steps=30, lr=0.05)
    runs = [make_trainer(sd, data, tmp_path / f"run{i}", **config) for i in range(2)]
    for run in runs:
        run.run(progress=False)
    history = [{t: r.history for t, r in run.records.items()} for run in runs]
    assert history[0] == history[1]  # two runs, same seed: the same values, exactly
    for token, points in history[0].items():
        assert [step for step, _ in points] == [0, 10, 20, 30]
        values = [v for _, v in points]
        assert all(b < a for a, b in zip(values, values[1:])) and values[-1] < 0.97 * values[0], (token, points)
    # the held-out images never trained: not in the training caches, listed in the metadata
    for c in runs[0].concepts:
        assert len(c.val_paths) == 2 and not set(c.val_paths) & set(c.train_paths) and len(c.cache) == 3
        meta = read_embedding(c.output).metadata
        assert sorted(json.loads(meta["val_images"])) == sorted(p.name for p in c.val_paths)
    # validating again changes nothing: it draws from its own generator, never the training one
    state = runs[0].generator.get_state()
    again = runs[0].validate()
    assert torch.equal(runs[0].generator.get_state(), state)
    assert again == {i: history[0][c.token][-1][1] for i, c in enumerate(runs[0].concepts)}


# ---------------------------------------------------------------- early stopping


def test_early_stop_freezes_a_flat_concept_and_keeps_its_best(sd, data, tmp_path):
    """At a learning rate too small to matter the validation loss is flat: after 2 validations without a new
    best each concept stops, its best (the step-0 vectors) is <name>.safetensors, its last <name>-last."""
    trainer = make_trainer(sd, data, tmp_path / "out", val_images=1, val_every=2, early_stop=2, steps=50, lr=1e-9)
    initial = vectors_by_token(trainer)
    trainer.run(progress=False)
    assert trainer.step == 4 and trainer.active == []  # validations at 0 (best), 2, 4: stopped at 4 of 50
    for c in trainer.concepts:
        best, last = read_embedding(c.output), read_embedding(c.output.with_name(f"{c.name}-last.safetensors"))
        assert torch.equal(best.vectors, initial[c.token]) and not torch.equal(last.vectors, initial[c.token])
        assert best.metadata["step"] == "0" and best.metadata["best_step"] == "0"
        assert last.metadata["step"] == "4" and last.metadata["last_step"] == "4"
        assert best.metadata["stop_reason"].startswith("early stop at step 4")
    logged = rows(trainer.files.loss_csv)
    assert max(int(r[0]) for r in logged) == 4
    with Image.open(trainer.files.plot) as im:
        assert im.format == "PNG"


# ---------------------------------------------------------------- train.py --concepts, and resuming


CLI = ["--concepts", "--vectors", 2, "--lr", 0.05, "--resolution", RES, "--val-images", 1, "--val-every", 2,
       "--early-stop", 2, "--early-stop-delta", 0.02, "--save-every", 0]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, data, sd1_folder):
    out = tmp_path_factory.mktemp("cli") / "embeddings"
    proc = ok(train_cli("--data", data, "--model", sd1_folder, *CLI, "--steps", 12, "--output", out))
    return out, proc


def test_cli_writes_one_file_per_concept_the_log_and_the_plot(cli_run):
    out, proc = cli_run
    assert [line for line in proc.stderr.splitlines() if "notes" in line] == ["skipping notes/: no images in it"]
    for name in ("edema", "effusion", "pneumonia"):
        emb = read_embedding(out / f"{name}.safetensors")  # each loadable on its own
        assert emb.token == f"<{name}>" and emb.vectors.shape == (2, 128)
        assert read_embedding(out / f"{name}-last.safetensors").token == f"<{name}>"
    assert (out / "run.state").is_file() and not list(out.glob("*.lock"))
    logged = rows(out / "loss.csv")
    assert {r[1] for r in logged} == {"<edema>", "<effusion>", "<pneumonia>"}
    assert all(r[3] for r in logged if int(r[0]) % 2 == 0) and not any(r[3] for r in logged if int(r[0]) % 2)
    with Image.open(out / "loss.png") as im:
        assert im.size == (720, 420) and out.joinpath("loss.png").stat().st_size < 100_000
        colours = {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}
        assert {tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in COLOURS[:3]} <= colours


def test_cli_resume_with_validation_and_early_stopping_equals_uninterrupted(cli_run, data, sd1_folder, tmp_path):
    reference, _ = cli_run
    stopped = [read_embedding(reference / f"{n}.safetensors").metadata["stop_reason"]
               for n in ("edema", "effusion", "pneumonia")]
    assert any(s.startswith("early stop") for s in stopped)  # the test is not vacuous
    out = tmp_path / "embeddings"
    common = ["--data", data, "--model", sd1_folder, *CLI, "--output", out]
    ok(train_cli(*common, "--steps", 3))
    proc = ok(train_cli(*common, "--steps", 12, "--resume"))
    assert "at step 3" in proc.stdout
    for f in sorted(reference.glob("*.safetensors")):
        a, b = read_embedding(f), read_embedding(out / f.name)
        assert torch.equal(a.vectors, b.vectors), f.name
        assert {k: v for k, v in a.metadata.items() if k != "base_model"} == \
               {k: v for k, v in b.metadata.items() if k != "base_model"}
    assert [r[:4] for r in rows(out / "loss.csv")] == [r[:4] for r in rows(reference / "loss.csv")]


# ---------------------------------------------------------------- the plot, and bad input


def test_loss_plot_from_a_log(tmp_path):
    log = tmp_path / "x-loss.csv"
    with open(log, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for step in range(0, 101):
            w.writerow([step, "<a>", "" if step == 0 else 1 / (step + 1), 1 / (step + 2) if step % 25 == 0 else "", 0])
    png = draw_loss_plot(log, tmp_path / "x-loss.png", title="<a>")
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.01  # axes, labels and curves drawn
    header_only = tmp_path / "empty.csv"
    header_only.write_text(",".join(COLUMNS) + "\n")
    assert draw_loss_plot(header_only, tmp_path / "none.png") is None


NO_MODEL = ["--model", "/nonexistent/model.safetensors"]


@pytest.mark.parametrize("folder, args, needles", [
    ("effusion", ["--concepts"], ["--concepts", "no subfolders with images"]),
    (".", ["--concepts", "--val-images", 5], ["--val-images 5", "at most 4"]),
    ("effusion", ["--val-images", 0, "--early-stop", 3], ["--early-stop 3", "--val-images"]),
    (".", ["--concepts", "--token", "<x>"], ["--token", "--token-prefix"]),
    ("effusion", ["--token-prefix", "cxr"], ["--token-prefix", "--concepts"]),
    (".", ["--concepts", "--val-images", 1, "--val-data", "elsewhere"], ["--val-data"]),
], ids=["flat-folder", "val-images-too-many", "early-stop-without-validation", "token-with-concepts",
        "prefix-without-concepts", "two-validation-sources"])
def test_bad_input_is_one_line_before_the_model_loads(folder, args, needles, data, tmp_path):
    """Refused before the model loads (the --model given does not exist), nothing written."""
    proc = train_cli("--data", data / folder, *NO_MODEL, *args, "--output", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    assert all(n in errors[0] for n in needles), errors[0]
    assert not (tmp_path / "out").exists()


def test_sample_loads_the_folder_of_an_early_stopped_run(cli_run):
    """sample.py's default embeddings/ folder after an --early-stop run: each token resolves to its best file."""
    from mini_ldm.embeddings import load_embeddings

    out, _ = cli_run
    found = load_embeddings(out)
    assert {t: e.source.name for t, e in found.items()} == {
        f"<{n}>": f"{n}.safetensors" for n in ("edema", "effusion", "pneumonia")}


# ---------------------------------------------------------------- a full disk during a save (issue 16, item 3)


class DiskFull:
    """mini_ldm.io.atomic_write whose files take `budget` bytes in all, then fail as a full disk does."""

    def __init__(self, budget):
        from mini_ldm import io as mini_io
        self.budget, self.real, self.written = budget, mini_io.atomic_write, 0

    def __call__(self, path, mode="wb"):
        from contextlib import contextmanager

        @contextmanager
        def limited():
            with self.real(path, mode) as f:
                yield self.File(self, f)
        return limited()

    class File:
        def __init__(self, disk, f):
            self.disk, self.f = disk, f

        def write(self, data):
            left = len(data) if self.disk.budget is None else self.disk.budget - self.disk.written
            room = max(0, min(len(data), left))
            self.f.write(data[:room])
            self.disk.written += room
            if room < len(data):
                raise OSError(28, "No space left on device")
            return room

        def __getattr__(self, name):
            return getattr(self.f, name)


def test_a_full_disk_at_any_byte_of_a_save_leaves_a_resumable_run(sd, data, tmp_path, monkeypatch):
    """A save cut short at byte b (a full disk) leaves the run resumable: it resumes at the step of the save
    cut short or the one before, and ends exactly where an uninterrupted run does. The first save of a run,
    cut short, leaves either a resumable run or nothing that stops a fresh start."""
    import shutil

    from mini_ldm import io as mini_io
    from ti.run_files import check_fresh_output

    config = dict(steps=4, val_images=1, val_every=1, early_stop=3)
    reference = make_trainer(sd, data, tmp_path / "reference", **config)
    reference.run(progress=False)
    out = tmp_path / "out"
    first = make_trainer(sd, data, out, **config)
    for _ in range(2):
        first.train_step()
        first.validate()
    counting = DiskFull(None)
    monkeypatch.setattr(mini_io, "atomic_write", counting)
    first.save()  # a whole save at step 2; it also measures one
    monkeypatch.undo()
    whole_save = counting.written
    first.train_step()
    first.validate()
    saved = tmp_path / "saved-at-2"
    shutil.copytree(out, saved)
    budgets = sorted({0, 1, whole_save - 1, *range(0, whole_save, max(1, whole_save // 12))})
    for budget in budgets:
        shutil.rmtree(out)
        shutil.copytree(saved, out)
        monkeypatch.setattr(mini_io, "atomic_write", DiskFull(budget))
        with pytest.raises(OSError, match="No space"):
            first.save()
        monkeypatch.undo()
        resumed = make_trainer(sd, data, out, **config)
        resumed.resume(out)
        assert resumed.step in (2, 3), (budget, resumed.step)
        resumed.run(progress=False)
        for token, vectors in vectors_by_token(reference).items():
            assert torch.equal(vectors_by_token(resumed)[token], vectors), (budget, token)
        assert not list(out.glob(".*.tmp")), budget  # no temporary file left behind
    # the first save of a run, cut short
    probe = make_trainer(sd, data, tmp_path / "probe", **config)
    probe.train_step()
    counting = DiskFull(None)
    monkeypatch.setattr(mini_io, "atomic_write", counting)
    probe.save()
    monkeypatch.undo()
    for budget in (0, counting.written // 3, counting.written - 1):
        fresh_out = tmp_path / f"first-{budget}"
        fresh = make_trainer(sd, data, fresh_out, **config)
        fresh.train_step()
        monkeypatch.setattr(mini_io, "atomic_write", DiskFull(budget))
        with pytest.raises(OSError, match="No space"):
            fresh.save()
        monkeypatch.undo()
        if fresh.files.state.exists():
            again = make_trainer(sd, data, fresh_out, **config)
            again.resume(fresh_out)
            assert again.step == 1
        else:
            check_fresh_output(fresh_out, True, [c.output for c in fresh.concepts])  # nothing in the way


# ---------------------------------------------------------------- tokens a prompt cannot tell apart, names not in UTF-8


def train_main(*args):
    """train.py's main(argv) in this process (flag errors need no subprocess)."""
    import train
    return train.main([str(a) for a in args])


@pytest.mark.parametrize("a, b", [("a b", "a_b"), ("Effusion", "effusion"), ("x:y", "x_y")],
                         ids=["space-and-underscore", "case", "file-name"])
def test_colliding_tokens_are_refused_naming_both_folders(a, b, tmp_path):
    """Two folders whose tokens prompts match alike (or whose files would be one) would lose a concept
    silently: refused before any work (the --model does not exist), naming both folders."""
    from mini_ldm.errors import UserError

    for name in (a, b):
        write_phantoms(tmp_path / "data" / name, count=2)
    with pytest.raises(UserError) as refused:
        train_main("--data", tmp_path / "data", "--concepts", *NO_MODEL, "--output", tmp_path / "out")
    message = str(refused.value)
    assert "--concepts" in message and repr(a) in message and repr(b) in message, message
    assert not (tmp_path / "out").exists()


def test_names_and_flags_not_in_utf8_are_one_line_before_the_model_loads(tmp_path):
    """A Latin-1 subfolder name, --token or --init bytes: one line naming the flag, before any work."""
    from mini_ldm.errors import UserError

    latin1 = os.fsdecode(b"caf\xe9")  # as Python sees the bytes on a UTF-8 system: a lone surrogate
    write_phantoms(tmp_path / "data" / latin1, count=2)
    write_phantoms(tmp_path / "flat" / "images", count=2)
    cases = [(["--data", tmp_path / "data", "--concepts"], "--concepts"),
             (["--data", tmp_path / "flat", "--token", f"<{latin1}>"], "--token"),
             (["--data", tmp_path / "flat", "--init", latin1], "--init")]
    for args, needle in cases:
        with pytest.raises(UserError) as refused:
            train_main(*args, *NO_MODEL, "--output", tmp_path / "out")
        assert str(refused.value).startswith(needle) and "not UTF-8" in str(refused.value), str(refused.value)
        str(refused.value).encode("utf-8")  # printable as it is
    assert not (tmp_path / "out").exists()
    # the same through the CLI, with the raw bytes in argv: exit 2, one line
    proc = subprocess.run([sys.executable, str(TRAIN), "--device", "cpu", "--data", str(tmp_path / "flat"),
                           "--token", b"<caf\xe9>", *NO_MODEL, "--output", str(tmp_path / "out")], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --token") and "not UTF-8" in last, proc.stderr


# ---------------------------------------------------------------- the same command twice, the same bytes (item 4)


def test_the_same_command_twice_writes_the_same_bytes(data, sd1_folder, tmp_path):
    """Every file of a --concepts run with validation and early stopping, byte for byte (the loss log's
    seconds column, a wall-clock time, aside)."""
    args = ["--data", data, "--model", sd1_folder, *CLI, "--steps", 3, "--output", "embeddings"]
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        ok(train_cli(*args, cwd=tmp_path / name))
        runs.append(tmp_path / name / "embeddings")
    files = [sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) for run in runs]
    assert files[0] == files[1] and "run.state" in files[0] and "edema.safetensors" in files[0]
    for name in files[0]:
        a, b = (run / name for run in runs)
        if name == "loss.csv":
            assert [r[:4] for r in rows(a)] == [r[:4] for r in rows(b)]
        else:
            assert a.read_bytes() == b.read_bytes(), name


# ---------------------------------------------------------------- the loss plot as a person reads it (item 16)


def test_loss_plot_legend_sits_off_the_curves_and_marks_best_and_stop(tmp_path):
    """The legend is right of the plot, not over the curves (a rising curve leaves the plot's top-left corner
    empty: nothing is drawn there); the best validation and the early stop are marked; a run without
    validation says nothing about validation."""
    from ti.loss_plot import LEFT, RIGHT, SIZE, TOP, legend_lines

    log = tmp_path / "rising.csv"
    with open(log, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for step in range(1, 101):
            w.writerow([step, "<a>", step / 100, (0.5 + abs(step - 25) / 100) if step % 25 == 0 else "", 0])
    colour = np.array([int(COLOURS[0][i:i + 2], 16) for i in (1, 3, 5)])

    def drawn(name, marks):
        with Image.open(draw_loss_plot(log, tmp_path / name, marks=marks)) as im:
            return np.asarray(im.convert("RGB")).astype(int)

    plain, marked = drawn("plain.png", None), drawn("marked.png", {"<a>": {"best": 25, "stop": 75}})
    is_colour = (np.abs(marked - colour).sum(axis=2) < 60)
    assert not is_colour[TOP + 1:TOP + 80, LEFT + 1:LEFT + 250].any()  # no legend over the plot
    assert is_colour[:, SIZE[0] - RIGHT:].any()  # the legend, right of it, in the concept's colour
    changed = (plain != marked).any(axis=2)
    assert changed[:, LEFT + 1:SIZE[0] - RIGHT].sum() > 100  # the ring moved to step 25, the stop line at 75
    assert not any("validation" in text for text, _ in legend_lines(["<a>"], validation=False, stopped=False))
    assert any("validation" in text for text, _ in legend_lines(["<a>"], validation=True, stopped=False))
    assert any("early stop" in text for text, _ in legend_lines(["<a>"], validation=True, stopped=True))
