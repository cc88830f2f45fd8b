"""The figures of a study, from its readings: per reader, pooled over readers, and the readers' agreement.

preference: how often each reader chose A, with the exact 95% CI and the exact two-sided binomial p against 0.5.
real-or-synthetic: accuracy of the forced call (scale 4-6 = synthetic), sensitivity, specificity, the AUC of the
six-point score with its DeLong CI; pooled accuracy with a two-way (readers x images) bootstrap CI; kappa.
label: agreement with the truth per source, synthetic - real with Fisher's exact p, confusion tables.
"""
import statistics
from collections import defaultdict

import numpy as np

from stats.agreement import cohen_kappa, fisher_exact, fleiss_kappa, two_way_bootstrap
from stats.auc import auc_ci95, auc_mann_whitney
from stats.binomial import proportion

from . import database
from .readings import load_readings
from .tasks import LABEL, PREFERENCE, REAL_OR_SYNTHETIC, SYNTHETIC_FROM_SCORE


def median_time(readings) -> float | None:
    return float(statistics.median(r.time_ms for r in readings)) if readings else None


def by_reader(readings, readers) -> dict:
    grouped = {name: [] for name in readers}
    for r in readings:
        grouped[r.reader].append(r)
    return grouped


def build_report(folder, bootstrap: int = 2000, seed: int = 0) -> tuple:
    """(report dict, readings) of the study at `folder`, partial or complete."""
    db = database.connect(folder)
    try:
        meta, readings, counts = database.meta(db), load_readings(db), database.progress(db)
        n_items = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    finally:
        db.close()
    grouped = by_reader(readings, counts)
    figures = {PREFERENCE: preference_figures, REAL_OR_SYNTHETIC: real_or_synthetic_figures,
               LABEL: label_figures}[meta["task"]]
    per_reader, pooled, agreement = figures(grouped, readings, meta, bootstrap, seed)
    for name, (answered, total) in counts.items():
        per_reader[name].update(answered=answered, total=total, median_time_ms=median_time(grouped[name]))
    report = {"task": meta["task"], "n_items": n_items, "names": meta["names"], "classes": meta["classes"],
              "readers": per_reader, "pooled": pooled, "agreement": agreement}
    return report, readings


def calls_on_common_items(grouped: dict, call) -> list:
    """Per item read by every reader (in item order), the list of the readers' calls on it."""
    by_item = [{r.item: call(r) for r in readings} for readings in grouped.values()]
    common = sorted(set.intersection(*(set(d) for d in by_item))) if by_item else []
    return [[d[item] for d in by_item] for item in common]


def kappas(grouped: dict, call) -> dict:
    """Fleiss' kappa of the readers' calls (two or more readers), Cohen's as well for exactly two, on the items
    every reader has answered."""
    if len(grouped) < 2:
        return {}
    calls = calls_on_common_items(grouped, call)
    agreement = {"n_items": len(calls), "fleiss_kappa": fleiss_kappa(calls) if calls else None}
    if len(grouped) == 2:
        agreement["cohen_kappa"] = cohen_kappa(*zip(*calls)) if calls else None
    return agreement


# --------------------------------------------------------------------------- preference

def preference_figures(grouped, readings, meta, bootstrap, seed) -> tuple:
    a_name = meta["names"]["a"]

    def prefer_a(rs):
        return proportion(sum(r.chosen == a_name for r in rs), len(rs))

    per_reader = {name: prefer_a(rs) for name, rs in grouped.items()}
    return per_reader, prefer_a(readings), kappas(grouped, lambda r: r.chosen == a_name)


# --------------------------------------------------------------------------- real or synthetic

def is_correct(r) -> bool:
    return (r.score >= SYNTHETIC_FROM_SCORE) == (r.truth == "synthetic")


def scores_and_labels(rs) -> tuple:
    """The six-point scores and the truths (1 = synthetic) of real-or-synthetic readings: what the ROC ranks."""
    return [r.score for r in rs], [int(r.truth == "synthetic") for r in rs]


def real_or_synthetic_reader(rs) -> dict:
    synthetic = [r for r in rs if r.truth == "synthetic"]
    real = [r for r in rs if r.truth == "real"]
    figures = {"accuracy": proportion(sum(map(is_correct, rs)), len(rs)),
               "sensitivity": proportion(sum(map(is_correct, synthetic)), len(synthetic)),
               "specificity": proportion(sum(map(is_correct, real)), len(real)),
               "auc": None, "auc_ci95": None}
    if synthetic and real:  # the AUC needs both kinds of image
        scores, labels = scores_and_labels(rs)
        figures["auc"] = auc_mann_whitney(scores, labels)
        figures["auc_ci95"] = list(auc_ci95(scores, labels))
    return figures


def real_or_synthetic_figures(grouped, readings, meta, bootstrap, seed) -> tuple:
    per_reader = {name: real_or_synthetic_reader(rs) for name, rs in grouped.items()}
    items = sorted({r.item for r in readings})
    column = {item: j for j, item in enumerate(items)}
    correct = np.full((len(grouped), len(items)), np.nan)  # (readers, images); NaN: not read yet
    for i, rs in enumerate(grouped.values()):
        for r in rs:
            correct[i, column[r.item]] = float(is_correct(r))
    pooled = {"accuracy": proportion(sum(map(is_correct, readings)), len(readings))}
    pooled["accuracy"]["ci95"] = two_way_bootstrap(correct, bootstrap, seed) if readings else None
    pooled["accuracy"]["ci95_method"] = f"two-way bootstrap over readers and images ({bootstrap} draws, seed {seed})"
    return per_reader, pooled, kappas(grouped, lambda r: r.score >= SYNTHETIC_FROM_SCORE)


# --------------------------------------------------------------------------- label

def label_source(rs, classes) -> dict:
    """Agreement with the truth (its p against guessing, 1 / number of classes) and the confusion table
    {truth: {answer: count}} of one source's readings."""
    confusion = {truth: {answer: 0 for answer in classes} for truth in classes}
    for r in rs:
        confusion[r.truth][r.answer] += 1
    agreement = proportion(sum(r.answer == r.truth for r in rs), len(rs), p0=1 / len(classes))
    return {**agreement, "confusion": confusion}


def label_reader(rs, classes) -> dict:
    sources = defaultdict(list)
    for r in rs:
        sources[r.source].append(r)
    figures = {source: label_source(sources[source], classes) for source in ("real", "synthetic")}
    real, synthetic = figures["real"], figures["synthetic"]
    figures["difference"] = figures["fisher_p"] = None
    if real["n"] and synthetic["n"]:
        figures["difference"] = synthetic["rate"] - real["rate"]
        figures["fisher_p"] = fisher_exact([[synthetic["k"], synthetic["n"] - synthetic["k"]],
                                            [real["k"], real["n"] - real["k"]]])
    return figures


def label_figures(grouped, readings, meta, bootstrap, seed) -> tuple:
    classes = meta["classes"]
    per_reader = {name: label_reader(rs, classes) for name, rs in grouped.items()}
    return per_reader, label_reader(readings, classes), kappas(grouped, lambda r: r.answer)
