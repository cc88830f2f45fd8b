"""report.png, drawn with Pillow alone: preference, each reader's rate of choosing A with its exact CI;
real-or-synthetic, each reader's ROC curve with the diagonal; label, the confusion tables."""
from PIL import Image, ImageDraw

from stats.auc import roc_curve

from .report import by_reader, scores_and_labels
from .tasks import LABEL, PREFERENCE

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (160, 160, 160)
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]


def report_image(report: dict, readings: list) -> Image.Image:
    if report["task"] == PREFERENCE:
        return preference_plot(report)
    if report["task"] == LABEL:
        return confusion_plot(report)
    return roc_plot(report, readings)


def preference_plot(report: dict) -> Image.Image:
    rows = [(name, f) for name, f in report["readers"].items()] + [("pooled", report["pooled"])]
    width, left, right, top, step = 640, 120, 40, 50, 40
    image = Image.new("RGB", (width, top + step * len(rows) + 50), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), f"prefer {report['names']['a']} (rate, exact 95% CI)", fill=BLACK)

    def x(rate):
        return left + rate * (width - left - right)

    bottom = top + step * len(rows)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([(x(tick), top - 10), (x(tick), bottom)], fill=BLACK if tick == 0.5 else GREY)
        draw.text((x(tick) - 10, bottom + 8), f"{tick:.2f}", fill=BLACK)
    for i, (name, f) in enumerate(rows):
        y = top + step * i + step // 2
        draw.text((10, y - 6), name[:16], fill=BLACK)
        if f["rate"] is not None:
            draw.line([(x(f["ci95"][0]), y), (x(f["ci95"][1]), y)], fill=COLOURS[0], width=3)
            draw.ellipse([x(f["rate"]) - 5, y - 5, x(f["rate"]) + 5, y + 5], fill=COLOURS[1])
    return image


def roc_plot(report: dict, readings: list) -> Image.Image:
    size, margin = 480, 50
    image = Image.new("RGB", (size + 2 * margin + 160, size + 2 * margin), WHITE)
    draw = ImageDraw.Draw(image)

    def point(fpr, tpr):
        return margin + fpr * size, margin + (1 - tpr) * size

    draw.rectangle([margin, margin, margin + size, margin + size], outline=BLACK)
    draw.line([point(0, 0), point(1, 1)], fill=GREY)  # chance: the readers cannot tell the sets apart
    draw.text((margin, 15), "ROC of the six-point score (synthetic = positive)", fill=BLACK)
    draw.text((margin + size // 2 - 60, margin + size + 15), "1 - specificity", fill=BLACK)
    draw.text((5, margin + size // 2), "sens.", fill=BLACK)
    for i, (name, rs) in enumerate(by_reader(readings, report["readers"]).items()):
        colour = COLOURS[i % len(COLOURS)]
        auc = report["readers"][name]["auc"]
        draw.text((2 * margin + size, margin + 20 * i), f"{name[:12]} AUC {'-' if auc is None else f'{auc:.2f}'}",
                  fill=colour)
        if auc is None:
            continue
        fpr, tpr = roc_curve(*scores_and_labels(rs))
        draw.line([point(a, b) for a, b in zip(fpr, tpr)], fill=colour, width=2)
    return image


def confusion_plot(report: dict) -> Image.Image:
    classes = report["classes"]
    cell, label_w = 44, 110
    panels = [(name, source, f[source]["confusion"]) for name, f in report["readers"].items()
              for source in ("real", "synthetic") if f[source]["n"]]
    panel_w, panel_h = label_w + cell * len(classes) + 20, 40 + cell * (len(classes) + 1)
    image = Image.new("RGB", (max(1, len(panels)) * panel_w, panel_h + 20), WHITE)
    draw = ImageDraw.Draw(image)
    for p, (name, source, confusion) in enumerate(panels):
        x0 = p * panel_w
        draw.text((x0 + 5, 5), f"{name[:12]}, {source}: rows truth, columns answer", fill=BLACK)
        for j, answer in enumerate(classes):
            draw.text((x0 + label_w + j * cell + 2, 25), answer[:6], fill=BLACK)
        for i, truth in enumerate(classes):
            y = 40 + i * cell
            draw.text((x0 + 5, y + cell // 3), truth[:16], fill=BLACK)
            row_total = max(1, sum(confusion[truth].values()))
            for j, answer in enumerate(classes):
                count = confusion[truth][answer]
                shade = int(255 - 180 * count / row_total)
                box = [x0 + label_w + j * cell, y, x0 + label_w + (j + 1) * cell - 2, y + cell - 2]
                draw.rectangle(box, fill=(shade, shade, 255), outline=GREY)
                draw.text((box[0] + cell // 3, y + cell // 3), str(count), fill=BLACK)
    return image
