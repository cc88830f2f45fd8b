#!/usr/bin/env python
"""Draw the paper's Figures 2-5 by running the commands docs/figures.md shows, read out of that file (so the page
cannot drift from what runs), one after another in a folder of your choice.

    python devkit/figures.py --folder figures-run/                 # every command of the page's figure section
    python devkit/figures.py --folder figures-run/ --pictures docs/figures/   # and copy each figure's sheet there
    python devkit/figures.py masks demo-output/masks               # the four box masks Figure 4 paints into
    python devkit/figures.py cases demo-output/concepts-data/effusion demo-output/cases 2,5,20   # training sets of 2, 5, 20

The CLIs run in this process (their main(argv), as their scripts run them), so torch is imported once.
"""
import argparse
import importlib
import os
import re
import shlex
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "figures.md"
SECTION = "## The figures, on the demo model"
MASK_SIZE = 128  # the demo's phantoms are 128 px
MASKS = {  # name -> box (left, top, right, bottom) as fractions of the side: two places, two sizes
    "left-small": (0.2, 0.4, 0.35, 0.55), "left-large": (0.1, 0.3, 0.45, 0.7),
    "right-small": (0.65, 0.4, 0.8, 0.55), "right-large": (0.55, 0.3, 0.9, 0.7),
}


def page_commands(page: Path = PAGE) -> list:
    """The lines of every bash block in the page's figure section."""
    text = page.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def write_masks(folder: Path, size: int = MASK_SIZE) -> list:
    """White boxes on black (white = repaint), one file per entry of MASKS."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, box in MASKS.items():
        mask = np.zeros((size, size), np.uint8)
        left, top, right, bottom = (round(v * size) for v in box)
        mask[top:bottom, left:right] = 255
        paths.append(folder / f"{name}.png")
        Image.fromarray(mask).save(paths[-1])
    return paths


def write_cases(source: Path, dest: Path, counts: list) -> None:
    """dest/<n>/: copies of the first n images under source (sorted, subfolders included), one folder per n."""
    images = sorted(p for p in source.rglob("*.png") if p.is_file())
    for n in counts:
        if n > len(images):
            raise SystemExit(f"cases: {source} holds {len(images)} images, fewer than {n}")
        folder = dest / str(n)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i, image in enumerate(images[:n]):
            shutil.copyfile(image, folder / f"case-{i:03d}.png")


@contextmanager
def working_in(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_command(line: str) -> None:
    """One `python SCRIPT ARGS` line of the page: our own subcommands here, a CLI through its main(argv)."""
    words = shlex.split(line)
    if words[:1] != ["python"] or len(words) < 2:
        raise SystemExit(f"not a python command: {line}")
    script, argv = words[1], words[2:]
    print(f"$ {line}", flush=True)
    if script == "devkit/figures.py":
        return main(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from mini_ldm import cli

    module = importlib.import_module(Path(script).stem)
    try:
        cli.run(module.main, argv)
    except SystemExit as e:
        if e.code not in (None, 0):
            raise SystemExit(f"failed (exit {e.code}): {line}") from None


def copy_pictures(folder: Path, pictures: Path) -> list:
    """Each figure's sheet (demo-output/figureN*/grid*.png or strip-*.png) as pictures/figureN*.png."""
    pictures.mkdir(parents=True, exist_ok=True)
    copied = []
    for figure in sorted((folder / "demo-output").glob("figure*")):
        for sheet in sorted(figure.glob("grid*.png")) + sorted(figure.glob("strip-*.png")):
            suffix = sheet.stem.removeprefix("grid") if sheet.stem.startswith("grid") else ""
            copied.append(pictures / f"{figure.name}{suffix}.png")
            shutil.copyfile(sheet, copied[-1])
    return copied


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", nargs="*", help="empty: run the page's commands; 'masks FOLDER' or "
                   "'cases SOURCE DEST N1,N2,...': the helpers those commands use")
    p.add_argument("--folder", type=Path, default=Path("."), help="where the commands run (default: here)")
    p.add_argument("--pictures", type=Path, default=None, help="copy each figure's sheet into this folder")
    args = p.parse_args(argv)
    if args.task[:1] == ["masks"] and len(args.task) == 2:
        return write_masks(Path(args.task[1]))
    if args.task[:1] == ["cases"] and len(args.task) == 4:
        return write_cases(Path(args.task[1]), Path(args.task[2]), [int(n) for n in args.task[3].split(",")])
    if args.task:
        p.error(f"unknown task {' '.join(args.task)}")
    args.folder.mkdir(parents=True, exist_ok=True)
    pictures = args.pictures.resolve() if args.pictures else None
    with working_in(args.folder):
        for line in page_commands():
            run_command(line)
    if pictures is not None:
        for path in copy_pictures(args.folder, pictures):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
