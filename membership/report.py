"""What privacy.py writes: scores.csv (every image's losses, the one source of the numbers), membership.json and
membership.png (per token: both attacks' score histograms, members against held-out, and their ROC curves)."""
import csv
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mini_ldm.images import font
from mini_ldm.io import write_image_atomic, write_text_atomic
from stats.auc import roc_curve
from stats.histogram import shared_histograms

from .attacks import attack_numbers, verdict

MEMBER, HELD_OUT = (214, 39, 40), (31, 119, 180)  # red, blue
PANEL = (380, 300)


@dataclass
class Scores:
    """One token's per-image losses: members first, then held-out images."""
    token: str
    names: list  # each image's path relative to its folder
    member: np.ndarray  # (N,) bool
    loss: np.ndarray  # (N, T): mean over the draws at each timestep, the learned token in the prompt
    reference: np.ndarray  # (N, T): the same with the reference text in its place
    timesteps: list

    def attack_scores(self) -> dict:
        """{attack: ((N,) score, {timestep: (N,) score})}; higher = more likely a member."""
        per_t = lambda values: {t: values[:, k] for k, t in enumerate(self.timesteps)}  # noqa: E731
        return {"loss": (-self.loss.mean(1), per_t(-self.loss)),
                "calibrated": (self.reference.mean(1) - self.loss.mean(1), per_t(self.reference - self.loss))}


def results(scores: Scores, details: dict) -> dict:
    """One token's entry of membership.json: both attacks' numbers and the verdict."""
    attacks = {}
    for name, (overall, per_t) in scores.attack_scores().items():
        split = lambda s: (s[scores.member], s[~scores.member])  # noqa: E731
        attacks[name] = attack_numbers(*split(overall), {t: split(s) for t, s in per_t.items()})
    m, n = int(scores.member.sum()), int((~scores.member).sum())
    return {"token": scores.token, **details, "n_members": m, "n_held_out": n, "attacks": attacks,
            "verdict": verdict(attacks["loss"], attacks["calibrated"], m, n)}


def csv_columns(timesteps: list) -> list:
    return (["token", "file", "member", "loss", "reference_loss", "calibrated"]
            + [f"loss_t{t}" for t in timesteps] + [f"calibrated_t{t}" for t in timesteps])


def write_scores_csv(path, all_scores: list) -> None:
    """One row per image and token; numbers written exactly (repr), so the AUCs recomputed from this file equal
    membership.json's."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(csv_columns(all_scores[0].timesteps))
    for s in all_scores:
        loss, ref = s.loss.mean(1), s.reference.mean(1)
        for k, name in enumerate(s.names):
            per_t = [repr(float(v)) for v in s.loss[k]] + [repr(float(v)) for v in s.reference[k] - s.loss[k]]
            out.writerow([s.token, name, int(s.member[k]), repr(float(loss[k])), repr(float(ref[k])),
                          repr(float(ref[k] - loss[k])), *per_t])
    write_text_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------- the picture

def _frame(draw, box, title: str, x_label: str, y_label: str) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline="black")
    draw.text((left, top - 36), title, fill="black", font=font(13))
    draw.text(((left + right) / 2, bottom + 20), x_label, fill="black", font=font(11), anchor="mt")
    draw.text((left - 4, top), y_label, fill="black", font=font(11), anchor="ra")


def _histogram(draw, box, members, held, title: str) -> None:
    """Both sets' score histograms as outlines, each normalised to its own count."""
    left, top, right, bottom = box
    edges, shares = shared_histograms([members, held], max_bins=30)
    peak = max(float(s.max()) for s in shares) or 1.0
    _frame(draw, box, title, "score (higher = more like a member)", "")
    xs = np.linspace(left, right, len(edges))
    for colour, share in zip((MEMBER, HELD_OUT), shares):
        points = [(left, bottom)]
        for k, s in enumerate(share):
            y = bottom - s / peak * (bottom - top - 4)
            points += [(xs[k], y), (xs[k + 1], y)]
        draw.line(points + [(right, bottom)], fill=colour, width=2)
    for x, v in ((left, edges[0]), (right, edges[-1])):
        draw.text((x, bottom + 4), f"{v:.3g}", fill="black", font=font(11), anchor="mt")
    draw.text((left, top - 16), f"members ({len(members)})", fill=MEMBER, font=font(11))  # above the plot
    draw.text((left + 110, top - 16), f"held-out ({len(held)})", fill=HELD_OUT, font=font(11))


def _roc(draw, box, curves: dict) -> None:
    left, top, right, bottom = box
    _frame(draw, box, "ROC, members positive: AUC [95% CI]", "false-positive rate", "TPR")
    draw.line([(left, bottom), (right, top)], fill=(170, 170, 170))
    for k, (label, (fpr, tpr)) in enumerate(curves.items()):
        colour = [(0, 0, 0), (44, 160, 44)][k]
        draw.line([(left + f * (right - left), bottom - t * (bottom - top)) for f, t in zip(fpr, tpr)],
                  fill=colour, width=2)
        draw.text((left + 140 * k, top - 16), label, fill=colour, font=font(11))  # above the plot


def membership_figure(all_scores: list, entries: list) -> Image.Image:
    """One row per token: the loss attack's and the calibrated attack's histograms, then both ROC curves."""
    width, height = PANEL[0] * 3, PANEL[1] * len(all_scores)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for row, (s, entry) in enumerate(zip(all_scores, entries)):
        y0 = row * PANEL[1]
        curves = {}
        for col, (name, (overall, _)) in enumerate(s.attack_scores().items()):
            a = entry["attacks"][name]
            box = (col * PANEL[0] + 50, y0 + 56, (col + 1) * PANEL[0] - 20, y0 + PANEL[1] - 50)
            _histogram(draw, box, overall[s.member], overall[~s.member], f"{s.token}: {name} attack")
            labels = s.member.astype(int)
            curves[f"{name} {a['auc']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]"] = roc_curve(overall, labels)
        _roc(draw, (2 * PANEL[0] + 50, y0 + 56, 3 * PANEL[0] - 20, y0 + PANEL[1] - 50), curves)
    return image


def write_membership_png(path, all_scores: list, entries: list) -> None:
    write_image_atomic(path, membership_figure(all_scores, entries))
