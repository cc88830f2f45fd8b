"""The two attacks' numbers and the verdict in words.

Scores are higher for "more likely a member": the loss attack scores -loss (training images are denoised
better; Carlini et al. 2023), the calibrated attack scores reference loss - loss, each image's improvement from
the learned token over a prompt without it (difficulty calibration, Watson et al. 2022): an image that is easy for
the base model anyway is not taken for a member, so what remains is what the embedding itself learned.
Each attack: the AUC with members positive and DeLong's 95% interval, the true-positive rate at a false-positive
rate of 1% and 10% with its counts (Carlini et al. 2022: a leak that exposes a few images with certainty matters
more than the average), and the AUC at every timestep.
"""
import math

import numpy as np

from stats.auc import Z95, auc_ci95, auc_mann_whitney

FPR_TARGETS = (0.01, 0.10)
POWER_Z = 0.8416212335729143  # the normal's 80% quantile: detection with 80% power


def tpr_at_fpr(member_scores, held_out_scores, target: float) -> dict:
    """The highest threshold rule that wrongly flags at most target x (held-out images): flag the images scoring
    above the (k+1)-th highest held-out score, k = floor(target x n). Ties at the threshold are not flagged, so the
    false-positive rate never exceeds the target."""
    members, held = np.asarray(member_scores, float), np.sort(np.asarray(held_out_scores, float))[::-1]
    allowed = int(math.floor(target * len(held) + 1e-9))
    threshold = held[min(allowed, len(held) - 1)] if allowed < len(held) else -np.inf
    true_pos, false_pos = int((members > threshold).sum()), int((held > threshold).sum())
    if allowed == 0:
        note = f"with {len(held)} held-out images {target:.0%} allows no false positive: this is the rate at FPR 0"
    elif allowed == 1:
        note = f"{target:.0%} of {len(held)} held-out images is a single image: this rate rests on one image"
    else:
        note = f"{target:.0%} of {len(held)} held-out images is {allowed} images"
    return {"fpr_target": target, "tpr": true_pos / len(members), "fpr": false_pos / len(held),
            "true_positives": true_pos, "n_members": len(members), "false_positives": false_pos,
            "n_held_out": len(held), "threshold": float(threshold), "note": note}


def attack_numbers(member_scores, held_out_scores, per_timestep: dict) -> dict:
    """member_scores / held_out_scores: (m,) and (n,); per_timestep: {t: (member scores, held-out scores)}."""
    scores = np.concatenate([member_scores, held_out_scores])
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(held_out_scores))]
    low, high = auc_ci95(scores, labels)
    return {"auc": auc_mann_whitney(scores, labels), "ci95": [low, high],
            "tpr_at_fpr": [tpr_at_fpr(member_scores, held_out_scores, f) for f in FPR_TARGETS],
            "auc_per_timestep": {str(t): auc_mann_whitney(np.concatenate(pair), labels)
                                 for t, pair in per_timestep.items()}}


def detectable_auc(m: int, n: int) -> float:
    """The smallest true AUC this audit finds (95% interval above 0.5) with 80% power, from Hanley and McNeil's
    (1982) variance of an AUC: A - 0.5 >= (1.96 + 0.84) SE(A)."""
    for auc in np.arange(0.5, 1.0, 0.005):
        q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
        var = (auc * (1 - auc) + (m - 1) * (q1 - auc ** 2) + (n - 1) * (q2 - auc ** 2)) / (m * n)
        if auc - 0.5 >= (Z95 + POWER_Z) * math.sqrt(max(var, 0.0)):
            return float(round(auc, 3))
    return 1.0


def verdict(loss: dict, calibrated: dict, m: int, n: int) -> dict:
    """What to do, in words, from the calibrated attack first (what the embedding learned), the loss attack second."""
    auc, (low, high) = calibrated["auc"], calibrated["ci95"]
    said = f"the calibrated attack tells members from held-out images with AUC {auc:.2f} [{low:.2f}, {high:.2f}]"
    need = detectable_auc(m, n)
    size = (f"with {m} members and {n} held-out images the audit finds a leak of AUC {need:.2f} or more with 80% "
            f"power; the lowest false-positive rate it can measure is 1/{n}")
    if low > 0.5:
        level = "leak"
        words = (f"{said}: this embedding memorised its training images; someone holding the model and this file "
                 "can tell which images were used to train it. Do not share it as it is: train with fewer vectors "
                 "or steps, or more images, and run the audit again")
    elif high < 0.5:
        level = "reversed"
        words = (f"{said}: the members look LESS like training images than the held-out ones, which an honest "
                 "split does not give; check that --members holds the training images and --held-out images of "
                 "the same kind")
    elif loss["ci95"][0] > 0.5:
        level = "no evidence"
        words = (f"{said}: no evidence that the embedding memorised its images, but the plain loss attack "
                 f"separates them (AUC {loss['auc']:.2f}): the members are easier images for the base model, so the "
                 "two folders differ in kind; check that the held-out images come from the same source")
    else:
        level = "no evidence"
        words = (f"{said}: no evidence of membership leakage at this sample size (which does not prove there "
                 "is none)")
    return {"level": level, "text": f"{words}. {size[0].upper()}{size[1:]}.", "detectable_auc": need}
