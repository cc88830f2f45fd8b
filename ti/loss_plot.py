"""The loss plot of a training run, drawn with Pillow from its loss CSV (no plotting dependency).

Per concept, one colour: the training loss smoothed by an exponential moving average (thin line) and the
validation loss (thick line with dots), a ring on its best point and a dashed line where early stopping
stopped the concept. The legend sits in its own column right of the plot, never over a curve. Steps on x,
loss on y, both labelled with round-number ticks. The x axis always starts at step 0 (where validation, when
there is any, is first measured), so plots of runs with and without validation line up, and ends a little past
the last step, so a stop at the last step stays visible.
The CSV is the one source: the plot is redrawn from it, so a resumed run draws its whole history.
"""
import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw

from mini_ldm.images import font
from mini_ldm.io import write_image_atomic

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
SIZE, LEFT, RIGHT, TOP, BOTTOM = (720, 420), 70, 190, 36, 50  # pixels: canvas and margins (the legend: right)
KEY = "#444444"  # the legend's explanation lines
def read_curves(csv_path: Path) -> dict:
    """{concept: {"train": [(step, loss)], "val": [(step, val_loss)]}} from a loss CSV."""
    curves = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            c = curves.setdefault(row.get("concept") or "loss", {"train": [], "val": []})
            for key, column in (("train", "loss"), ("val", "val_loss")):
                if row.get(column):
                    c[key].append((int(row["step"]), float(row[column])))
    return curves


def smoothing_span(count: int) -> int:
    """The EMA's span in points: a tenth of the run, at least 5 (fewer points than that are left as they are)."""
    return max(5, count // 10)


def smooth(points: list) -> list:
    """Exponential moving average with span N = smoothing_span (weight 2 / (N + 1) on the newest point),
    bias-corrected as in Adam, so the first points are not pulled towards zero."""
    alpha = 2.0 / (smoothing_span(len(points)) + 1)
    average, weight, out = 0.0, 0.0, []
    for step, value in points:
        average = (1 - alpha) * average + alpha * value
        weight = (1 - alpha) * weight + alpha
        out.append((step, average / weight))
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list:
    """Round-number ticks covering lo..hi (1, 2 or 5 times a power of ten apart)."""
    span = (hi - lo) or abs(hi) or 1.0
    raw = span / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def draw_loss_plot(csv_path: Path, png_path: Path, title: str = "", marks: dict | None = None) -> Path | None:
    """Draw the plot of `csv_path` to `png_path` (atomically); None when the log has no rows yet.
    marks: {concept: {"best": step, "stop": step}} from the run's validation records (a ring on the best
    validation, a dashed line where early stopping froze the concept); without it the lowest validation
    loss in the log is ringed."""
    raw = read_curves(csv_path)
    curves = {name: {"train": smooth(c["train"]), "val": c["val"]} for name, c in raw.items()}
    span = smoothing_span(max((len(c["train"]) for c in raw.values()), default=0))
    points = [p for c in curves.values() for p in c["train"] + c["val"]]
    if not points:
        return None
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    to_pixel = _axes(draw, points, title)
    stopped = False
    for i, (name, c) in enumerate(curves.items()):
        colour, mark = COLOURS[i % len(COLOURS)], (marks or {}).get(name, {})
        if len(c["train"]) > 1:
            draw.line([to_pixel(*p) for p in c["train"]], fill=colour, width=1)
        if len(c["val"]) > 1:
            draw.line([to_pixel(*p) for p in c["val"]], fill=colour, width=3)
        for p in c["val"]:
            x, y = to_pixel(*p)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        best = _best_point(c["val"], mark.get("best"))
        if best is not None:  # a ring around the best validation
            x, y = to_pixel(*best)
            draw.ellipse((x - 7, y - 7, x + 7, y + 7), outline=colour, width=2)
        if mark.get("stop") is not None:
            stopped = True
            _dashed_vline(draw, to_pixel(mark["stop"], 0)[0], colour)
    _legend(draw, list(curves), any(c["val"] for c in curves.values()), stopped, span)
    write_image_atomic(png_path, image, optimize=True)
    return png_path


def legend_lines(names: list, validation: bool, stopped: bool, span: int = 5) -> list[tuple[str, str | None]]:
    """(text, colour or None for a key line) of the legend, which sits right of the plot, off the curves.
    A run without validation says nothing about validation."""
    lines = [(name, COLOURS[i % len(COLOURS)]) for i, name in enumerate(names)]
    lines += [("", None), ("thin: training loss", None), (f"  (EMA, span {span} steps)", None)]
    if validation:
        lines += [("thick, dots: validation", None), ("ring: best validation", None)]
    if stopped:
        lines += [("dashed: early stop", None)]
    return lines


def _legend(draw: ImageDraw.ImageDraw, names: list, validation: bool, stopped: bool, span: int):
    x, y, small = SIZE[0] - RIGHT + 12, TOP, font(12)
    for text, colour in legend_lines(names, validation, stopped, span):
        if colour is not None:  # a short stroke in the concept's colour, then its name
            draw.line((x, y + 7, x + 18, y + 7), fill=colour, width=3)
            draw.text((x + 24, y), _fit(text, 20), fill=colour, font=small)
        elif text:
            draw.text((x, y), text, fill=KEY, font=small)
        y += 16


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def _best_point(val: list, step: int | None):
    """The validation point of `step` (the record's best), else the lowest in the log; None without any."""
    if not val:
        return None
    at_step = [p for p in val if p[0] == step]
    return at_step[0] if at_step else min(val, key=lambda p: p[1])


def _dashed_vline(draw: ImageDraw.ImageDraw, x: float, colour: str):
    for y in range(TOP, SIZE[1] - BOTTOM, 8):
        draw.line((x, y, x, min(y + 4, SIZE[1] - BOTTOM)), fill=colour, width=1)


def _axes(draw: ImageDraw.ImageDraw, points: list, title: str):
    """Frame, ticks and labels; returns the (step, loss) -> pixel mapping."""
    (w, h), small = SIZE, font(12)
    x_lo, last = 0, max(p[0] for p in points)  # from step 0 with or without validation
    x_hi = last + max(1, 0.03 * last)  # room right of the last step, where an early stop's line may stand
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_pixel(step, loss):
        return (LEFT + (step - x_lo) / (x_hi - x_lo) * (w - LEFT - RIGHT),
                h - BOTTOM - (loss - y_lo) / (y_hi - y_lo) * (h - TOP - BOTTOM))

    draw.rectangle((LEFT, TOP, w - RIGHT, h - BOTTOM), outline="black")
    for x in nice_ticks(x_lo, last):
        px = to_pixel(x, y_lo)[0]
        draw.line((px, h - BOTTOM, px, h - BOTTOM + 4), fill="black")
        draw.text((px, h - BOTTOM + 6), f"{x:g}", fill="black", font=small, anchor="ma")
    for y in nice_ticks(y_lo, y_hi):
        py = to_pixel(x_lo, y)[1]
        draw.line((LEFT - 4, py, LEFT, py), fill="black")
        draw.text((LEFT - 6, py), f"{y:.4g}", fill="black", font=small, anchor="rm")
    middle = (LEFT + w - RIGHT) / 2  # of the plot area
    draw.text((middle, h - 8), "step", fill="black", font=small, anchor="md")
    draw.text((8, TOP - 12), "loss (MSE)", fill="black", font=small, anchor="lm")
    draw.text((middle, 12), title, fill="black", font=font(14), anchor="mm")
    return to_pixel
