"""What every CLI shares, as a user meets it: --threads, and a mistyped flag or a missing path answered in one
line (with the closest flag instead of argparse's usage block) before torch is imported (issue 24, A.1, A.5)."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mini_ldm.settings import parse_given

REPO = Path(__file__).resolve().parents[1]
CLIS = ["sample.py", "train.py", "prepare.py", "evaluate.py", "classify.py"]


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.mark.parametrize("script,typo,meant", [("sample.py", "--promt", "--prompt"), ("train.py", "--vectros", "--vectors"),
                                               ("evaluate.py", "--dimz", "--dims"), ("classify.py", "--seeed", "--seed"),
                                               ("prepare.py", "--recipy", "--recipe")])
def test_a_mistyped_flag_is_one_line_with_the_closest_flag(script, typo, meant):
    proc = run(script, typo, "x")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: unknown flag {typo} (did you mean {meant}?); see {script} --help"], proc.stderr


MISSING = "nowhere"  # a path that does not exist (the tests run in the repository, which has no such file)
BEFORE_TORCH = [
    ("sample.py", ["--promt", "x"]), ("sample.py", ["--prompt", "x", "--init-image", f"{MISSING}.png"]),
    ("sample.py", ["--prompt", "x", "--model", f"{MISSING}.safetensors"]), ("sample.py", ["--prompt", "x", "--steps", "0"]),
    ("sample.py", ["--prompts-file", f"{MISSING}.csv"]), ("sample.py", ["--prompt", "x", "--embeddings", MISSING]),
    ("sample.py", ["--prompt", "x", "--grid", "stepz=1,2"]), ("sample.py", ["--prompt", "x", "--grid", "steps=a,2"]),
    ("sample.py", ["--prompt", "x", "--grid", f"embedding={MISSING}.pt"]), ("sample.py", ["--prompt", "x", "--device", "cudaa"]),
    ("sample.py", ["--prompt", "x", "--count", "2", "--model", MISSING, "--output", "/tmp/mini-ldm-never-written"]),
    ("train.py", ["--data", MISSING, "--device", "cudaa"]),
    ("evaluate.py", ["tests", "tests", "--weights", f"{MISSING}.pth"]), ("evaluate.py", ["--demo", "--batch", "0"]),
    ("train.py", ["--vectros", "4"]), ("train.py", ["--data", MISSING]), ("train.py", ["--data", "tests", "--vectors", "0"]),
    ("train.py", ["--data", "tests", "--model", MISSING]),
    ("evaluate.py", ["--dimz", "64"]), ("evaluate.py", [MISSING, "tests"]),
    ("classify.py", ["--seeed", "1"]), ("classify.py", ["--train", MISSING, "--val", "tests", "--test", "tests"]),
    ("prepare.py", ["--recipy", "x"]), ("prepare.py", [MISSING, "out"]),
    ("privacy.py", ["--drawz", "2"]), ("privacy.py", ["--embeddings", MISSING, "--members", "tests", "--held-out", "tests"]),
    ("privacy.py", ["--embeddings", "tests", "--members", "tests", "--held-out", "tests", "--output", "README.md/x"]),
    ("study.py", ["create", "--readrs", "2"]), ("study.py", ["report", MISSING]), ("study.py", ["serve"]),
]


@pytest.mark.parametrize("script,args", BEFORE_TORCH, ids=[f"{s} {' '.join(a)}" for s, a in BEFORE_TORCH])
def test_flag_and_path_errors_come_before_torch_is_imported(script, args):
    """Importing torch takes seconds (7-18 s on a busy machine), so a mistake must be answered before it: the
    interpreter's own import log (-X importtime) must not list torch."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / script), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    log, said = [], []
    for line in proc.stderr.splitlines():
        (log if line.startswith("import time:") else said).append(line)
    assert proc.returncode == 2 and len(said) == 1 and said[0].startswith("error: "), proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in log[1:]}  # the first line is the log's header
    assert "numpy" in imported or "argparse" in imported  # the log is read: it names what was imported
    assert "torch" not in imported, said[0]


@pytest.mark.parametrize("script", ["evaluate.py", "classify.py", "train.py", "sample.py"])
def test_a_demo_with_a_bad_flag_writes_nothing(script, tmp_path):
    """--demo writes its data folders; a bad flag typed with it is answered first, before anything is written."""
    proc = subprocess.run([sys.executable, str(REPO / script), "--demo", "--batch" if script != "train.py" else "--lr",
                           "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --"), proc.stderr
    assert list(tmp_path.iterdir()) == [], proc.stderr


def test_the_torch_free_choices_are_what_the_code_runs():
    """Flags offer choices named without torch (so they answer before it is imported); the modules that act on
    them must know exactly those."""
    from mini_ldm import loading, samplers
    from mini_ldm.model_settings import DTYPE_NAMES
    from mini_ldm.sample_settings import SCHEDULERS

    assert tuple(loading.DTYPES) == DTYPE_NAMES
    for name in SCHEDULERS:  # each draws a schedule; an unknown name is refused
        assert samplers.make_schedule(name, 2, samplers.alphas_cumprod_from_config({})).timesteps.numel() == 2
    with pytest.raises(ValueError):
        samplers.make_schedule("heun", 2, samplers.alphas_cumprod_from_config({}))


def test_a_bad_value_is_one_line_naming_the_flag():
    proc = run("sample.py", "--steps", "many")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: argument --steps: invalid int value: 'many'; see sample.py --help"]


@pytest.mark.parametrize("script", CLIS)
def test_every_cli_takes_threads(script):
    help_text = run(script, "--help").stdout
    assert "--threads N" in help_text
    proc = run(script, "--threads", "0")
    assert proc.returncode == 2 and "--threads: invalid positive integer value: '0'" in proc.stderr


def test_threads_sets_torchs_thread_count():
    before = torch.get_num_threads()
    try:
        args, given = parse_given(argparse.ArgumentParser(prog="x"), ["--threads", "3"])
        assert args.threads == 3 and "threads" in given and torch.get_num_threads() == 3
        args, given = parse_given(argparse.ArgumentParser(prog="x"), [])
        assert args.threads is None and "threads" not in given and torch.get_num_threads() == 3  # left alone
    finally:
        torch.set_num_threads(before)
