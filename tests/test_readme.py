"""The tables of settings in the README and its docs/ pages are made from the settings dataclasses, and every
flag of every CLI is documented there (the README is the landing page; each tool's reference is a docs/ page). When a setting changes, regenerate its table with

    python -c "from mini_ldm.settings import markdown_table; from mini_ldm.sample_settings import SampleSettings; print(markdown_table(SampleSettings))"

(or TrainSettings from ti.train_settings) and paste it over the old one.
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.settings import ClassifySettings
from measure.evaluate_settings import EvaluateSettings
from mini_ldm.dataset.request import DatasetOptions
from mini_ldm.model_settings import ModelSettings
from mini_ldm.sample_settings import SampleSettings
from mini_ldm.settings import add_flags, markdown_table
from prepare import PrepareSettings
from ti.train_settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]
# The README and the pages it links: where a user looks for a flag.
DOCS = "\n".join(path.read_text(encoding="utf-8") for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


@pytest.mark.parametrize("cls", [SampleSettings, TrainSettings, DatasetOptions, ModelSettings, ClassifySettings,
                                 PrepareSettings, EvaluateSettings])
def test_settings_tables_are_generated(cls):
    table = markdown_table(cls)
    assert table in DOCS, f"the docs' table of {cls.__name__} is stale; paste this over it:\n{table}"


def test_flags_from_settings_carry_their_defaults():
    parser = argparse.ArgumentParser()
    add_flags(parser, SampleSettings)
    args = parser.parse_args([])
    assert (args.steps, args.cfg, args.scheduler, args.seed) == (30, 3.0, "euler_a", None)
    help_text = parser.format_help()
    assert "(default: 30)" in help_text and "random, printed" in help_text


@pytest.mark.parametrize("script", ["sample.py", "train.py", "prepare.py", "evaluate.py", "classify.py", "privacy.py"])
def test_every_flag_is_in_the_readme(script):
    proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", proc.stdout)) - {"--help"}
    missing = sorted(flag for flag in flags if f"`{flag}" not in DOCS)
    assert not missing, f"{script} flags not documented in README.md or docs/*.md: {missing}"


@pytest.mark.parametrize("script", ["sample.py", "train.py"])
def test_model_flags_come_from_model_settings(script):
    """--model, --device, --dtype/--precision, --prediction: one definition (ModelSettings) for every CLI that
    loads Stable Diffusion; --device's help names every kind of device (issue 16, item 18)."""
    proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    help_text = " ".join(proc.stdout.split())
    for words in ("cpu, cuda, cuda:N (the N-th GPU) or mps", "what a single-file model predicts",
                  "a .safetensors/.ckpt single file or a diffusers folder", "--dtype {fp32,fp16,bf16}, --precision"):
        assert words in help_text, (script, words)


def test_device_is_one_option_everywhere():
    """--device is defined once (settings.device_option): the same help and default in every CLI's settings;
    training's precision default is one function (loading.default_autocast_dtype)."""
    from mini_ldm.loading import default_autocast_dtype

    tables = [markdown_table(cls) for cls in (ModelSettings, ClassifySettings, EvaluateSettings)]
    rows = {next(line for line in table.splitlines() if line.startswith("| `--device`")) for table in tables}
    assert len(rows) == 1 and "cuda:N (the N-th GPU) or mps" in rows.pop()
    assert default_autocast_dtype("cpu") == "fp32"
