"""sample.py as a user runs it: a subprocess, its exit status, the files it writes, its error text.

Bad inputs must end with exit status 2 and a single `error: ...` line naming the file or flag, with no
traceback, and a .ckpt holding a pickled program must never run it. Those runs go through sample.py's
main(argv) in this process, as the script runs it (tests/in_process.py); the runs that make images, and
test_bad_input.py's real-process case, keep a subprocess for the real exit status.
"""
import builtins
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mini_ldm
import sample
from in_process import run_main
from mini_ldm import cli

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a frontal chest x-ray, PA view"
TIMEOUT = 300


NO_EMBEDDINGS = []  # an empty folder, set below


@pytest.fixture(scope="module", autouse=True)
def no_embeddings(tmp_path_factory):
    """sample.py reads ./embeddings/ by default; point it at an empty folder so that learned tokens a
    developer keeps in the repo (for some other model) cannot change these runs."""
    NO_EMBEDDINGS[:] = [tmp_path_factory.mktemp("no-embeddings")]


def command(*args):
    return [sys.executable, str(REPO / "sample.py"), *map(str, args), "--device", "cpu",
            "--embeddings", str(NO_EMBEDDINGS[0])]


def environment(weights=None):
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"  # a library's deprecation warning is not what these tests look at
    env["OMP_NUM_THREADS"] = "1"  # several runs at once on a small CPU
    if weights is not None:
        env["MINI_LDM_WEIGHTS"] = str(weights)
    return env


def run(*args, weights=None):
    return subprocess.run(command(*args), cwd=REPO, env=environment(weights), capture_output=True, text=True,
                          timeout=TIMEOUT)


def pngs(folder):
    return sorted(Path(folder).glob("*.png"))


def parameters(path):
    with Image.open(path) as im:
        return im.info["parameters"]


def seed_printed(stdout):
    found = re.findall(r"^seed (\d+)$", stdout, re.M)
    assert len(found) == 1, stdout
    return int(found[0])


# --- runs that make images ----------------------------------------------------------------------


def test_run_writes_png_with_parameters(sd1_single, tmp_path):
    out = tmp_path / "outputs"
    args = ["--prompt", PROMPT, "--negative-prompt", "blurry", "--seed", 7, "--steps", 2, "--cfg", 2.5,
            "--scheduler", "euler_a", "--height", 64, "--width", 48]
    r = run("--model", sd1_single, *args, "--output", out)
    assert r.returncode == 0, r.stderr
    assert seed_printed(r.stdout) == 7
    assert "epsilon" in r.stdout  # the prediction type chosen is printed
    files = pngs(out)
    assert [p.name for p in files] == ["00000-7.png"]
    text = parameters(files[0])
    lines = text.split("\n")
    assert lines[0] == PROMPT and lines[1] == "Negative prompt: blurry"
    for part in ("Steps: 2", "Sampler: Euler a", "CFG scale: 2.5", "Seed: 7", "Size: 48x64",
                 "Model: v1-5-pruned-emaonly"):
        assert part in lines[2], part
    # The file holds exactly the image the Python API makes with the same settings.
    sd = mini_ldm.load(sd1_single, device="cpu", dtype="fp32")
    images, _ = sd.sample(PROMPT, "blurry", seed=7, steps=2, cfg=2.5, scheduler="euler_a", height=64, width=48,
                          progress=False)
    with Image.open(files[0]) as im:
        assert im.size == (48, 64)
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(images[0]))
    assert np.asarray(images[0]).std() > 5


def test_n_images_to_a_png_name_with_a_random_seed(sd2v_folder, tmp_path):
    out = tmp_path / "sub" / "xray.png"
    r = run("--model", sd2v_folder, "--prompt", PROMPT, "--steps", 2, "--cfg", 1, "--scheduler", "dpm++2m",
            "--height", 32, "--width", 32, "--n", 2, "--output", out)
    assert r.returncode == 0, r.stderr
    seed = seed_printed(r.stdout)
    assert "v prediction" in r.stdout  # from the folder's scheduler config
    # One file per image, numbered after the given name (a contact sheet "xray-grid.png" may come too).
    files = [p for p in pngs(out.parent) if not p.name.endswith("-grid.png")]
    assert [p.name for p in files] == ["xray-0.png", "xray-1.png"]
    assert not out.exists()
    texts = [parameters(p) for p in files]
    for i, text in enumerate(texts):
        assert text.startswith(PROMPT + "\n") and "Negative prompt" not in text
        assert f"Seed: {seed}," in text and "Steps: 2" in text and "Sampler: DPM++ 2M," in text
        assert "Batch size: 2" in text and f"Batch pos: {i}" in text
    with Image.open(files[0]) as a, Image.open(files[1]) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_default_model_from_the_weights_folder(sd2_single, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    os.symlink(sd2_single, weights / sd2_single.name)
    (weights / "README.md").write_text("not a checkpoint\n")
    out = tmp_path / "one.png"
    r = run("--prompt", PROMPT, "--seed", 3, "--steps", 1, "--scheduler", "ddim", "--height", 32, "--width", 32,
            "--output", out, weights=weights)
    assert r.returncode == 0, r.stderr
    assert sd2_single.name in r.stdout
    assert seed_printed(r.stdout) == 3
    assert pngs(tmp_path) == [out]
    assert "Model: 512-base-ema" in parameters(out) and "Seed: 3" in parameters(out)


# --- bad input: exit 2, one line, no traceback, no code run -------------------------------------


class Payload:
    """Unpickling this runs code: it writes `marker`. A safe loader must never get that far."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def pickled_program(path, marker):
    """A .ckpt shaped like a real one (a state_dict of tensors) that also carries a program."""
    torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.randn(4)}, "callbacks": Payload(marker)},
               path)
    return path


def test_the_pickled_program_is_live(tmp_path):
    """Control: loading it unsafely really runs the code, so the CLI test below means something."""
    marker = tmp_path / "ran"
    path = pickled_program(tmp_path / "control.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, sd1_single):
    """Build each bad input, start every run at once, and collect the results: name -> (run, context)."""
    d = tmp_path_factory.mktemp("bad")
    data = sd1_single.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"foo": torch.randn(4, 4)}, str(d / "foo.safetensors"))
    (d / "empty").mkdir()
    (d / "empty-weights").mkdir()
    (d / "noise.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    pickled_program(d / "program.ckpt", d / "pwned")
    base = ["--prompt", PROMPT, "--seed", 1, "--steps", 1, "--height", 32, "--width", 32]
    cases = {  # name -> (extra args, strings the error line must contain, MINI_LDM_WEIGHTS)
        "missing": (["--model", d / "nowhere.safetensors"], ["nowhere.safetensors"], None),
        "truncated": (["--model", d / "truncated.safetensors"], ["truncated.safetensors"], None),
        "not_sd": (["--model", d / "foo.safetensors"], ["foo.safetensors", "not a Stable Diffusion"], None),
        "empty_folder": (["--model", d / "empty"], [str(d / "empty"), "empty"], None),
        "random_bytes": (["--model", d / "noise.ckpt"], ["noise.ckpt"], None),
        "pickled_program": (["--model", d / "program.ckpt"], ["program.ckpt", "refused"], None),
        "bad_height": (["--model", sd1_single, "--height", 61], ["--height 61", "multiple of 2"], None),
        "no_model": ([], ["--model", str(d / "empty-weights"), "huggingface.co"], d / "empty-weights"),
    }
    results = {}
    for name, (extra, _, weights) in cases.items():  # in this process: sample.main(argv) as the script runs it
        out = d / f"out-{name}"
        with pytest.MonkeyPatch.context() as env, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as PYTHONWARNINGS=ignore: a library's warning is not the point
            if weights is not None:
                env.setenv("MINI_LDM_WEIGHTS", str(weights))
            proc = run_main(sample.main, *command(*base, *extra, "--output", out)[2:])
        results[name] = (proc.returncode, proc.stdout, proc.stderr, cases[name][1], out)
    return d, results


@pytest.mark.parametrize("name", ["missing", "truncated", "not_sd", "empty_folder", "random_bytes",
                                  "pickled_program", "bad_height", "no_model"])
def test_bad_input_is_one_line_and_exit_2(name, bad_runs):
    d, results = bad_runs
    returncode, stdout, stderr, needles, out = results[name]
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    assert returncode == 2, (returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists() or not pngs(out)  # nothing written
    assert not (d / "pwned").exists()  # the pickled program never ran, in any of the runs


def test_demo_runs_with_nothing_downloaded(tmp_path):
    """`sample.py --demo` from an empty folder: the committed phantom model, a 128 px PNG with its parameters in
    demo-output/, and no other checkpoint needed (the default weights/ is pointed at an empty folder); without
    the embedding of `train.py --demo` it draws the finding by its caption words."""
    empty = tmp_path / "no-weights"
    empty.mkdir()
    result = subprocess.run([sys.executable, str(REPO / "sample.py"), "--demo", "--steps", "3", "--seed", "11"],
                            cwd=tmp_path, env=environment(empty), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    written = pngs(tmp_path / "demo-output")
    assert len(written) == 1
    text = parameters(written[0])
    assert "Seed: 11" in text and "Steps: 3" in text and "chest radiograph, left pleural effusion" in text
    assert np.asarray(Image.open(written[0])).std() > 0 and Image.open(written[0]).size == (128, 128)


# --- out of memory: one line saying what to lower ----------------------------------------------------------

def test_an_allocator_error_is_one_line_naming_what_to_lower():
    """The CPU allocator's error (a tiny model taken at a native size, asked for 64 GiB), as any CLI gets it."""
    def greedy(argv):
        torch.empty(2**62, dtype=torch.uint8)  # far past any machine: the allocator refuses at once

    r = run_main(greedy, memory_hint="lower --size")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: out of memory (") and "lower --size" in r.stderr
    assert cli.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB"))
    assert cli.is_out_of_memory(MemoryError()) and not cli.is_out_of_memory(RuntimeError("shape mismatch"))


def test_the_cpu_allocators_error_keeps_its_words_not_its_cpp_check():
    """torch's CPU allocator begins with a C++ check ("[enforce fail at alloc_cpu.cpp:127] err == 0. "): the
    one line keeps what follows it."""
    from mini_ldm.errors import first_line

    said = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 4611686018427387904 bytes. Error code 12 (Cannot allocate memory)")
    assert first_line(RuntimeError(said)) == ("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                              "4611686018427387904 bytes")
    assert first_line(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")) == "CUDA out of memory"


@pytest.mark.parametrize("dataset", [False, True], ids=["sample", "dataset"])
def test_sample_and_dataset_out_of_memory_say_lower_height_width_batch(dataset, sd1_single, tmp_path, monkeypatch):
    def allocate_too_much(self, *args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 68719476736 bytes.")

    from mini_ldm.pipeline import StableDiffusion

    monkeypatch.setattr(StableDiffusion, "sample_seeds" if dataset else "sample", allocate_too_much)
    more = ["--count", 1, "--output", tmp_path / "set"] if dataset else ["--output", tmp_path / "one.png"]
    r = run_main(sample.main, "--model", sd1_single, "--device", "cpu", "--no-embeddings", "--prompt", PROMPT,
                 "--steps", 1, "--height", 32, "--width", 32, *more, memory_hint=sample.MEMORY_HINT)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert "68719476736 bytes" in errors[0] and "--height/--width" in errors[0] and "--batch" in errors[0]


def test_an_unknown_learned_token_in_prompt_is_refused_naming_the_loaded_ones(sd1_single, tmp_path):
    """Issue 24 A.3: `<phantom-a>` when only `<docs>` is loaded was drawn as plain text with exit 0, while a
    prompts file refused it; now --prompt and --negative-prompt refuse it the same way, before drawing."""
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_file({"emb_params": torch.randn(2, 128)}, str(folder / "<docs>.safetensors"))  # diffusers' layout, the tiny SD1 width
    base = ["--model", sd1_single, "--device", "cpu", "--embeddings", folder, "--steps", 1, "--height", 32,
            "--width", 32, "--output", tmp_path / "out"]
    for extra, flag in ((["--prompt", "a <phantom-a> x-ray"], "--prompt"),
                        (["--prompt", "a <docs> x-ray", "--negative-prompt", "<blurry>"], "--negative-prompt")):
        r = run_main(sample.main, *base, *extra)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert flag in r.stderr and "is not a learned token" in r.stderr and "<docs>" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() or not pngs(tmp_path / "out")
    r = run_main(sample.main, *base, "--prompt", "a <DOCS> x-ray")  # matched as prompts match: case ignored
    assert r.returncode == 0, r.stderr
    assert "<docs>.safetensors" in r.stdout  # which file each learned token came from


def test_init_image_and_mask_are_checked_before_the_model_loads(tmp_path):
    """Issue 24 A.4: a folder, a missing file or a non-image as --init-image/--mask is refused with the right
    words before any model is looked for (the model path here does not exist, so loading first would say so)."""
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (32, 32), (90, 120, 150)).save(tmp_path / "xray.png")
    missing_model = tmp_path / "no-such-model.safetensors"
    cases = [(["--init-image", tmp_path], "--init-image", "is a folder"),
             (["--init-image", tmp_path / "gone.png"], "--init-image", "no such file"),
             (["--init-image", tmp_path / "notes.txt"], "--init-image", "not a readable image"),
             (["--init-image", tmp_path / "xray.png", "--mask", tmp_path], "--mask", "is a folder")]
    for extra, flag, words in cases:
        r = run_main(sample.main, "--model", missing_model, "--device", "cpu", "--no-embeddings", "--prompt", PROMPT,
                     *extra, "--output", tmp_path / "out")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: {flag} ") and words in r.stderr and "no-such-model" not in r.stderr, r.stderr
