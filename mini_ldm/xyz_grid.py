"""Settings grids, AUTOMATIC1111's X/Y/Z plot: one image per combination of up to three axes of settings.

    --grid steps=10,20,40 --grid cfg=1,2,3        columns (x), rows (y); a third --grid: one sheet per value (z)

An axis is a field of SampleSettings (steps, cfg, seed, prompt, mask, ...), `prompt_sr` (AUTOMATIC1111's
"Prompt S/R": the first value is a phrase of the prompt, each value replaces it in turn) or `embedding`
(embedding files, each drawn in turn for the prompt's learned token). Values are comma-separated with CSV
quoting, so `prompt="a, b",c` is two prompts. Every cell has the same seed unless seed is an axis (the paper's
convention), and is drawn by `StableDiffusion.sample`, exactly as sample.py draws that image alone.

Two phases: `plan_grid` checks every cell's settings, files and phrases before a model is loaded (each value
refused with its own flag's message); `draw_grid` then draws the cells (each PNG with its parameters, a cell
already drawn with the same parameters is kept), the sheets with headers (grid_sheet.py) and grid.csv.
"""
import csv
import functools
import io
import itertools
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from tqdm.auto import tqdm

from . import hashes
from . import prompt_text
from .errors import UserError
from .grid_sheet import write_csv, write_sheets
from .images import open_image
from .png import parameters_text, save_png
from .sample_settings import SampleSettings
from .settings import check_positive, flag_name, options, value_type

if TYPE_CHECKING:  # embeddings.py imports torch, which the plan's checks run without (sample.py checks a grid
    from .embeddings import Embedding  # before torch is imported); it is imported where a file is read

SETTING_AXES = ("prompt", "negative_prompt", "seed", "steps", "cfg", "scheduler", "height", "width", "init_image",
                "strength", "mask", "mask_blur")
AXES = SETTING_AXES + ("prompt_sr", "embedding")
ALIASES = {"cfg_scale": "cfg", "sampler": "scheduler", "prompt_s/r": "prompt_sr", "denoising": "strength",
           "denoising_strength": "strength", "embeddings": "embedding"}  # AUTOMATIC1111's names for its axes
MAX_AXES = 3
DEFAULT_MAX_CELLS = 400
NOT_WITH_GRID = (("--count", "count"), ("--prompts-file", "prompts_file"), ("--interpolate", "interpolate"),
                 ("--batch", "batch"), ("--overwrite", "overwrite"))
_FIELDS = {f.name: f for f in options(SampleSettings)}
_IMAGE_MODES = {"init_image": "RGB", "mask": "L"}


def add_flags(parser) -> None:
    """sample.py's --grid and --max-cells."""
    parser.add_argument("--grid", action="append", metavar="AXIS=V1,V2,...", default=None,
                        help="a settings grid (AUTOMATIC1111's X/Y/Z plot), given 1-3 times: columns, rows, then one "
                             f"grid image per value of the third. Axes: {', '.join(AXES)}. Values are comma-separated "
                             "with CSV quoting (prompt=\"a, b\",c); prompt_sr: the first value is a phrase of "
                             "--prompt, each value replaces it; embedding: files drawn in turn for the prompt's "
                             "learned token. "
                             "One seed for every cell unless seed is an axis. --output is then a folder: grid.png "
                             "(grid-z0.png ... with 3 axes), grid.csv and one PNG per cell; a rerun keeps cells "
                             "already drawn with the same parameters (see docs/figures.md)")
    parser.add_argument("--max-cells", type=int, default=None, metavar="N",
                        help=f"with --grid: refuse a grid of more than N cells (default: {DEFAULT_MAX_CELLS})")


@dataclass
class Axis:
    name: str
    texts: list  # the values as typed: headers and grid.csv
    values: list  # converted to the setting's type (embedding: the files' Embeddings)


@dataclass
class Cell:
    index: tuple  # (x, y, z) positions on the axes given; as many as axes
    settings: SampleSettings
    embedding: tuple | None = None  # (file, Embedding) of the embedding axis
    learned: dict = field(default_factory=dict)  # filled once the model is loaded (bind)
    resolved: SampleSettings | None = None  # every default filled in, as its PNG records it (bind)

    @property
    def name(self) -> str:
        return "-".join(f"{'xyz'[k]}{i}" for k, i in enumerate(self.index))


@dataclass
class GridPlan:
    axes: list
    cells: list  # in the order drawn: the embedding axis outermost, so each file's vectors serve a run of cells
    output: Path


# --- parsing and checking, before the model loads ------------------------------------------------------

def parse_axis(text: str) -> tuple:
    """"steps=10,20" -> ("steps", ["10", "20"]); values read as one CSV row (quotes keep commas in a value)."""
    name, sep, values = text.partition("=")
    key = "_".join(name.strip().lower().replace("-", " ").split())
    key = ALIASES.get(key, key)
    if not sep or key not in AXES:
        raise UserError(f"--grid {text}: unknown axis {name.strip()!r}; write AXIS=V1,V2,... with AXIS one of "
                        f"{', '.join(AXES)}")
    try:
        row = next(csv.reader(io.StringIO(values), skipinitialspace=True), [])
    except csv.Error as e:
        raise UserError(f"--grid {text}: the values are not one CSV row ({e}); quote a value with commas") from None
    row = [v.strip() for v in row]
    if not row or row == [""]:
        raise UserError(f"--grid {text}: give at least one value after '='")
    return key, row


def convert(axis: str, text: str):
    """One value's text as its setting's type; a bad number is refused as argparse refuses the flag's."""
    if axis in ("prompt_sr", "embedding"):
        return Path(text) if axis == "embedding" else text
    kind = value_type(_FIELDS[axis])
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"--grid {axis}={text}: invalid {kind.__name__} value for {flag_name(_FIELDS[axis])}: "
                        f"{text!r}") from None


def check_flags(args) -> None:
    """--grid's companions: refused in one line where they cannot go together."""
    for flag, dest in NOT_WITH_GRID:
        if getattr(args, dest, None) not in (None, False):
            raise UserError(f"--grid: not with {flag} (a grid draws one image per cell of its axes)")
    if not args.grid:
        raise UserError("--max-cells: only used with --grid AXIS=V1,V2,...")
    if args.n != 1:
        raise UserError("--n: a grid draws one image per cell; leave --n at 1")
    if len(args.grid) > MAX_AXES:
        raise UserError(f"--grid: given {len(args.grid)} times; a grid has at most {MAX_AXES} axes "
                        "(columns, rows, one sheet per value of the third)")
    if args.output.suffix.lower() == ".png":
        raise UserError(f"--output {args.output}: with --grid give a folder (it gets grid.png, grid.csv and one PNG "
                        "per cell)")


def read_axes(texts: list, max_cells: int) -> list:
    axes = []
    for text in texts:
        name, values = parse_axis(text)
        if name in [a.name for a in axes]:
            raise UserError(f"--grid {text}: the axis {name} is given twice; give each axis once, with all its values")
        axes.append(Axis(name, values, [convert(name, v) for v in values]))
    cells = 1
    for axis in axes:
        cells *= len(axis.values)
    if cells > max_cells:
        sizes = " x ".join(str(len(a.values)) for a in axes)
        raise UserError(f"--grid: {sizes} = {cells} cells, over --max-cells {max_cells}; give fewer values or raise "
                        "--max-cells")
    return axes


def plan_grid(args, base: dict) -> GridPlan:
    """Every cell's settings, checked before a model is loaded. `base`: SampleSettings' fields from the flags."""
    check_flags(args)
    max_cells = DEFAULT_MAX_CELLS if args.max_cells is None else args.max_cells
    check_positive("--max-cells", max_cells)
    axes = read_axes(args.grid, max_cells)
    names = [a.name for a in axes]
    if not base.get("prompt") and "prompt" not in names:
        raise UserError("--prompt is required with --grid (or make prompt an axis: --grid prompt=A,B)")
    base = dict(base, n=1)
    _fix_seeds(base, axes)
    _check_files(axes, base)
    cells = [_cell(base, axes, index) for index in itertools.product(*(range(len(a.values)) for a in axes))]
    if "embedding" in names:  # each file's vectors serve one run of cells
        cells.sort(key=lambda c: c.index[names.index("embedding")])
    return GridPlan(axes, cells, args.output)


def _fix_seeds(base: dict, axes: list) -> None:
    """One seed for every cell (the paper's convention): a random one drawn here when none is given, so that
    the headers, the cells' PNGs and a standalone rerun all know it; -1 on a seed axis is random too."""
    seed_axis = next((a for a in axes if a.name == "seed"), None)
    if seed_axis is None:
        if base.get("seed") in (None, -1):
            base["seed"] = secrets.randbelow(2**32)
            print(f"seed {base['seed']} (every cell)")
        return
    for i, seed in enumerate(seed_axis.values):
        if seed == -1:
            seed_axis.values[i] = secrets.randbelow(2**32)
            seed_axis.texts[i] = str(seed_axis.values[i])


def _check_files(axes: list, base: dict) -> None:
    """Images (on axes or flags) and embedding files on axes: read now, with the same messages as their flags
    give after the model loads; the embeddings are kept."""
    for name, mode in _IMAGE_MODES.items():
        if base.get(name) is not None and name not in [a.name for a in axes]:
            open_image(base[name], flag_name(_FIELDS[name]), mode)
    for axis in axes:
        if axis.name in _IMAGE_MODES:
            for path in axis.values:
                open_image(path, flag_name(_FIELDS[axis.name]), _IMAGE_MODES[axis.name])
        elif axis.name == "embedding":
            for path in axis.values:  # before embeddings.py (and torch) is imported to read them
                if path.is_dir():
                    raise UserError(f"--grid embedding={path}: a folder; give one embedding file per value")
                if not path.is_file():
                    raise UserError(f"--grid embedding={path}: no such file")
            from .embeddings import read_embedding

            axis.values = [(path, read_embedding(path)) for path in axis.values]


def _cell(base: dict, axes: list, index: tuple) -> Cell:
    values, phrase, embedding = dict(base), None, None
    for axis, i in zip(axes, index):
        if axis.name == "prompt_sr":
            phrase = (axis.values[0], axis.values[i])
        elif axis.name == "embedding":
            embedding = axis.values[i]
        else:
            values[axis.name] = axis.values[i]
    if phrase is not None:
        if phrase[0] not in values["prompt"]:
            raise UserError(f"--grid prompt_sr={phrase[0]},...: {phrase[0]!r} is not in the prompt "
                            f"{values['prompt']!r}; the first value must be a phrase of --prompt, which each value "
                            "replaces")
        values["prompt"] = values["prompt"].replace(*phrase)
    return Cell(index, _settings(values, base, axes, index), embedding)


def _settings(values: dict, base: dict, axes: list, index: tuple) -> SampleSettings:
    """The cell's SampleSettings; a refusal is the setting's own message, after the cell's values when they,
    not the flags alone, are what is refused."""
    try:
        return SampleSettings(**values)
    except UserError as e:
        try:
            SampleSettings(**base)
        except UserError:
            raise e from None  # the flags alone are refused: their own message, as without --grid
        cell = ", ".join(f"{a.name}={a.texts[i]}" for a, i in zip(axes, index) if a.name != "embedding")
        raise UserError(f"--grid {cell}: {e}") from None


# --- once the model is loaded ----------------------------------------------------------------------

def bind(sd, plan: GridPlan) -> list:
    """Check what needs the model (embedding widths, sizes) for every cell before the first is drawn, and give
    each cell its learned tokens. Returns, per cell, the parameters text its PNG carries."""
    from .embeddings import check_width

    model_hash = hashes.model_hash(sd.checkpoint.path)
    file_hash = functools.cache(hashes.file_sha256)  # an init image or mask shared by the cells is read once
    checked = set()
    texts = []
    for cell in plan.cells:
        cell.learned = dict(sd.learned)
        extra = {}
        if cell.embedding is not None:
            path, emb = cell.embedding
            if path not in checked:
                check_width(emb, sd.widths, sd.family)
                checked.add(path)
            token = _token_for(cell.settings.prompt, emb, sd.learned, plan)
            cell.learned[token] = emb.vectors.float().cpu()
            extra["Embedding"] = str(path) if token == emb.token else f"{path} as {token}"
        for flag, text in (("--prompt", cell.settings.prompt), ("--negative-prompt", cell.settings.negative_prompt)):
            sd.check_learned_words(text, f"--grid cell {cell.name}: {flag}", cell.learned)
        extra["Model hash"] = model_hash
        extra.update(_input_hashes(cell, file_hash))
        cell.settings = replace(cell.settings, extra={**cell.settings.extra, **extra})
        cell.resolved = sd.resolved(cell.settings)
        texts.append(parameters_text(cell.resolved))
    return texts


def _token_for(prompt: str, emb: "Embedding", learned: dict, plan: GridPlan) -> str:
    """The prompt's learned token that `emb` is drawn for: its own token when the prompt holds it, else the one
    learned token the prompt holds (embeddings of one concept trained under other names)."""
    if emb.token in prompt_text.split_learned(prompt, {emb.token: None})[1::2]:
        return emb.token
    axis_tokens = {e.token: None for _, e in next(a for a in plan.axes if a.name == "embedding").values}
    found = sorted(set(prompt_text.split_learned(prompt, {**learned, **axis_tokens})[1::2]))
    if len(found) != 1:
        held = f"holds {', '.join(found)}" if found else "holds no learned token"
        raise UserError(f"--grid embedding={emb.source}: its token {emb.token} is not in the prompt {prompt!r}, which "
                        f"{held}; put one learned token in --prompt for the embedding axis to replace")
    return found[0]


def _input_hashes(cell: Cell, file_hash) -> dict:
    """Content hashes of the vectors and files a cell is made from: a rerun redraws a cell whose inputs changed
    under the same names. `file_hash`: hashes.file_sha256, or a cache of it."""
    s = cell.settings
    used = prompt_text.split_learned(f"{s.prompt} {s.negative_prompt}", cell.learned)[1::2]
    fields = {}
    if used:
        fields["Embeddings"] = " ".join(f"{n}:{hashes.tensor_sha256(cell.learned[n])[:hashes.SHORT]}"
                                        for n in dict.fromkeys(used))
    for key, path in (("Init image hash", s.init_image), ("Mask hash", s.mask)):
        if path is not None:
            fields[key] = file_hash(path)[:hashes.SHORT]
    return fields


def draw_grid(sd, plan: GridPlan, progress: bool = True) -> list:
    """Draw the cells (keeping those already drawn with the same parameters), the sheets and grid.csv.
    Returns the sheets' paths."""
    expected = bind(sd, plan)
    plan.output.mkdir(parents=True, exist_ok=True)
    drawn, kept = {}, 0  # cell index -> (its PNG, the cell); the sheets read the PNGs back, one sheet at a time
    for cell, text in zip(tqdm(plan.cells, desc="grid cells", disable=not progress), expected):
        path = plan.output / f"{cell.name}.png"
        if _already_drawn(path, text):
            kept += 1
        else:
            images, used = sd.sample(settings=cell.settings, learned=cell.learned, progress=False)
            save_png(images[0], path, parameters_text(used))
        drawn[cell.index] = (path, cell)
    if kept:
        print(f"kept {kept} of {len(plan.cells)} cells already drawn with the same parameters")
    sheets = write_sheets(plan, drawn, expected)
    write_csv(plan, sheets)
    return list(dict.fromkeys(sheets.values()))


def _already_drawn(path: Path, expected: str) -> bool:
    """Whether the cell's PNG exists, decodes whole and carries exactly the expected parameters."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            im.load()  # a truncated file fails here
            return im.info.get("parameters") == expected
    except OSError:  # damaged: draw it again
        return False
