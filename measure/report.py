"""What evaluate.py writes: metrics.json, memorization.csv, memorization.png, and the table it prints."""
import csv
import io
import math

from PIL import Image, ImageDraw

from mini_ldm.images import font
from mini_ldm.io import write_image_atomic, write_json_atomic, write_text_atomic
from readers.images import DataError, load_image
from stats.histogram import shared_histograms

THUMB = 160  # pixels per image in memorization.png


def json_number(x):
    """JSON has no NaN: an undefined number (IS std of a single split) is written as null."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def write_metrics_json(path, metrics: dict) -> None:
    write_json_atomic(path, {k: json_number(v) for k, v in metrics.items()})


CSV_COLUMNS = ["synthetic", "nearest_real", "similarity", "flagged", "flagged_global", "flagged_per_real",
               "distance_ratio", "nearest_real_own_nn"]


def write_memorization_csv(path, audit, real_names: list, synth_names: list) -> None:
    """One row per synthetic image, most similar first: its nearest real image and similarity, flagged (either
    rule, 0/1), each rule's verdict, the per-real distance ratio and that real image's own nearest-neighbour
    similarity (what the per-real rule is calibrated on)."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(CSV_COLUMNS)
    for i in audit.similarity.argsort(descending=True).tolist():
        j = int(audit.nearest_real[i])
        out.writerow([synth_names[i], real_names[j], f"{float(audit.similarity[i]):.6f}", int(audit.flagged[i]),
                      int(audit.flagged_global[i]), int(audit.flagged_per_real[i]),
                      f"{float(audit.distance_ratio[i]):.4f}", f"{float(audit.real_nn[j]):.6f}"])
    write_text_atomic(path, buf.getvalue())


def _thumbnail(path) -> Image.Image:
    """The image scaled (up or down, proportions kept) to fill a THUMB x THUMB tile, centred on black."""
    try:
        image = load_image(path)
    except DataError:  # deleted or changed since its features were cached: leave a grey square
        return Image.new("RGB", (THUMB, THUMB), (128, 128, 128))
    scale = THUMB / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # a small image is enlarged with visible pixels (nearest), not smoothed into something it is not
    image = image.resize(size, Image.NEAREST if scale >= 2 else Image.LANCZOS)
    square = Image.new("RGB", (THUMB, THUMB))
    square.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return square


def _short(name: str, width: int, typeface, draw) -> str:
    """The file name, cut at the front (keeping its end, where names differ) to fit `width` pixels."""
    if draw.textlength(name, font=typeface) <= width:
        return name
    while name and draw.textlength("..." + name, font=typeface) > width:
        name = name[1:]
    return "..." + name


def memorization_sheet(audit, real_root, real_names, synth_root, synth_names, top: int) -> Image.Image:
    """The `top` closest (synthetic | nearest real) pairs side by side, each image's file name under it and the
    cosine similarity under the pair (red and marked FLAGGED when either rule flags it), in rows of up to four
    pairs, and a key under them saying which side is which and what the number is."""
    order = audit.similarity.argsort(descending=True)[:top].tolist()
    cols = min(4, max(1, len(order)))
    rows = math.ceil(len(order) / cols)
    band = 22
    cell_w, cell_h = 2 * THUMB + 8, THUMB + 2 * band + 8
    big, small = font(13), font(10)  # pixels: the similarity line, the file names
    key = _key_lines(cols * cell_w, small)
    sheet = Image.new("RGB", (cols * cell_w, max(1, rows) * cell_h + 14 * len(key) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(order):
        x, y = (k % cols) * cell_w, (k // cols) * cell_h
        real_name = real_names[int(audit.nearest_real[i])]
        sheet.paste(_thumbnail(synth_root / synth_names[i]), (x, y))
        sheet.paste(_thumbnail(real_root / real_name), (x + THUMB, y))
        for dx, name in ((0, synth_names[i]), (THUMB, real_name)):
            draw.text((x + dx + 2, y + THUMB + 2), _short(name, THUMB - 4, small, draw), fill="black", font=small)
        flagged = bool(audit.flagged[i])
        text = f"cosine {float(audit.similarity[i]):.4f}" + ("  FLAGGED" if flagged else "")
        draw.text((x + 4, y + THUMB + band + 2), text, fill=(200, 0, 0) if flagged else "black", font=big)
    for n, line in enumerate(key):
        draw.text((4, max(1, rows) * cell_h + 4 + 14 * n), line, fill="black", font=small)
    return sheet


MEMORIZATION_KEY = ("In each pair: LEFT = a synthetic image, RIGHT = the real image nearest to it.",
                    "cosine = cosine similarity of their Inception pool features (1.0 = the same features).",
                    "FLAGGED (red) = a memorisation rule of evaluate.py fired for that synthetic image.")


def _key_lines(width: int, typeface) -> list[str]:
    """MEMORIZATION_KEY, each sentence wrapped at word boundaries to fit `width` pixels."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = []
    for sentence in MEMORIZATION_KEY:
        line = ""
        for word in sentence.split():
            candidate = f"{line} {word}".strip()
            if line and measure.textlength(candidate, font=typeface) > width - 8:
                lines.append(line)
                candidate = word
            line = candidate
        lines.append(line)
    return lines


def write_memorization_png(path, *args) -> None:
    write_image_atomic(path, memorization_sheet(*args))


def summary_table(m: dict) -> str:
    """The few lines a person reads; the JSON holds the rest."""
    def pm(mean, std):
        return f"{mean:.4f} +- {std:.4f}" if std is not None and math.isfinite(std) else f"{mean:.4f}"

    n = min(m["n_real"], m["n_synth"])
    fid_note = (f"biased upwards and unstable with {n} images < {m['dims']} dims; compare only runs with the same "
                "sizes" if n < m["dims"] else "")
    rows = [
        ("images", f"{m['n_real']} real, {m['n_synth']} synthetic", f"{m['n_unreadable']} unreadable, skipped"
         if m["n_unreadable"] else ""),
        (f"FID ({m['dims']}-d)", f"{m['fid']:.4f}", fid_note),
        ("KID", pm(m["kid_mean"], m["kid_std"]),
         f"unbiased: the number to trust with ~100 images ({m['kid_subsets']} subsets of {m['kid_subset_size']})"),
        ("IS (synthetic)", pm(m["is_mean"], m["is_std"]), "ImageNet classes: says little about medical images"),
        ("memorized", f"{m['memorized']} of {m['n_synth']} ({m['memorized_fraction']:.1%})",
         f"{m['memorized_global']} closer to a real image than real images are to each other (> "
         f"{m['real_nn_max']:.4f}; real-real p99 {m['real_nn_p99']:.4f}), {m['memorized_per_real']} within "
         f"{m['per_real_ratio']:g} of their real image's own nearest-neighbour distance"),
    ]
    if "data_copying" in m:
        c = m["data_copying"]
        ct = "undetermined" if c["ct"] is None else f"{c['ct']:.2f}"
        rows.append(("data copying C_T", ct, f"{c['verdict']} (below -3 = copying); {c['explanation']}"))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:<{value_width}}  {c}".rstrip() for a, b, c in rows)


def distance_histograms(copying, size: tuple = (720, 400)) -> Image.Image:
    """The data-copying test's two distributions, as outlined histograms on one axis: each SYNTH image's and each
    held-out image's distance to its nearest REAL image, each normalised to its own count; C_T in the title."""
    synth, held = copying.synth_distance, copying.held_out_distance
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 60, 72, size[0] - 20, size[1] - 50  # the legend sits above the plot
    edges, shares = shared_histograms([synth, held], max_bins=40)
    lo, hi = float(edges[0]), float(edges[-1])
    top_share = max(float(s.max()) for s in shares) or 1.0
    to_x = lambda v: left + (v - lo) / (hi - lo) * (right - left)  # noqa: E731
    to_y = lambda s: bottom - s / top_share * (bottom - top)  # noqa: E731
    draw.rectangle([left, top, right, bottom], outline="black")
    text = font(13)
    for colour, share, label in zip(((214, 39, 40), (31, 119, 180)), shares,
                                    (f"synthetic -> nearest real ({len(synth)})",
                                     f"held-out real -> nearest real ({len(held)})")):
        points = [(to_x(lo), bottom)]
        for i, s in enumerate(share):
            points += [(to_x(edges[i]), to_y(s)), (to_x(edges[i + 1]), to_y(s))]
        draw.line(points + [(to_x(hi), bottom)], fill=colour, width=2)
        y = 40 + 16 * (colour[0] < 100)
        draw.line([(left, y), (left + 24, y)], fill=colour, width=2)
        draw.text((left + 30, y), label, fill="black", font=text, anchor="lm")
    for v in (lo, (lo + hi) / 2, hi):
        draw.text((to_x(v), bottom + 6), f"{v:.3g}", fill="black", font=text, anchor="mt")
    draw.text(((left + right) / 2, bottom + 26), "Euclidean distance to the nearest real (training) image, "
              "Inception pool features", fill="black", font=text, anchor="mt")
    ct = "undetermined" if copying.ct is None else f"{copying.ct:.2f}"
    cells = f"{copying.k} cell" + ("s" if copying.k != 1 else "")
    draw.text((left, 12), f"data copying: C_T = {ct} ({copying.verdict}; below -3 = copying), {cells}",
              fill="black", font=font(14))
    return image


def write_data_copying_png(path, copying) -> None:
    write_image_atomic(path, distance_histograms(copying))
