"""What every CLI shares, as a user meets it: --threads, and a mistyped flag answered in one line with the
closest flag instead of argparse's usage block (issue 24, items A.1 and A.5)."""
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
