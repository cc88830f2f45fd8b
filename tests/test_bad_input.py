"""Bad input and lost work, tried as a new user would: every case is refused with one line and exit 2 before
any work is done (or, where it is honoured, honoured visibly), and no run's files are lost.

Flags that need no model are checked before the model loads: those cases pass a --model that does not exist,
so an error about the flag (not the model) shows the order.
"""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
from in_process import run_main
from processes import wait_until

from mini_ldm.embeddings import Embedding, read_embedding, write_embedding
from ti.phantoms import write_phantoms
from ti.run_files import lock_path, loss_csv_path, state_path
from ti.trainer import HARD_STOP_VARIABLE

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
TIMEOUT = 300
RES = 32


def run(script, *args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / script), "--device", "cpu", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def start(script, *args, cwd=REPO, env=None):
    return subprocess.Popen([sys.executable, str(REPO / script), "--device", "cpu", *map(str, args)], cwd=cwd,
                            env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sample_in_process(*args):
    """sample.py's main(argv) in this process, as its script runs it (exit status, stdout, stderr)."""
    return run_main(sample.main, "--device", "cpu", *args)


def one_line_error(proc, *needles):
    """Exit 2, no traceback, stderr's last line is the only 'error:' line and names every needle."""
    stderr = proc.stderr if isinstance(proc.stderr, str) else ""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, stderr)
    assert "Traceback" not in stderr + proc.stdout, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# --- sample.py: flags refused before the model loads --------------------------------------------------

NO_MODEL = ["--model", "/nonexistent/model.safetensors", "--prompt", "a chest x-ray", "--no-embeddings"]


@pytest.mark.parametrize("args, needles", [
    (["--height", 100000], ["--height 100000", "4096"]),
    (["--height", 100000, "--width", 100000], ["--height 100000"]),
    (["--height", 0], ["--height 0"]),
    (["--width", -8], ["--width -8"]),
    (["--cfg", "nan"], ["--cfg nan", "finite"]),
    (["--cfg", "inf"], ["--cfg inf"]),
    (["--seed", 99999999999999999999999], ["--seed 99999999999999999999999", "-1"]),
    (["--seed", -5], ["--seed -5"]),
    (["--strength", 0.5], ["--strength", "--init-image"]),
    (["--mask-blur", 3], ["--mask-blur", "--mask"]),
    (["--steps", 0], ["--steps 0"]),
    (["--height", 4], ["--height 4"]),
    (["--alphas", "0,1"], ["--alphas", "--interpolate"]),
    (["--interpolate-mode", "vectors"], ["--interpolate-mode", "--interpolate"]),
    (["--no-grid"], ["--no-grid", "--n"]),
    (["--device", "foo"], ["--device foo"]),
], ids=["height-huge", "both-huge", "height-0", "width-negative", "cfg-nan", "cfg-inf", "seed-huge",
        "seed-negative", "strength-alone", "mask-blur-alone", "steps-0", "height-4", "alphas-alone",
        "mode-alone", "no-grid-single", "device-unknown"])
def test_sample_flags_refused_before_loading(args, needles, tmp_path):
    one_line_error(sample_in_process(*NO_MODEL, *args, "--output", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


def test_a_refused_flag_exits_2_in_a_real_process(tmp_path):
    """The cases above run in this process; this one checks the real interpreter's exit status and stderr."""
    one_line_error(run("sample.py", *NO_MODEL, "--height", 100000, "--output", tmp_path / "out"), "--height 100000")
    assert not (tmp_path / "out").exists()


def test_sample_output_that_cannot_be_written_is_refused_before_loading(tmp_path):
    (tmp_path / "x.png").mkdir()  # a folder named like a file
    (tmp_path / "plain-file").write_text("not a folder")
    one_line_error(sample_in_process(*NO_MODEL, "--output", tmp_path / "x.png"), "x.png", "is a folder")
    one_line_error(sample_in_process(*NO_MODEL, "--output", tmp_path / "plain-file" / "out"), "plain-file",
                   "is a file")
    one_line_error(sample_in_process(*NO_MODEL, "--output", tmp_path / "plain-file"), "plain-file", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_sample_read_only_output_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_line_error(sample_in_process(*NO_MODEL, "--output", locked / "out"), "not writable")
    finally:
        locked.chmod(0o700)


def test_seed_minus_one_is_random(sd1_single, tmp_path):
    """AUTOMATIC1111's -1: a random seed, printed and recorded, not the literal -1."""
    proc = run("sample.py", "--model", sd1_single, "--prompt", "x", "--seed", -1, "--steps", 1, "--height", 32,
               "--width", 32, "--no-embeddings", "--output", tmp_path / "a.png")
    assert proc.returncode == 0, proc.stderr
    seed = int(proc.stdout.split("seed ")[1].split()[0])
    assert seed >= 0
    from mini_ldm.png import read_parameters
    assert f"Seed: {seed}" in read_parameters(tmp_path / "a.png")


# --- sample.py: embeddings ---------------------------------------------------------------------------

def test_default_embeddings_folder_is_lenient_and_can_be_turned_off(sd1_single, tmp_path):
    """One unreadable file in ./embeddings/ is skipped with a warning (an explicit file stays an error);
    an ordinary-word token warns once, naming the file and the word; --no-embeddings ignores the folder."""
    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / "broken.safetensors").write_bytes(b"\x00" * 64)
    write_embedding(folder / "chest.safetensors", Embedding("chest", torch.randn(2, 128), None, {}))
    base = ["--model", sd1_single, "--prompt", "a chest x-ray", "--seed", 1, "--steps", 1, "--height", 32,
            "--width", 32]
    proc = run("sample.py", *base, "--output", tmp_path / "a.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipping" in proc.stderr and "broken.safetensors" in proc.stderr
    word_warnings = [line for line in proc.stderr.splitlines() if "ordinary word" in line]
    assert len(word_warnings) == 1 and "chest.safetensors" in word_warnings[0] and "'chest'" in word_warnings[0]
    assert "learned tokens: chest" in proc.stdout

    off = run("sample.py", *base, "--no-embeddings", "--output", tmp_path / "b.png", cwd=tmp_path)
    assert off.returncode == 0 and "learned tokens" not in off.stdout and "broken" not in off.stderr

    explicit = run("sample.py", *base, "--embeddings", folder / "broken.safetensors", "--output",
                   tmp_path / "c.png", cwd=tmp_path)
    one_line_error(explicit, "broken.safetensors")


# --- train.py: nothing lost -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("data") / "phantom", count=4)


def train_args(phantoms, model, out, steps, *more):
    return ["--data", phantoms, "--model", model, "--vectors", 2, "--steps", steps, "--resolution", RES,
            "--output", out, *more]


def wait_for_rows(log: Path, rows: int, proc):
    wait_until(proc, lambda: log.is_file() and len(log.read_text().splitlines()) > rows,
               f"fewer than {rows} loss rows", TIMEOUT)


def logged_steps(log: Path) -> list:
    with open(log, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "concept", "loss", "val_loss", "seconds"], rows[:2]
    return [int(row[0]) for row in rows[1:]]


def test_finished_run_is_not_overwritten(phantoms, sd1_single, tmp_path):
    out = tmp_path / "phantom.safetensors"
    assert run("train.py", *train_args(phantoms, sd1_single, out, 3, "--save-every", 0)).returncode == 0
    before = out.read_bytes(), state_path(out).read_bytes(), loss_csv_path(out).read_text()
    one_line_error(run("train.py", *train_args(phantoms, sd1_single, out, 2)), "--resume", "--overwrite")
    assert (out.read_bytes(), state_path(out).read_bytes(), loss_csv_path(out).read_text()) == before
    again = run("train.py", *train_args(phantoms, sd1_single, out, 2, "--overwrite"))
    assert again.returncode == 0, again.stderr
    assert read_embedding(out).metadata["step"] == "2" and logged_steps(loss_csv_path(out)) == [1, 2]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_second_run_on_the_same_output_stops_and_sigterm_saves(phantoms, sd1_single, tmp_path):
    out = tmp_path / "phantom.safetensors"
    first = start("train.py", *train_args(phantoms, sd1_single, out, 10**6, "--save-every", 0))
    try:
        wait_for_rows(loss_csv_path(out), 2, first)
        second = run("train.py", *train_args(phantoms, sd1_single, out, 5, "--overwrite"))
        one_line_error(second, "another training run", f"pid {first.pid}")
        first.send_signal(signal.SIGTERM)  # what `timeout` and job schedulers send
        stdout, stderr = first.communicate(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
    assert "Traceback" not in stderr and "interrupted" in stdout + stderr, stderr
    step = int(read_embedding(out).metadata["step"])
    assert step >= 2 and state_path(out).is_file() and not lock_path(out).exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_resume_after_kill_logs_each_step_once(phantoms, sd1_single, tmp_path):
    """kill -9 leaves a stale lock and loss rows past the last save; --resume takes the lock over and the
    log ends with each step exactly once."""
    out = tmp_path / "phantom.safetensors"
    # the run kills itself (SIGKILL, as kill -9) once step 7 is done: two steps past the save at 5, so rows
    # past it are logged; deterministic, where a kill aimed from here would race the steps
    killed = start("train.py", *train_args(phantoms, sd1_single, out, 10**6, "--save-every", 5),
                   env={HARD_STOP_VARIABLE: "7"})
    try:
        killed.communicate(timeout=TIMEOUT)
        assert killed.returncode == -signal.SIGKILL, killed.returncode
        assert max(logged_steps(loss_csv_path(out))) == 7
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    saved = int(read_embedding(out).metadata["step"])
    assert lock_path(out).exists() and max(logged_steps(loss_csv_path(out))) > saved  # the situation to fix
    resumed = run("train.py", *train_args(phantoms, sd1_single, out, saved + 2, "--save-every", 5, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert logged_steps(loss_csv_path(out)) == list(range(1, saved + 3))
    assert not lock_path(out).exists()


def test_train_flags_refused_before_loading(phantoms, tmp_path):
    base = ["--data", phantoms, "--model", "/nonexistent/model.safetensors", "--output", tmp_path / "x.safetensors"]
    one_line_error(run("train.py", *base, "--device", "foo"), "--device foo")
    one_line_error(run("train.py", *base, "--resume", "--overwrite"), "--resume", "--overwrite")


def test_resume_with_other_settings_is_refused(phantoms, sd1_single, tmp_path):
    """A resume continues the saved run or nothing: another --seed (or --lr, --batch, ...) would silently make
    a different run that the README promises equals an uninterrupted one."""
    out = tmp_path / "phantom.safetensors"
    assert run("train.py", *train_args(phantoms, sd1_single, out, 2, "--save-every", 0)).returncode == 0
    one_line_error(run("train.py", *train_args(phantoms, sd1_single, out, 4, "--resume", "--seed", 5)),
                   "--seed 5", "saved run's 0")
    one_line_error(run("train.py", *train_args(phantoms, sd1_single, out, 4, "--resume", "--lr", 0.1)), "--lr 0.1")
    assert run("train.py", *train_args(phantoms, sd1_single, out, 3, "--resume")).returncode == 0  # more steps: fine


def test_pid_lock_makes_its_folder_and_names_the_holder_the_lock_and_the_output(tmp_path):
    """The one lock of training, dataset and classify runs: a live holder stops a second run with one message
    naming the output, the holder's pid and the lock file to remove; the lock goes when the run ends."""
    from mini_ldm.errors import UserError
    from mini_ldm.io import pid_lock
    lock, out = tmp_path / "new" / "folder" / "run.lock", tmp_path / "new" / "folder"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        with pid_lock(lock, out, "training run"):  # the folder is made, the lock holds our pid
            assert lock.read_text() == str(os.getpid())
        assert not lock.exists()
        lock.write_text(str(holder.pid))
        with pytest.raises(UserError) as refused:
            with pid_lock(lock, out, "dataset job"):
                pass
        assert str(refused.value) == (f"--output {out}: another dataset job (pid {holder.pid}) is writing it; wait for "
                                      f"it to finish or choose another --output (remove {lock} if pid {holder.pid} "
                                      "is not a dataset job)")
    finally:
        holder.kill()
        holder.wait()


# --- every CLI: text that is not UTF-8 --------------------------------------------------------------------

BAD_TEXT = "caf\udce9"  # b"caf\xe9" (Latin-1) as Python hands it over on a UTF-8 system: a lone surrogate


@pytest.mark.parametrize("script", ["sample", "train", "classify", "evaluate", "prepare"])
def test_every_cli_refuses_a_value_that_is_not_utf8_before_any_work(script, tmp_path):
    """One check, in the parsing every CLI shares: exit 2, one line naming the flag or argument, nothing
    written (classify, evaluate and prepare used to go on, and fail later or write the text as it came)."""
    import importlib

    out, empty, no_model = tmp_path / "out", tmp_path / "empty", tmp_path / "none.safetensors"
    empty.mkdir()
    args, needle = {
        "sample": (["--prompt", BAD_TEXT, "--model", no_model, "--device", "cpu", "--output", out], "--prompt"),
        "train": (["--data", empty, "--token", f"<{BAD_TEXT}>", "--model", no_model, "--device", "cpu",
                   "--output", out], "--token"),
        "classify": (["--train", tmp_path / BAD_TEXT, "--device", "cpu", "--output", out], "--train"),
        "evaluate": ([tmp_path / BAD_TEXT, empty, "--device", "cpu", "--output", out], "REAL"),
        "prepare": ([empty, out / BAD_TEXT], "OUT"),
    }[script]
    r = run_main(importlib.import_module(script).main, *args)
    one_line_error(r, needle, "not UTF-8")
    assert not out.exists()


# --- image files are never half written ---------------------------------------------------------------------

def test_an_image_write_cut_short_leaves_no_half_file(tmp_path, monkeypatch):
    """Ctrl-C while a PNG is being written (PIL cleans up after an Exception, not a KeyboardInterrupt): every
    image goes through mini_ldm.io.write_image_atomic, so no half PNG is left (the phantoms used to be)."""
    from PIL import Image

    from mini_ldm.io import write_image_atomic

    def cut_short(image, fp, filename):
        fp.write(b"\x89PNG\r\n\x1a\n half")
        raise KeyboardInterrupt
    monkeypatch.setitem(Image.SAVE, "PNG", cut_short)
    with pytest.raises(KeyboardInterrupt):
        write_phantoms(tmp_path / "phantoms", count=2)
    assert list((tmp_path / "phantoms").iterdir()) == []
    monkeypatch.undo()
    jpeg = write_image_atomic(tmp_path / "a.jpg", Image.new("RGB", (8, 8)), quality=90)  # the format from the name
    with Image.open(jpeg) as im:
        assert im.format == "JPEG"
