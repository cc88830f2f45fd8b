"""Dataset jobs (sample.py --count / --prompts-file, mini_ldm.dataset.generate_dataset): the four equalities and the manifest.

An image of a job is a function of its seed alone, so these must hold (8-bit images, at most 1 level apart
and under 0.01 on average where batching changes the round-off, the PNG texts and the manifest exactly):
  batch-independence     --batch 1 == --batch 3 (3 + a short 2)
  single runs            image i == `sample.py --seed <seed+i> --n 1`
  resume                 Ctrl-C, then a kill -9 mid-job, a truncated PNG, a deleted one, then the same
                         command: the same files and manifest as one uninterrupted run
  processes              torchrun --nproc-per-node 2 == one process
The tiny SD1 model at 32 px, 2 steps of Euler a (whose per-step draws test the per-image generators).
"""
import csv
import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from in_process import run_main
from processes import wait_until
from mini_ldm import hashes
from mini_ldm.dataset import generate_dataset
from mini_ldm.dataset.folder import LOCK
from mini_ldm.errors import UserError
from mini_ldm.png import read_parameters

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a frontal chest x-ray"
SEED, COUNT = 40, 5
FAST = ["--steps", 2, "--height", 32, "--width", 32, "--cfg", 3, "--scheduler", "euler_a"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xdg-cache")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "XDG_CACHE_HOME": str(cache)}


def command(*args, torchrun=0):
    head = [sys.executable]
    if torchrun:
        head += ["-m", "torch.distributed.run", "--nproc-per-node", str(torchrun), "--master-port", str(free_port())]
    return head + [str(REPO / "sample.py"), "--device", "cpu", "--no-embeddings", *map(str, args)]


def start(env, *args, torchrun=0):
    return subprocess.Popen(command(*args, torchrun=torchrun), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_args(model, out, *more):
    return ["--model", model, "--prompt", PROMPT, "--count", COUNT, "--seed", SEED, *FAST, "--output", out, *more]


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def assert_close(a, b):
    diff = np.abs(pixels(a) - pixels(b))
    assert diff.max() <= 1 and diff.mean() < 0.01, (a, b, diff.max(), diff.mean())


def tree(folder) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())


def assert_same_dataset(got, want):
    assert tree(got) == tree(want)
    assert (Path(got) / "metadata.csv").read_text() == (Path(want) / "metadata.csv").read_text()
    for name in tree(want):
        if name.endswith(".png"):
            assert read_parameters(Path(got) / name) == read_parameters(Path(want) / name), name
            assert_close(Path(got) / name, Path(want) / name)


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@pytest.fixture(scope="module")
def runs(sd1_single, env, tmp_path_factory):
    """Started together: the reference job (--batch 2), two single sample.py runs, the same job on 2 processes."""
    root = tmp_path_factory.mktemp("runs")
    procs = {
        "reference": start(env, *job_args(sd1_single, root / "reference", "--batch", 2)),
        "single1": start(env, "--model", sd1_single, "--prompt", PROMPT, "--seed", SEED + 1, *FAST,
                         "--output", root / "single1.png"),
        "single4": start(env, "--model", sd1_single, "--prompt", PROMPT, "--seed", SEED + 4, *FAST,
                         "--output", root / "single4.png"),
        "torchrun": start(env, *job_args(sd1_single, root / "two"), torchrun=2),
    }
    return root, {name: finish(proc) for name, proc in procs.items()}


def test_job_writes_numbered_pngs_and_a_sorted_manifest(runs, sd1_single):
    root, done = runs
    r = done["reference"]
    assert r.returncode == 0, r.stderr
    assert f"seed {SEED}" in r.stdout.splitlines() and "written 5, skipped 0" in r.stdout
    out = root / "reference"
    assert tree(out) == [f"{i:05d}.png" for i in range(COUNT)] + ["metadata.csv"]
    with open(out / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file_name", "prompt", "negative_prompt", "seed", "steps", "cfg", "scheduler", "width",
                             "height", "model", "model_hash", "embeddings"]
    model_hash = hashlib.sha256(Path(sd1_single).read_bytes()).hexdigest()[:10]
    for i, row in enumerate(rows):
        assert row == {"file_name": f"{i:05d}.png", "prompt": PROMPT, "negative_prompt": "", "seed": str(SEED + i),
                       "steps": "2", "cfg": "3.0", "scheduler": "euler_a", "width": "32", "height": "32",
                       "model": "v1-5-pruned-emaonly", "model_hash": model_hash, "embeddings": ""}
        assert f"Seed: {SEED + i}," in read_parameters(out / row["file_name"])


def test_image_i_is_the_single_run_with_seed_plus_i(runs):
    root, done = runs
    for i in (1, 4):
        assert done[f"single{i}"].returncode == 0, done[f"single{i}"].stderr
        assert_close(root / "reference" / f"{i:05d}.png", root / f"single{i}.png")
        assert read_parameters(root / "reference" / f"{i:05d}.png") == read_parameters(root / f"single{i}.png")


def test_two_processes_equal_one(runs):
    root, done = runs
    r = done["torchrun"]
    assert r.returncode == 0, r.stderr
    assert "written 5, skipped 0" in r.stdout and "on 2 processes" in r.stdout
    assert_same_dataset(root / "two", root / "reference")


def test_batch_size_changes_nothing(tiny, tmp_path, monkeypatch):
    """The Python API: --batch 1 and --batch 3 (3 + 2) give the same images, texts and manifest."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sd = tiny("sd1", "single")
    options = dict(prompt=PROMPT, count=COUNT, seed=SEED, steps=2, height=32, width=32, cfg=3.0, progress=False,
                   log=lambda *a: None)
    one = generate_dataset(sd, tmp_path / "b1", batch=1, **options)
    three = generate_dataset(sd, tmp_path / "b3", batch=3, **options)
    assert (one.written, three.written, one.seed) == (COUNT, COUNT, SEED)
    assert_same_dataset(tmp_path / "b3", tmp_path / "b1")
    images, _ = sd.sample(PROMPT, seed=SEED + 3, steps=2, height=32, width=32, cfg=3.0, progress=False)
    assert np.abs(pixels(tmp_path / "b3" / "00003.png") - np.asarray(images[0]).astype(int)).max() <= 1
    again = generate_dataset(sd, tmp_path / "b3", batch=2, **options)  # a complete folder: nothing to do
    assert (again.written, again.skipped) == (0, COUNT)


def wait_for_pngs(proc, folder, n):
    wait_until(proc, lambda: len(list(Path(folder).glob("*.png"))) >= n, f"fewer than {n} PNGs in {folder}", TIMEOUT,
               poll=0.02)


def test_resume_after_ctrl_c_and_kill_equals_one_run(runs, sd1_single, env, tmp_path):
    root, _ = runs
    out = tmp_path / "resumed"
    args = job_args(sd1_single, out, "--batch", 1)
    proc = start(env, *args)
    wait_for_pngs(proc, out, 1)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the current image is finished and kept, then exit 130
    r = finish(proc)
    assert r.returncode == 130, r.stderr
    kept = tree(out)
    assert "metadata.csv" in kept and len(kept) - 1 < COUNT
    proc = start(env, *args)
    wait_for_pngs(proc, out, len(kept))  # kept images are skipped, so this is the next one drawn
    proc.kill()
    proc.communicate()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) < COUNT
    pngs[0].write_bytes(pngs[0].read_bytes()[:200])  # a damaged file is redrawn
    r = finish(start(env, *args))
    assert r.returncode == 0, r.stderr
    assert f"skipped {len(pngs) - 1}" in r.stdout
    assert_same_dataset(out, root / "reference")


def test_random_seed_is_recorded_and_reused_and_other_settings_are_refused(sd1_single, env, tmp_path):
    out = tmp_path / "random"
    base = ["--model", sd1_single, "--prompt", PROMPT, *FAST, "--output", out]
    r = finish(start(env, *base, "--count", 2))
    assert r.returncode == 0, r.stderr
    seed = int(next(line for line in r.stdout.splitlines() if line.startswith("seed "))[5:])
    r = finish(start(env, *base, "--count", 3))  # a rerun without --seed goes on with the recorded one
    assert r.returncode == 0, r.stderr
    assert f"seed {seed}" in r.stdout and "written 1, skipped 2" in r.stdout
    assert f"Seed: {seed + 2}," in read_parameters(out / "00002.png")
    before = {name: (out / name).read_bytes() for name in tree(out)}
    r = finish(start(env, *base[:-6], "--steps", 3, "--height", 32, "--width", 32, "--output", out, "--count", 3))
    one_line_error(r, "00000.png", "steps", "'2'", "'3'", "--steps", "--overwrite")
    assert {name: (out / name).read_bytes() for name in tree(out)} == before
    r = finish(start(env, *base[:-6], "--steps", 3, "--height", 32, "--width", 32, "--output", out, "--count", 3,
                     "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert "written 3, skipped 0" in r.stdout and "Steps: 3," in read_parameters(out / "00000.png")


def test_prompts_file_makes_labelled_folders(sd1_single, env, tmp_path):
    from mini_ldm.embeddings import Embedding, write_embedding

    emb = write_embedding(tmp_path / "emb" / "cancer.safetensors",
                          Embedding("<cancer>", torch.randn(2, 128, generator=torch.Generator().manual_seed(0))))
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,count,folder,steps\na healthy prostate,2,neg,\n<cancer> prostate,2,pos,3\n")
    out = tmp_path / "labelled"
    r = finish(start(env, "--model", sd1_single, "--prompts-file", prompts, "--seed", 7, *FAST, "--output", out,
                     "--embeddings", emb.parent))
    assert r.returncode == 0, r.stderr
    assert tree(out) == ["metadata.csv", "neg/00000.png", "neg/00001.png", "pos/00000.png", "pos/00001.png"]
    with open(out / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    emb_hash = hashlib.sha256(emb.read_bytes()).hexdigest()[:10]
    assert [(r["file_name"], r["seed"], r["steps"], r["embeddings"]) for r in rows] == [
        ("neg/00000.png", "7", "2", ""), ("neg/00001.png", "8", "2", ""),
        ("pos/00000.png", "9", "3", f"<cancer>:{emb_hash}"), ("pos/00001.png", "10", "3", f"<cancer>:{emb_hash}")]
    assert read_parameters(out / "pos/00001.png").startswith("<cancer> prostate\nSteps: 3,")


@pytest.mark.parametrize("csv_text, needles", [
    ("prompt,folder\na,neg\n", ["prompts.csv", "'count'"]),
    ("prompt,count\na,ten\n", ["prompts.csv line 2", "count", "'ten'"]),
    ("prompt,count\na,2\n<nowhere> b,2\n", ["prompts.csv line 3", "<nowhere>", "not a learned token"]),
], ids=["missing-column", "count-not-integer", "unknown-token"])
def test_bad_prompts_files_write_nothing(csv_text, needles, sd1_single, env, tmp_path):
    (tmp_path / "prompts.csv").write_text(csv_text)
    r = finish(start(env, "--model", sd1_single, "--prompts-file", tmp_path / "prompts.csv", *FAST,
                     "--output", tmp_path / "out"))
    one_line_error(r, *needles)
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_and_other_bad_flags(tmp_path):
    (tmp_path / "taken").write_text("a file")
    no_model = ["--model", tmp_path / "none.safetensors", "--prompt", PROMPT]
    cases = [
        ([*no_model, "--count", 3, "--output", tmp_path / "taken"], ["--output", "taken", "is a file"]),
        ([*no_model, "--count", "0", "--output", tmp_path / "o1"], ["--count 0"]),
        ([*no_model, "--count", 3, "--batch", 0, "--output", tmp_path / "o2"], ["--batch 0"]),
        ([*no_model, "--count", 3, "--n", 2, "--output", tmp_path / "o3"], ["--n 2", "--batch"]),
        ([*no_model, "--batch", 2, "--output", tmp_path / "o4"], ["--batch", "--count"]),
    ]
    for args, needles in cases:  # in this process: each is refused before a model would load
        one_line_error(run_main(sample.main, "--device", "cpu", "--no-embeddings", *args), *needles)
    assert tree(tmp_path) == ["taken"]


def test_model_hash_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    real = hashlib.sha256(model.read_bytes()).hexdigest()
    assert hashes.model_hash(model) == real[:10]
    cache = tmp_path / "cache" / "mini-ldm" / "hashes.json"
    cache.write_text(cache.read_text().replace(real, "f" * 64))
    assert hashes.model_hash(model) == "f" * 10  # read from the cache, not hashed again
    os.utime(model, ns=(1, 1))
    assert hashes.model_hash(model) == real[:10]  # another mtime: hashed again


def test_inpainting_unet_draws_text_to_image_per_seed(tmp_path, sd1_folder):
    """A 9-channel UNet also takes its masked-image latents' draw from each image's own generator."""
    import shutil

    from diffusers import UNet2DConditionModel
    from devkit.tiny_models import randomize_

    import mini_ldm

    folder = tmp_path / "inpainting"
    shutil.copytree(sd1_folder, folder, ignore=shutil.ignore_patterns("unet"))
    config = dict(UNet2DConditionModel.load_config(sd1_folder / "unet"), in_channels=9)
    randomize_(UNet2DConditionModel.from_config(config), seed=21).save_pretrained(folder / "unet")
    sd = mini_ldm.load(folder, device="cpu", dtype="fp32")
    settings = mini_ldm.SampleSettings(prompt=PROMPT, steps=2, height=32, width=32)
    batch, used = sd.sample_seeds(settings, [3, 4, 5])
    assert [s.seed for s in used] == [3, 4, 5]
    for seed, image in zip((3, 4, 5), batch):
        alone, _ = sd.sample(PROMPT, seed=seed, steps=2, height=32, width=32, progress=False)
        assert np.abs(np.asarray(image).astype(int) - np.asarray(alone[0]).astype(int)).max() <= 1


# --- issue 16: two jobs on one folder, huge counts, a growing job, text that is not UTF-8 -------------------

NO_MODEL = ["--model", "/nonexistent/model.safetensors", "--device", "cpu", "--no-embeddings"]


def quiet(**more):
    return {**dict(prompt=PROMPT, seed=SEED, steps=2, height=32, width=32, cfg=3.0, progress=False,
                   log=lambda *a: None), **more}


def test_a_second_job_on_the_same_output_stops_naming_the_first(tiny, tmp_path):
    """Rank 0 holds DIR/.dataset.lock with its pid while the job runs: a second job (here: other settings) stops
    at once, with one line naming the holder, and writes nothing; a lock whose process is gone is taken over."""
    sd, out = tiny("sd1", "single"), tmp_path / "shared"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (out / LOCK).write_text(str(holder.pid))  # what a running job leaves there
        with pytest.raises(UserError, match=f"another dataset job \\(pid {holder.pid}\\)"):
            generate_dataset(sd, out, count=2, **quiet(cfg=5.0))
        assert tree(out) == [LOCK]
    finally:
        holder.kill()
        holder.wait()
    report = generate_dataset(sd, out, count=2, **quiet())  # its process is gone: a stale lock, taken over
    assert report.written == 2 and tree(out) == ["00000.png", "00001.png", "metadata.csv"]


def test_two_jobs_at_once_the_second_stops(sd1_single, env, tmp_path):
    """The case as a user meets it: a job running with --cfg 3, the same --output asked for with --cfg 5."""
    out = tmp_path / "busy"
    first = start(env, *job_args(sd1_single, out, "--batch", 1)[:-2], "--count", 10**6, "--output", out)
    try:
        wait_for_pngs(first, out, 1)
        second = run_main(sample.main, "--model", sd1_single, "--device", "cpu", "--no-embeddings", "--prompt", PROMPT,
                          "--count", 2, "--seed", SEED, *FAST[:-4], "--cfg", 5, "--output", out)
        one_line_error(second, "another dataset job", f"pid {first.pid}")
        first.send_signal(signal.SIGINT)
        assert finish(first).returncode == 130
    finally:
        if first.poll() is None:
            first.kill()
    pngs = list(out.glob("*.png"))
    assert pngs and all("CFG scale: 3.0," in read_parameters(png) for png in pngs), read_parameters(pngs[0])
    assert not (out / LOCK).exists()


@pytest.mark.parametrize("where", ["--count", "prompts-file"])
def test_a_count_the_disk_cannot_hold_is_refused_before_loading(where, tmp_path):
    """--count 10**12 used to plan every image in memory (growing by ~100 MB/s); now one line, nothing written."""
    if where == "--count":
        args = ["--prompt", PROMPT, "--count", 10**12]
    else:
        (tmp_path / "prompts.csv").write_text(f"prompt,count,folder\na,2,small\nb,{10**12},huge\n")
        args = ["--prompts-file", tmp_path / "prompts.csv"]
    r = run_main(sample.main, *NO_MODEL, *args, "--output", tmp_path / "out")
    one_line_error(r, "--output", "1000000000002" if where != "--count" else "1000000000000", "cannot fit", "--count")
    assert not (tmp_path / "out").exists()


def test_growing_a_finished_job_past_99999_keeps_its_files(tiny, tmp_path):
    """Names widen only when a number needs it (99999.png, 100000.png), so --count 2 grown to --count 100001 keeps
    00000.png and 00001.png (they were refused as 'not made by this job' when the width followed the count)."""
    sd, out = tiny("sd1", "single"), tmp_path / "growing"
    generate_dataset(sd, out, count=2, **quiet())
    before = {name: (out / name).read_bytes() for name in tree(out)}

    class Planned(Exception):
        pass

    def stop_once_planned(line):
        if "images into" in line:
            assert line.startswith("100001 images"), line
            raise Planned  # the folder was accepted; drawing 100,001 images is not this test's business

    with pytest.raises(Planned):
        generate_dataset(sd, out, count=100001, **quiet(log=stop_once_planned))
    assert {name: (out / name).read_bytes() for name in tree(out)} == before
    from mini_ldm.dataset.plan import Plan
    from mini_ldm.dataset.rows import job_rows
    from mini_ldm.sample_settings import SampleSettings
    plan = Plan(job_rows(SampleSettings(prompt=PROMPT), count=100001), base=0)
    assert [plan[i].file_name for i in (0, 99999, 100000)] == ["00000.png", "99999.png", "100000.png"]
    assert plan.find("100000.png") == plan[100000] and plan.find("000001.png") is None


def test_a_row_folder_named_like_the_manifest_is_refused(tmp_path):
    (tmp_path / "prompts.csv").write_text("prompt,count,folder\na,1,neg\nb,1,metadata.csv\n")
    r = run_main(sample.main, *NO_MODEL, "--prompts-file", tmp_path / "prompts.csv", "--output", tmp_path / "out")
    one_line_error(r, "prompts.csv line 3", "'metadata.csv'", "manifest")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--prompt", "--negative-prompt", "--init-image"])
def test_text_that_is_not_utf8_is_refused_before_any_work(flag, tmp_path):
    """Bytes that are not UTF-8 arrive as lone surrogates (b"caf\\xe9" -> "caf\\udce9"): one line before any work,
    and no header-only metadata.csv."""
    text = "caf\udce9"
    args = ["--prompt", PROMPT, flag, text] if flag != "--prompt" else ["--prompt", text]
    r = run_main(sample.main, *NO_MODEL, *args, "--count", 2, "--output", tmp_path / "out")
    one_line_error(r, flag, "not UTF-8")
    assert not (tmp_path / "out").exists()


def test_text_that_is_not_utf8_is_refused_by_the_python_api(tiny, tmp_path):
    with pytest.raises(UserError, match="--prompt .*not UTF-8"):
        generate_dataset(tiny("sd1", "single"), tmp_path / "out", count=1, **quiet(prompt="caf\udce9"))
    assert not (tmp_path / "out").exists()


def test_a_prompt_in_bytes_that_are_not_utf8_in_a_real_process(env, tmp_path):
    """The same through the real command line: the bytes as a shell passes them."""
    proc = subprocess.run([sys.executable, str(REPO / "sample.py"), *NO_MODEL, "--prompt", b"caf\xe9", "--count",
                           "2", "--output", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    one_line_error(proc, "--prompt", "not UTF-8")
    assert not (tmp_path / "out").exists()


def test_the_room_check_counts_a_shared_folders_images_once(tmp_path, monkeypatch):
    """Two rows writing to neg/ (5 PNGs there already): those 5 count once toward the room they free, not once
    per row, so a job the disk cannot hold is refused (the room check used to count them twice and let it run)."""
    from mini_ldm.dataset import request as job
    from mini_ldm.dataset.rows import Row
    from mini_ldm.sample_settings import SampleSettings

    (tmp_path / "neg").mkdir()
    for k in range(5):
        (tmp_path / "neg" / f"{k:05d}.png").write_bytes(b"x")
    rows = [Row(SampleSettings(prompt="a"), 10, "neg", None, f"prompts.csv line {k + 2}") for k in range(2)]
    need = 2 * 10 * (job.MIN_PNG_BYTES + 1)
    free = need - 7 * job.MIN_PNG_BYTES  # enough with 10 images' room freed, too little with the 5 really there
    monkeypatch.setattr(job.shutil, "disk_usage", lambda path: shutil_usage(free))
    monkeypatch.setattr(job.os, "statvfs", lambda path: os.statvfs_result((0,) * 10), raising=False)
    with pytest.raises(UserError, match="cannot fit"):
        job.check_room(tmp_path, rows)
    monkeypatch.setattr(job.shutil, "disk_usage", lambda path: shutil_usage(free + 2 * job.MIN_PNG_BYTES))
    job.check_room(tmp_path, rows)  # 5 images' room freed is just enough


def shutil_usage(free: int):
    from types import SimpleNamespace
    return SimpleNamespace(total=10**12, used=10**12 - free, free=free)  # what shutil.disk_usage gives


def test_the_progress_bar_reads_only_what_other_ranks_appended(tmp_path, monkeypatch):
    """Rank 0's bar counts the rows of the other ranks' parts after each batch: it reads the bytes added since
    its last look, not the whole part again (which made each batch cost O(images written))."""
    from mini_ldm.dataset import manifest

    part = tmp_path / ".metadata.rank1.csv"
    count = manifest.RowCounter(part)
    assert count() == 0  # not there yet
    appender = manifest.Appender(part)
    row = dict.fromkeys(manifest.COLUMNS, "x")
    read = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: Recording(real_open(*a, **k), read))
    for written in range(1, 4):
        appender.add(row)
        assert count() == written
    appender.close()
    with real_open(part, "ab") as f:
        f.write(b"half a row")  # a row being written counts once it ends
    assert count() == 3
    monkeypatch.undo()
    assert sum(read) == part.stat().st_size  # every byte read once


class Recording:
    """An open file that records how many bytes were read through it."""

    def __init__(self, file, read):
        self.file, self.read_sizes = file, read

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def read(self, *args):
        data = self.file.read(*args)
        self.read_sizes.append(len(data))
        return data


def test_stop_signals_hands_both_signals_over_and_puts_the_old_handlers_back():
    """mini_ldm.cli.StopSignals, the one home of signal handling (the dataset job's StopAfterBatch is one):
    SIGINT and SIGTERM go to the handler inside the block, the previous handlers come back after it."""
    from mini_ldm.cli import StopSignals
    from mini_ldm.dataset.drawing import StopAfterBatch

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    got = []
    with StopSignals(lambda signum, frame: got.append(signum)):
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert got == [signal.SIGTERM, signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with StopAfterBatch() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and signal.getsignal(signal.SIGINT) == before[signal.SIGINT]  # a second one stops now
    assert {sig: signal.getsignal(sig) for sig in before} == before
