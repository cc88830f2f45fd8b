"""The report's files (report.json, readings.csv, report.png) and the table printed with them."""
import csv
import io
from pathlib import Path

from mini_ldm.io import write_image_atomic, write_json_atomic, write_text_atomic

from .plots import report_image
from .readings import COLUMNS
from .tasks import LABEL, PREFERENCE

REPORT_JSON, READINGS_CSV, REPORT_PNG = "report.json", "readings.csv", "report.png"


def write_report(folder, report: dict, readings: list) -> list:
    """Write the three files into the study folder (each replaced whole); returns their paths."""
    folder = Path(folder)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(r.row() for r in readings)
    return [write_json_atomic(folder / REPORT_JSON, report),
            write_text_atomic(folder / READINGS_CSV, text.getvalue()),
            write_image_atomic(folder / REPORT_PNG, report_image(report, readings))]


def _num(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _p(p) -> str:
    return "-" if p is None else (f"{p:.2g}" if p < 0.001 else f"{p:.4f}")


def _proportion(f: dict) -> str:
    return f"{f['k']:>4}/{f['n']:<4} {_num(f['rate'])} {_ci(f['ci95']):>16} p={_p(f['p_value'])}"


def table(report: dict) -> str:
    """The report as text: one line per reader and one pooled, then the readers' agreement."""
    lines = [f"task: {report['task']}, {report['n_items']} items"]
    rows = {**report["readers"], "pooled": report["pooled"]}
    if report["task"] == PREFERENCE:
        lines.append(f"prefer {report['names']['a']} over {report['names']['b']} (k/n, rate, exact 95% CI, "
                     "two-sided exact binomial p against 0.5)")
        lines += [f"  {name:<12} {_proportion(f)}{_time(f)}" for name, f in rows.items()]
    elif report["task"] == LABEL:
        lines.append(f"agreement with the truth (k/n, rate, exact 95% CI, p against guessing 1/{len(report['classes'])}): "
                     "real | synthetic | synthetic - real, Fisher's exact p")
        lines += [f"  {name:<12} {_proportion(f['real'])} | {_proportion(f['synthetic'])} | "
                  f"{_num(f['difference'])}, p={_p(f['fisher_p'])}{_time(f)}" for name, f in rows.items()]
    else:
        lines.append("accuracy of the call (k/n, rate, 95% CI, p against 0.5), sensitivity, specificity, "
                     "AUC of the six-point score [DeLong 95% CI]")
        for name, f in report["readers"].items():
            lines.append(f"  {name:<12} {_proportion(f['accuracy'])} sens {_num(f['sensitivity']['rate'])} "
                         f"spec {_num(f['specificity']['rate'])} AUC {_num(f['auc'])} {_ci(f['auc_ci95'])}{_time(f)}")
        pooled = report["pooled"]["accuracy"]
        lines.append(f"  {'pooled':<12} {pooled['k']:>4}/{pooled['n']:<4} {_num(pooled['rate'])} "
                     f"{_ci(pooled['ci95'])} ({pooled['ci95_method']})")
        lines.append("  an AUC whose CI holds 0.5: the reader could not tell real from synthetic")
    agreement = report["agreement"]
    if agreement:
        kappa = ", ".join(f"{k} {_num(v)}" for k, v in agreement.items() if k.endswith("kappa"))
        lines.append(f"agreement between readers on {agreement['n_items']} items read by all: {kappa}")
    return "\n".join(lines)


def _time(f: dict) -> str:
    if "answered" not in f:
        return ""
    return f"  ({f['answered']}/{f['total']} answered, median {_num(f['median_time_ms'], 0)} ms)"
