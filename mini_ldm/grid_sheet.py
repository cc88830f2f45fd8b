"""A settings grid's sheet: cells in rows and columns, the axis values as column and row headers, an optional
title (the third axis's value), and the settings every cell shares in one line under it.

The text is Pillow's own font scaled to the cells (12 px at 64 px cells, 32 px at 512 px), so it is legible at
both; a header wraps to its column (a long value is shortened with "...", the full value is in grid.csv).
"""
from PIL import Image, ImageDraw

from .images import font

MIN_FONT_PX = 12  # below this Pillow's default font stops being readable
MAX_HEADER_LINES = 3
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
    title_h = line_h + 2 * pad if title else 0
    width = left_w + sum(col_w)
    footer_lines = _wrap(measure, footer, face, width - 2 * pad, max_lines=None)  # a narrow grid: wrapped, all said
    height = title_h + header_h + sum(row_h) + len(footer_lines) * line_h + 2 * pad
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        _text_block(draw, [_shorten(draw, title, face, width - 2 * pad)], face, (0, 0, width, title_h), line_h)
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
