"""docs/figures.md's commands (the paper's Figures 2-5 as settings grids) stay true: every line parses with its
CLI's own parser and names only known grid axes; the helpers devkit/figures.py gives them work; and, with
MINI_LDM_FIGURES=1 (about 1.5 CPU-minutes, several on a busy machine), the whole page runs in a fresh folder and
leaves each figure's sheet and grid.csv."""
import csv
import os
import shlex
import warnings

import numpy as np
import pytest
from PIL import Image

import sample
import train
from devkit import figures
from mini_ldm import xyz_grid


def test_the_page_has_every_figure():
    lines = figures.page_commands()
    for output in ("figure2", "figure3", "figure4", "figure5-settings", "figure5-vectors", "figure5-cases"):
        assert any(line.endswith(f"--output demo-output/{output}") for line in lines), output


@pytest.mark.parametrize("line", figures.page_commands())
def test_each_command_parses(line):
    words = shlex.split(line)
    assert words[0] == "python"
    script, argv = words[1], words[2:]
    if script == "devkit/figures.py":
        assert argv[0] in ("masks", "cases")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = {"sample.py": sample, "train.py": train}[script].parse_args(argv)
    if script == "sample.py" and args.grid:
        axes = xyz_grid.read_axes(args.grid, xyz_grid.DEFAULT_MAX_CELLS)  # known axes, values of the right type
        assert all(len(axis.values) > 1 for axis in axes)


def test_masks_are_boxes_at_two_places_and_two_sizes(tmp_path):
    paths = figures.write_masks(tmp_path)
    areas = {p.stem: (np.asarray(Image.open(p)) == 255).mean() for p in paths}
    assert areas["left-large"] > 2 * areas["left-small"] > 0 and areas["right-large"] > 2 * areas["right-small"]
    left = np.asarray(Image.open(tmp_path / "left-small.png"))
    assert left[:, :64].any() and not left[:, 64:].any()


def test_cases_are_the_first_n_images(tmp_path):
    source = tmp_path / "src"
    for folder in ("a", "b"):
        (source / folder).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), 40 * i + (folder == "b") * 100).save(source / folder / f"{i}.png")
    figures.write_cases(source, tmp_path / "cases", [1, 3])
    assert len(list((tmp_path / "cases" / "1").glob("*.png"))) == 1
    assert len(list((tmp_path / "cases" / "3").glob("*.png"))) == 3
    with pytest.raises(SystemExit):
        figures.write_cases(source, tmp_path / "cases", [5])


def test_the_page_shows_the_pictures_its_commands_draw():
    """Every figure the page's commands draw is shown on the page, from docs/figures/ (drawn by
    `python devkit/figures.py --folder figures-run/ --pictures docs/figures/`)."""
    text = figures.PAGE.read_text(encoding="utf-8")
    for name in ("figure2", "figure3", "figure4", "figure5-settings", "figure5-vectors", "figure5-cases"):
        assert f"](figures/{name}.png)" in text, name
        with Image.open(figures.PAGE.parent / "figures" / f"{name}.png") as im:
            assert im.width >= 128 * 3 and np.asarray(im.convert("L")).std() > 10, name


@pytest.mark.skipif(os.environ.get("MINI_LDM_FIGURES") != "1", reason="set MINI_LDM_FIGURES=1: runs the whole page")
@pytest.mark.timeout(1800)  # 14 commands: 5-10 minutes on two busy cores, over the suite's 300 s per test
def test_the_page_draws_every_figure(tmp_path):
    figures.main(["--folder", str(tmp_path), "--pictures", str(tmp_path / "pictures")])
    for name, cells in (("figure3", 9), ("figure4", 8), ("figure5-settings", 16), ("figure5-vectors", 9),
                        ("figure5-cases", 9)):
        with open(tmp_path / "demo-output" / name / "grid.csv", newline="") as f:
            assert len(list(csv.DictReader(f))) == cells, name
        assert (tmp_path / "pictures" / f"{name}.png").is_file()
    assert (tmp_path / "pictures" / "figure2.png").is_file()
