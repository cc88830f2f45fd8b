"""The loss plot of a training run, drawn with Pillow from its loss CSV (no plotting dependency).

Per concept, one colour: the training loss smoothed by a trailing moving average (thin line) and the
validation loss (thick line with dots). Steps on x, loss on y, both labelled with round-number ticks.
The CSV is the one source: the plot is redrawn from it, so a resumed run draws its whole history.
"""
import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw

from mini_ldm.images import font
from mini_ldm.io import atomic_write

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
SIZE, LEFT, RIGHT, TOP, BOTTOM = (720, 420), 70, 20, 36, 50  # pixels: canvas and margins


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


def smooth(points: list) -> list:
    """Trailing moving average over about 1/30 of the run (at least 1 step)."""
    window = max(1, len(points) // 30)
    total, out = 0.0, []
    for i, (step, value) in enumerate(points):
        total += value - (points[i - window][1] if i >= window else 0.0)
        out.append((step, total / min(i + 1, window)))
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list:
    """Round-number ticks covering lo..hi (1, 2 or 5 times a power of ten apart)."""
    span = (hi - lo) or abs(hi) or 1.0
    raw = span / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def draw_loss_plot(csv_path: Path, png_path: Path, title: str = "") -> Path | None:
    """Draw the plot of `csv_path` to `png_path` (atomically); None when the log has no rows yet."""
    curves = {name: {"train": smooth(c["train"]), "val": c["val"]} for name, c in read_curves(csv_path).items()}
    points = [p for c in curves.values() for p in c["train"] + c["val"]]
    if not points:
        return None
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    to_pixel = _axes(draw, points, title)
    for i, (name, c) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        if len(c["train"]) > 1:
            draw.line([to_pixel(*p) for p in c["train"]], fill=colour, width=1)
        if len(c["val"]) > 1:
            draw.line([to_pixel(*p) for p in c["val"]], fill=colour, width=3)
        for p in c["val"]:
            x, y = to_pixel(*p)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.text((LEFT + 10, TOP + 6 + 14 * i), f"{name}: train (smoothed, thin), validation (thick)",
                  fill=colour, font=font(12))
    with atomic_write(png_path) as f:
        image.save(f, format="PNG", optimize=True)
    return png_path


def _axes(draw: ImageDraw.ImageDraw, points: list, title: str):
    """Frame, ticks and labels; returns the (step, loss) -> pixel mapping."""
    (w, h), small = SIZE, font(12)
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def to_pixel(step, loss):
        return (LEFT + (step - x_lo) / (x_hi - x_lo) * (w - LEFT - RIGHT),
                h - BOTTOM - (loss - y_lo) / (y_hi - y_lo) * (h - TOP - BOTTOM))

    draw.rectangle((LEFT, TOP, w - RIGHT, h - BOTTOM), outline="black")
    for x in nice_ticks(x_lo, x_hi):
        px = to_pixel(x, y_lo)[0]
        draw.line((px, h - BOTTOM, px, h - BOTTOM + 4), fill="black")
        draw.text((px, h - BOTTOM + 6), f"{x:g}", fill="black", font=small, anchor="ma")
    for y in nice_ticks(y_lo, y_hi):
        py = to_pixel(x_lo, y)[1]
        draw.line((LEFT - 4, py, LEFT, py), fill="black")
        draw.text((LEFT - 6, py), f"{y:.4g}", fill="black", font=small, anchor="rm")
    draw.text(((w + LEFT) / 2, h - 8), "step", fill="black", font=small, anchor="md")
    draw.text((8, TOP - 12), "loss (MSE)", fill="black", font=small, anchor="lm")
    draw.text(((w + LEFT) / 2, 12), title, fill="black", font=font(14), anchor="mm")
    return to_pixel
