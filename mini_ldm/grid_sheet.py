"""A settings grid's files (xyz_grid.py plans and draws the cells): the sheets, cells in rows and columns with
the axis values as column and row headers, a title saying which axis runs where (and the third axis's value),
and the settings every cell shares in one line under it; and grid.csv, one row per cell with each axis's full value.

The text is Pillow's own font scaled to the cells (12 px at 64 px cells, 32 px at 512 px), so it is legible at
both; a header wraps to its column (a long value is shortened with "...", the full value is in grid.csv).
"""
import csv
import io
from pathlib import Path

from PIL import Image, ImageDraw

from .images import font
from .io import write_text_atomic
from .png import A1111_SAMPLERS, save_png

MIN_FONT_PX = 12  # below this Pillow's default font stops being readable
MAX_HEADER_LINES = 4
BACKGROUND, INK = "white", "black"


def font_px(cell_w: int, cell_h: int) -> int:
    return max(MIN_FONT_PX, min(cell_w, cell_h) // 16)


def draw_sheet(images: list, col_labels: list, row_labels: list | None, title: str | None, footer: str):
    """images[row][col] (PIL, sizes may differ: each slot is its row's tallest by its column's widest)."""
    col_w = [max(row[c].width for row in images) for c in range(len(images[0]))]
    row_h = [max(im.height for im in row) for row in images]
    size = font_px(min(col_w), min(row_h))
    face, pad = font(size), max(2, size // 3)
    line_h = _line_height(face)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    headers = [_wrap(measure, text, face, w - 2 * pad) for text, w in zip(col_labels, col_w)]
    header_h = max(len(lines) for lines in headers) * line_h + 2 * pad
    left_w, row_lines = 0, None
    if row_labels:
        widest = max(measure.textlength(text, font=face) for text in row_labels)
        left_w = int(min(widest, max(min(col_w), 10 * size))) + 2 * pad
        row_lines = [_wrap(measure, text, face, left_w - 2 * pad) for text in row_labels]
    width = left_w + sum(col_w)
    # title and footer wrap as far as needed: a narrow grid still says all of it
    title_lines = _wrap(measure, title, face, width - 2 * pad, max_lines=None) if title else []
    title_h = len(title_lines) * line_h + 2 * pad if title else 0
    footer_lines = _wrap(measure, footer, face, width - 2 * pad, max_lines=None)
    height = title_h + header_h + sum(row_h) + len(footer_lines) * line_h + 2 * pad
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        _text_block(draw, title_lines, face, (0, 0, width, title_h), line_h)
    top = title_h + header_h
    x = left_w
    for c, w in enumerate(col_w):
        _text_block(draw, headers[c], face, (x, title_h, x + w, top), line_h)
        y = top
        for r, h in enumerate(row_h):
            im = images[r][c].convert("RGB")
            sheet.paste(im, (x + (w - im.width) // 2, y + (h - im.height) // 2))
            y += h
        x += w
    y = top
    for r, h in enumerate(row_h):
        if row_lines:
            _text_block(draw, row_lines[r], face, (0, y, left_w, y + h), line_h)
        y += h
    _text_block(draw, footer_lines, face, (0, y, width, height), line_h)
    return sheet


def _line_height(face) -> int:
    box = face.getbbox("Ag|")
    return int((box[3] - box[1]) * 1.3) + 1


def _text_block(draw, lines: list, face, box: tuple, line_h: int) -> None:
    """Lines centred in box (left, top, right, bottom)."""
    left, top, right, bottom = box
    y = top + (bottom - top - len(lines) * line_h) // 2
    for line in lines:
        w = draw.textlength(line, font=face)
        draw.text((left + (right - left - w) / 2, y), line, fill=INK, font=face)
        y += line_h


def _wrap(draw, text: str, face, width: int, max_lines: int | None = MAX_HEADER_LINES) -> list:
    """Words into lines no wider than `width` (a word too long is cut between characters), at most
    `max_lines` lines (None: no limit), the last shortened with "..." when text is left over."""
    width = max(width, 1)
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if draw.textlength(candidate, font=face) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while draw.textlength(word, font=face) > width and len(word) > 1:
            cut = _fit(draw, word, face, width)
            at = max(word.rfind(mark, 0, cut) for mark in "-/_.")  # rather after a separator than mid-name
            cut = at + 1 if at > 0 else cut
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        rest = " ".join(lines[max_lines - 1:])
        lines = lines[:max_lines - 1] + [_shorten(draw, rest + " ...", face, width, force=True)]
    return lines


def _fit(draw, text: str, face, width: int) -> int:
    """How many leading characters of text fit in width (at least one)."""
    n = 1
    while n < len(text) and draw.textlength(text[:n + 1], font=face) <= width:
        n += 1
    return n


def _shorten(draw, text: str, face, width: int, force: bool = False) -> str:
    """text, or as much of it as fits in width followed by "..."."""
    if not force and draw.textlength(text, font=face) <= width:
        return text
    text = text.removesuffix(" ...")
    while text and draw.textlength(text + "...", font=face) > width:
        text = text[:-1]
    return text.rstrip() + "..."


# --- the files -----------------------------------------------------------------------------------

def write_sheets(plan, drawn: dict, expected: list) -> dict:
    """One sheet per value of the third axis (one in all with fewer axes). Returns {cell index: sheet path}."""
    axes = plan.axes
    cols, rows = axes[0], axes[1] if len(axes) > 1 else None
    pages = range(len(axes[2].values)) if len(axes) > 2 else [None]
    first_text = dict(zip((c.index for c in plan.cells), expected))
    where = {}
    for z in pages:
        page = (z,) if z is not None else ()
        grid = [[_read(drawn[(x, *((y,) if rows else ()), *page)][0]) for x in range(len(cols.values))]
                for y in (range(len(rows.values)) if rows else [0])]
        first = (0, *((0,) if rows else ()), *page)
        path = plan.output / ("grid.png" if z is None else f"grid-z{z}.png")
        sheet = draw_sheet(grid, shown_values(cols), shown_values(rows) if rows else None, _title(axes, z),
                           fixed_line(drawn[first][1], axes))
        save_png(sheet, path, first_text[first] + ", " + _axes_fields(axes))
        print(f"wrote {path}")
        where.update({index: path for index in drawn if index[2:] == page})
    return where


def _read(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _title(axes: list, z: int | None) -> str:
    """Which axis runs where (the headers show values only, to fit small cells), and the sheet's third-axis value."""
    parts = [f"columns: {axes[0].name}"] + ([f"rows: {axes[1].name}"] if len(axes) > 1 else [])
    if z is not None:
        parts.append(f"{axes[2].name}: {shown_values(axes[2])[z]}")
    return ", ".join(parts)


def shown_values(axis) -> list:
    """The axis's values as headers show them: files by the shortest part of their path that tells them apart
    (their folder's name when every file has one name, as embeddings trained with other settings do); the full
    values are in grid.csv."""
    if axis.name not in ("embedding", "init_image", "mask"):
        return list(axis.texts)
    paths = [Path(text) for text in axis.texts]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    if len(set(stems)) == 1 and len({p.parent.name for p in paths}) == len(paths):
        return [p.parent.name for p in paths]
    for k in range(2, max(len(p.parts) for p in paths) + 1):
        tails = [Path(*p.with_suffix("").parts[-k:]).as_posix() for p in paths]
        if len(set(tails)) == len(tails):
            return tails
    return [p.as_posix() for p in paths]  # the same file twice


def _axes_fields(axes: list) -> str:
    """AUTOMATIC1111's keys for the axes in a grid's parameters: X Type: steps, X Values: "10,20", ..."""
    parts = []
    for letter, axis in zip("XYZ", axes):
        parts += [f"{letter} Type: {axis.name}", f'{letter} Values: "{_csv_row(axis.texts)}"']
    return ", ".join(parts)


def _csv_row(values: list) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue().replace('"', "'")  # the parameters text quotes with double quotes itself


def fixed_line(cell, axes: list) -> str:
    """The settings every cell shares, in one line: what the sheet states under its cells."""
    s, varied = cell.resolved, {a.name for a in axes}
    varied |= {"prompt"} if "prompt_sr" in varied else set()
    size = [("size", "", f"{s.width}x{s.height}")] if not varied & {"height", "width"} else [
        ("height", "height", s.height), ("width", "width", s.width)]
    items = [("prompt", "prompt", s.prompt), ("negative prompt", "negative_prompt", s.negative_prompt or None),
             ("steps", "steps", s.steps), ("cfg", "cfg", s.cfg),
             ("sampler", "scheduler", A1111_SAMPLERS.get(s.scheduler, s.scheduler)), ("seed", "seed", s.seed),
             *size, ("init image", "init_image", s.init_image),
             ("strength", "strength", s.denoising_strength if s.init_image is not None else None),
             ("mask", "mask", s.mask), ("mask blur", "mask_blur", s.feather_px if s.mask is not None else None),
             ("model", "", s.extra.get("Model"))]
    return ", ".join(f"{label}: {value}" for label, axis, value in items if value is not None and axis not in varied)


def write_csv(plan, sheets: dict) -> Path:
    """grid.csv: one row per cell in sheet order: its name, each axis's full value, its file, its sheet."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cell", *(a.name for a in plan.axes), "file", "grid"])
    for cell in sorted(plan.cells, key=lambda c: c.index[::-1]):
        values = [a.texts[i] for a, i in zip(plan.axes, cell.index)]
        writer.writerow([cell.name, *values, f"{cell.name}.png", sheets[cell.index].name])
    path = plan.output / "grid.csv"
    write_text_atomic(path, out.getvalue())
    print(f"wrote {path} ({len(plan.cells)} cells)")
    return path
