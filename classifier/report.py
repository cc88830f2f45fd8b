"""What classify.py writes from the finished trainings: results.json (AUC, DeLong 95% CI, paired DeLong p
per repeat, mean/std over repeats), predictions.csv (every test score), roc.png, and the printed table."""
import csv
import io

import numpy as np
from PIL import Image, ImageDraw

from mini_ldm.images import font
from mini_ldm.io import write_image_atomic, write_json_atomic, write_text_atomic

from stats import auc

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194)]


def arm_scores(runs: dict, arm: str) -> list:
    """The test scores of the finished repeats of `arm`, in repeat order: [(repeat, scores)]."""
    return sorted((r, run["scores"]) for (name, r), run in runs.items() if name == arm)


def build_results(s, data, arms: list, runs: dict, weights_sha256) -> dict:
    labels = data.test.labels.tolist()
    results = {"positive": data.positive, "classes": data.classes,
               "n_test": data.test.per_class(data.classes, data.positive), "arms": {}, "comparisons": []}
    test_auc = {key: auc.auc_mann_whitney(run["scores"], labels) for key, run in runs.items()}  # (arm, repeat)
    for arm in arms:
        finished = arm_scores(runs, arm.name)
        aucs = [test_auc[arm.name, r] for r, _ in finished]
        mean, std = auc.mean_std(aucs) if aucs else (None, None)
        sizes = next((run for (name, _), run in runs.items() if name == arm.name), {})
        results["arms"][arm.name] = {"auc": aucs, "ci95": [list(auc.auc_ci95(sc, labels)) for _, sc in finished],
                                     "auc_mean": mean, "auc_std": std, "n_train": sizes.get("n_train"),
                                     "n_real": sizes.get("n_real"), "n_synthetic": sizes.get("n_synthetic"),
                                     "repeats": [r for r, _ in finished]}
    reference = next((a.name for a in arms if a.name == "real"), arms[0].name)
    for arm in arms:
        if arm.name != reference:
            results["comparisons"].append(compare(runs, test_auc, reference, arm.name, labels))
    results.update(settings=s.identity(), weights_sha256=weights_sha256)
    return results


def compare(runs: dict, test_auc: dict, a: str, b: str, labels: list) -> dict:
    """The paired DeLong test of arm b against arm a on each repeat both have finished (same seed);
    `test_auc`: {(arm, repeat): AUC}."""
    scores_a, scores_b = dict(arm_scores(runs, a)), dict(arm_scores(runs, b))
    paired = sorted(set(scores_a) & set(scores_b))
    p = [auc.delong_paired_test(scores_a[r], scores_b[r], labels) for r in paired]
    deltas = [test_auc[b, r] - test_auc[a, r] for r in paired]
    return {"a": a, "b": b, "p": p, "delta_mean": float(np.mean(deltas)) if deltas else None, "repeats": paired}


def write_predictions(path, arms: list, runs: dict, data) -> None:
    """arm,repeat,file,label,score: every test image of every finished training; score written with repr,
    so the file gives back exactly the numbers behind results.json."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["arm", "repeat", "file", "label", "score"])
    labels = data.test.labels.tolist()
    for arm in arms:
        for r, scores in arm_scores(runs, arm.name):
            out.writerows([arm.name, r, name, label, repr(float(score))]
                          for name, label, score in zip(data.test.names, labels, scores))
    write_text_atomic(path, buf.getvalue())


def draw_roc(arms: list, runs: dict, data, results: dict, size: int = 640) -> Image.Image:
    """Each arm's ROC curves: the repeats faint, their vertical mean bold; legend AUC mean +/- std."""
    labels = data.test.labels.tolist()
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image, "RGBA")
    left, top, side = 70, 20, size - 100
    to_px = lambda fpr, tpr: [(left + f * side, top + (1 - t) * side) for f, t in zip(fpr, tpr)]  # noqa: E731
    draw.rectangle([left, top, left + side, top + side], outline="black")
    draw.line(to_px([0, 1], [0, 1]), fill=(160, 160, 160), width=1)
    text = font(14)
    for tick in np.linspace(0, 1, 6):
        (x, _), = to_px([tick], [0])
        (_, y), = to_px([0], [tick])
        draw.text((x, top + side + 6), f"{tick:.1f}", fill="black", font=text, anchor="mt")
        draw.text((left - 6, y), f"{tick:.1f}", fill="black", font=text, anchor="rm")
    draw.text((left + side / 2, top + side + 28), "false positive rate", fill="black", font=text, anchor="mt")
    label = Image.new("RGB", (side, 20), "white")
    ImageDraw.Draw(label).text((side / 2, 10), "true positive rate", fill="black", font=text, anchor="mm")
    image.paste(label.rotate(90, expand=True), (12, top))
    draw.text((left + side / 2, size - 24), "ROC on the real test set: each repeat faint, their mean bold",
              fill=(90, 90, 90), font=text, anchor="mt")
    grid = np.linspace(0, 1, 201)
    for i, arm in enumerate(arms):
        colour = COLOURS[i % len(COLOURS)]
        curves = [auc.roc_curve(scores, labels) for _, scores in arm_scores(runs, arm.name)]
        if not curves:
            continue
        for fpr, tpr in curves:
            draw.line(to_px(fpr, tpr), fill=(*colour, 70), width=1)
        draw.line(to_px(np.r_[0.0, grid], auc.mean_roc(curves, grid)), fill=colour, width=3)
        entry = results["arms"][arm.name]
        std = "" if entry["auc_std"] is None else f" ± {entry['auc_std']:.3f}"
        y = top + side - 20 - 20 * (len(arms) - 1 - i)
        draw.line([(left + side * 0.45, y), (left + side * 0.45 + 24, y)], fill=colour, width=3)
        draw.text((left + side * 0.45 + 30, y), f"{arm.name}: AUC {entry['auc_mean']:.3f}{std}", fill="black",
                  font=text, anchor="lm")
    return image


def table(results: dict) -> str:
    """The paper's table (real, synthetic, AUC mean +/- std) plus the mean 95% CI and the paired p per repeat."""
    positive = results["positive"]
    reference = results["comparisons"][0]["a"] if results["comparisons"] else "-"
    rows = [f"{'arm':<24}{'real':>6}{'synthetic':>11}   {'AUC mean ± std':<16}{'95% CI (mean of repeats)':<26}"
            f"p vs {reference} (per repeat)"]
    p_of = {c["b"]: c["p"] for c in results["comparisons"]}
    for name, arm in results["arms"].items():
        if not arm["auc"]:
            continue
        std = "" if arm["auc_std"] is None else f" ± {arm['auc_std']:.3f}"
        lo, hi = np.mean([c[0] for c in arm["ci95"]]), np.mean([c[1] for c in arm["ci95"]])
        p = ", ".join(f"{v:.3g}" for v in p_of.get(name, [])) or "-"
        rows.append(f"{name:<24}{arm['n_real']:>6}{arm['n_synthetic']:>11}   {arm['auc_mean']:.3f}{std:<10}[{lo:.3f}, {hi:.3f}]"
                    f"{'':<10}{p}")
    rows.append(f"(positive class: {positive}; test: " + ", ".join(f"{n} {c}" for c, n in results["n_test"].items())
                + "; a CI or p describes the spread over test cases of one training, the std the spread over "
                  "trainings)")
    return "\n".join(rows)


def write_outputs(output, s, data, arms: list, runs: dict, weights_sha256) -> dict:
    results = build_results(s, data, arms, runs, weights_sha256)
    write_json_atomic(output / "results.json", results)
    write_predictions(output / "predictions.csv", arms, runs, data)
    write_image_atomic(output / "roc.png", draw_roc(arms, runs, data, results))
    return results
