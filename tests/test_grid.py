"""sample.py --grid (AUTOMATIC1111's X/Y/Z plot) as a user runs it: every cell is, pixel for pixel, the image
sample.py draws alone with that cell's settings; the sheets carry readable headers; grid.csv names the cells; a
rerun keeps what is drawn; bad input is one line, exit status 2, before the model loads."""
import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from in_process import run_main
from mini_ldm.embeddings import Embedding, write_embedding
from mini_ldm.grid_sheet import draw_sheet, font_px, shown_values
from mini_ldm.png import parse_parameters, read_parameters
from mini_ldm.xyz_grid import Axis, parse_axis

PROMPT = "a frontal chest x-ray, <lung>, PA view"
SIZE = ["--height", 64, "--width", 64, "--steps", 2, "--cfg", 2.5]


@pytest.fixture(scope="module")
def files(tmp_path_factory, sd1_single):
    """Two embeddings of one token (as training with other settings leaves them) plus one under another
    name, an init image and two masks; all random, nothing zero."""
    d = tmp_path_factory.mktemp("grid-inputs")
    g = torch.Generator().manual_seed(5)
    embeddings = []
    for name, token, n in (("v1", "<lung>", 1), ("v3", "<lung>", 3), ("other", "<lung-b>", 2)):
        path = d / name / "lung.safetensors"
        path.parent.mkdir()
        embeddings.append(write_embedding(path, Embedding(token, torch.randn(n, 128, generator=g))))
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "init.png")
    for name, box in (("left", (0, 0, 32, 64)), ("top", (0, 0, 64, 24))):
        mask = np.zeros((64, 64), np.uint8)
        mask[box[1]:box[3], box[0]:box[2]] = 255
        Image.fromarray(mask).save(d / f"{name}.png")
    return {"dir": d, "embeddings": embeddings, "init": d / "init.png", "masks": [d / "left.png", d / "top.png"]}


def sample_main(*args):
    """sample.py's main(argv) in this process, warnings quiet as PYTHONWARNINGS=ignore makes them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_main(sample.main, *args, "--device", "cpu")


@pytest.fixture
def one_load(monkeypatch):
    """Standalone runs share one loaded model (loading is not what is compared); each run registers its own
    learned tokens on it, as a fresh process would."""
    cache = {}
    real = sample.load_model

    def load_model(args):
        key = str(args.model)
        if key not in cache:
            cache[key] = real(args)
        cache[key].learned = {}
        return cache[key]

    monkeypatch.setattr(sample, "load_model", load_model)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_csv(folder) -> list:
    with open(folder / "grid.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_cells_equal_standalone(model, folder, rows, fixed: list, flags_of, tmp_path):
    """Each grid.csv row's cell PNG against sample.py drawing that cell's settings alone."""
    for row in rows:
        alone = tmp_path / f"alone-{row['cell']}.png"
        r = sample_main("--model", model, *fixed, *flags_of(row), "--output", alone)
        assert r.returncode == 0, r.stderr
        cell = folder / row["file"]
        assert np.array_equal(pixels(cell), pixels(alone)), row
        assert pixels(cell).std() > 5  # an image, not a blank
        mine, theirs = parse_parameters(read_parameters(cell)), parse_parameters(read_parameters(alone))
        assert {k: v for k, v in theirs.items() if k != "Prompt"}.items() <= mine.items(), (mine, theirs)
        if " as <" not in mine.get("Embedding", ""):
            assert mine["Prompt"] == theirs["Prompt"]


def test_two_axis_grid_embedding_by_prompt_sr(sd1_single, files, tmp_path, one_load):
    out = tmp_path / "grid"
    e1, e3, other = files["embeddings"]
    fixed = [*SIZE, "--seed", 7, "--negative-prompt", "blurry"]
    # no --embeddings at all: the axis brings the vectors (an empty folder keeps a developer's embeddings/ out)
    (tmp_path / "empty").mkdir()
    r = sample_main("--model", sd1_single, "--prompt", PROMPT, *fixed, "--embeddings", tmp_path / "empty",
                    "--grid", f"embedding={e1},{e3},{other}", "--grid", 'prompt_sr=PA view,"lateral, standing"',
                    "--output", out)
    assert r.returncode == 0, r.stderr
    rows = read_csv(out)
    assert [row["cell"] for row in rows] == ["x0-y0", "x1-y0", "x2-y0", "x0-y1", "x1-y1", "x2-y1"]
    assert [row["prompt_sr"] for row in rows] == ["PA view"] * 3 + ["lateral, standing"] * 3
    assert [row["embedding"] for row in rows[:3]] == [str(e1), str(e3), str(other)]
    assert all(row["grid"] == "grid.png" for row in rows)
    # the third file holds <lung-b>, not in the prompt: drawn for the prompt's one learned token, <lung>
    assert f"Embedding: {other} as <lung>" in read_parameters(out / "x2-y1.png")

    def flags_of(row):
        prompt = PROMPT.replace("PA view", row["prompt_sr"])
        emb = Path(row["embedding"])
        if emb == other:  # what the cell means: these vectors under the name the prompt uses
            prompt = prompt.replace("<lung>", "<lung-b>")
        return ["--prompt", prompt, "--embeddings", emb]

    assert_cells_equal_standalone(sd1_single, out, rows, fixed, flags_of, tmp_path)
    assert not np.array_equal(pixels(out / "x0-y0.png"), pixels(out / "x1-y0.png"))  # the axis changes the image

    # the sheet: larger than the cells by its header bands, and the header band holds text
    with Image.open(out / "grid.png") as sheet:
        text = sheet.info["parameters"]
        sheet = np.asarray(sheet.convert("RGB")).astype(int)
    assert sheet.shape[1] > 3 * 64 and sheet.shape[0] > 2 * 64
    fields = parse_parameters(text)
    assert fields["X Type"] == "embedding" and fields["Y Type"] == "prompt_sr" and fields["Seed"] == "7"
    cell = pixels(out / "x0-y0.png").astype(int)
    top, left = find(sheet, cell)
    assert top > 0 and left > 0  # a header band above, row labels to the left
    header = sheet[:top, left:left + 64]
    assert (header < 128).any() and (header == 255).all(axis=2).mean() > 0.5  # dark text on white
    row_label = sheet[top:top + 64, :left]
    assert (row_label < 128).any()
    under = sheet[top + 2 * 64:]
    assert under.shape[0] > 0 and (under < 128).any()  # the fixed settings, in a line under the cells


def find(sheet: np.ndarray, cell: np.ndarray) -> tuple:
    """(top, left) of `cell` pasted in `sheet`."""
    h, w = cell.shape[:2]
    for top in range(sheet.shape[0] - h + 1):
        for left in np.flatnonzero((sheet[top] == cell[0, 0]).all(axis=1)):
            if left + w <= sheet.shape[1] and np.array_equal(sheet[top:top + h, left:left + w], cell):
                return top, int(left)
    raise AssertionError("cell not found in the sheet")


def test_three_axis_grid_masks_and_rerun(sd1_single, files, tmp_path, one_load):
    out = tmp_path / "grid3"
    fixed = [*SIZE, "--prompt", "a chest x-ray", "--init-image", files["init"], "--strength", 0.8]
    masks = ",".join(map(str, files["masks"]))
    args = ["--model", sd1_single, *fixed, "--no-embeddings", "--grid", f"mask={masks}",
            "--grid", "seed=3,4", "--grid", "scheduler=euler_a,dpm++2m", "--output", out]
    r = sample_main(*args)
    assert r.returncode == 0, r.stderr
    rows = read_csv(out)
    assert len(rows) == 8 and {row["grid"] for row in rows} == {"grid-z0.png", "grid-z1.png"}
    assert sorted(p.name for p in out.glob("x*.png")) == sorted(row["file"] for row in rows)

    def flags_of(row):
        return ["--mask", row["mask"], "--seed", row["seed"], "--scheduler", row["scheduler"], "--no-embeddings"]

    assert_cells_equal_standalone(sd1_single, out, rows, fixed, flags_of, tmp_path)
    init = pixels(files["init"])
    keep = pixels(files["masks"][0])[..., 0] == 0
    keep[:, 32:36] = False  # the feathered edge
    assert np.array_equal(pixels(out / "x0-y0-z0.png")[keep], init[keep])  # outside the mask: the original

    # a rerun draws nothing; a changed value redraws only its cells
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("x*.png")}
    r = sample_main(*args)
    assert r.returncode == 0 and "kept 8 of 8 cells" in r.stdout, r.stdout + r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("x*.png")} == before
    args[args.index("seed=3,4")] = "seed=3,5"
    r = sample_main(*args)
    assert "kept 4 of 8 cells" in r.stdout, r.stdout + r.stderr
    changed = {p.name for p in out.glob("x*.png") if p.stat().st_mtime_ns != before[p.name]}
    assert changed == {row["file"] for row in read_csv(out) if row["seed"] == "5"}


def test_headers_legible_at_64_and_512_px():
    """The header font scales with the cells (at least 12 px): text as tall at 64 px cells as that, and
    proportionally taller at 512 px."""
    assert font_px(64, 64) == 12 and font_px(512, 512) == 32
    for side in (64, 512):
        grey = Image.new("RGB", (side, side), (128, 128, 128))
        sheet = np.asarray(draw_sheet([[grey, grey]], ["steps: 10", "steps: 20"], None, None, "cfg: 3"))
        band = sheet[:np.flatnonzero((sheet[:, side // 2] == 128).all(axis=1))[0], :side]
        ink_rows = np.flatnonzero((band < 100).any(axis=(1, 2)))
        assert ink_rows.size and ink_rows[-1] - ink_rows[0] + 1 >= 0.6 * font_px(side, side), side


def test_a_long_value_is_shortened_in_the_header_and_whole_in_the_csv_row():
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    long = "prompt: " + " ".join(["effusion"] * 30)
    sheet = draw_sheet([[grey]], [long], None, None, "x")
    assert sheet.height < 64 + 12 * 12  # four header lines at most, not thirty


def test_axis_values_are_a_csv_row_and_axis_names_take_automatic1111s_spelling():
    values = ["PA view", "lateral, standing", "AP"]
    assert parse_axis('prompt_sr=PA view, "lateral, standing",AP') == ("prompt_sr", values)
    assert parse_axis("CFG Scale=1,2")[0] == "cfg" and parse_axis("Sampler=euler")[0] == "scheduler"
    assert parse_axis("negative-prompt=,blurry") == ("negative_prompt", ["", "blurry"])


def test_files_are_shown_by_what_tells_them_apart():
    def shown(*texts):
        return shown_values(Axis("embedding", list(texts), []))

    assert shown("runs/vectors-1/e.safetensors", "runs/vectors-8/e.safetensors") == ["vectors-1", "vectors-8"]
    assert shown("m/left.png", "m/right.png") == ["left", "right"]
    assert shown("a/x/m.png", "b/x/m.png") == ["a/x/m", "b/x/m"]
    assert shown_values(Axis("steps", ["10", "20"], [10, 20])) == ["10", "20"]


@pytest.fixture(scope="module")
def missing_model(tmp_path_factory):
    """A --model that does not exist: an error about the grid, not about the model, shows it came first."""
    return tmp_path_factory.mktemp("none") / "no-model-here.safetensors"


BAD = {  # name -> (grid flags and others, what the one error line must say)
    "unknown_axis": (["--grid", "colour=red,blue"], ["unknown axis 'colour'", "steps", "embedding", "prompt_sr"]),
    "bad_number": (["--grid", "steps=10,ten"], ["steps", "invalid int value", "'ten'"]),
    "refused_value": (["--grid", "steps=10,0"], ["--steps 0: must be at least 1"]),
    "refused_cfg": (["--grid", "cfg=3,nan"], ["--cfg nan: must be a finite number"]),
    "bad_scheduler": (["--grid", "scheduler=euler,heun"], ["--scheduler heun: unknown"]),
    "strength_needs_init": (["--grid", "strength=0.5,0.7"], ["--strength needs --init-image"]),
    "four_axes": (["--grid", "steps=1", "--grid", "cfg=1", "--grid", "seed=1", "--grid", "width=64"],
                  ["at most 3 axes"]),
    "twice": (["--grid", "steps=1,2", "--grid", "steps=3"], ["steps is given twice"]),
    "max_cells": (["--grid", "steps=1,2,3,4", "--grid", "seed=1,2,3", "--max-cells", "10"],
                  ["4 x 3 = 12 cells", "--max-cells 10"]),
    "default_max_cells": (["--grid", "seed=" + ",".join(map(str, range(21))), "--grid", "steps=" +
                           ",".join(map(str, range(1, 21)))], ["420 cells", "--max-cells 400"]),
    "with_count": (["--grid", "steps=1,2", "--count", "4"], ["--grid: not with --count"]),
    "with_interpolate": (["--grid", "steps=1,2", "--interpolate", "a", "b"], ["--grid: not with --interpolate"]),
    "with_prompts_file": (["--grid", "steps=1,2", "--prompts-file", "p.csv"], ["--grid: not with --prompts-file"]),
    "phrase_not_in_prompt": (["--grid", "prompt_sr=lateral,PA"], ["'lateral' is not in the prompt"]),
    "missing_mask": (["--init-image", "INIT", "--grid", "mask=nowhere.png"], ["--mask nowhere.png: no such file"]),
    "missing_embedding": (["--grid", "embedding=nowhere.safetensors"], ["nowhere.safetensors: no such file"]),
    "max_cells_zero": (["--grid", "steps=1,2", "--max-cells", "0"], ["--max-cells 0: must be at least 1"]),
    "missing_init_flag": (["--init-image", "nowhere.png", "--grid", "strength=0.5,0.7"],
                          ["--init-image nowhere.png: no such file"]),
    "max_cells_alone": (["--max-cells", "3"], ["--max-cells: only used with --grid"]),
    "output_png": (["--grid", "steps=1,2", "--output", "x.png"], ["--output x.png: with --grid give a folder"]),
    "n_images": (["--grid", "steps=1,2", "--n", "2"], ["--n: a grid draws one image per cell"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_grid_is_one_line_before_the_model_loads(name, missing_model, files, tmp_path):
    extra, needles = BAD[name]
    extra = [str(files["init"]) if a == "INIT" else a for a in extra]
    output = [] if "--output" in extra else ["--output", tmp_path / "out"]
    r = sample_main("--model", missing_model, "--prompt", "a chest x-ray, PA view", "--no-embeddings", *output,
                    *extra)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "no-model-here" not in lines[0]  # the model was never reached


def test_help_documents_the_grid_flags():
    r = sample_main("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--grid AXIS=V1,V2,..." in text and "--max-cells N" in text and "prompt_sr" in text


def test_an_unknown_learned_token_in_a_cell_is_refused_before_any_cell_is_drawn(sd1_single, files, tmp_path):
    """A cell's prompt holding a word in angle brackets that no loaded file or embedding axis defines is refused
    in one line naming the cell, as a single --prompt is (issue 24 A.3), and nothing is drawn."""
    out = tmp_path / "grid"
    r = sample_main("--model", sd1_single, "--no-embeddings", "--prompt", "an x-ray", "--steps", "1", "--height", "32",
                    "--width", "32", "--grid", "prompt=an x-ray,<nowhere> x-ray", "--output", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--grid cell x1" in r.stderr and "<nowhere> is not a learned token" in r.stderr, r.stderr
    assert not list(out.glob("*.png")) if out.exists() else True
