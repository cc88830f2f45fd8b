"""AUC, its DeLong variance and 95% CI, the paired DeLong test of two scorers on the same cases, mean/std over
repeats and the mean ROC curve: used by the classifier experiment, the reader study and the membership audit.

Notation: m positive cases with scores X_1..X_m, n negative cases with scores Y_1..Y_n;
psi(x, y) = 1 if x > y, 1/2 if x == y, 0 if x < y. Every function takes `scores` (higher = more positive)
and `labels` (1 positive, 0 negative) as 1-D sequences of the same length.
"""
import math

import numpy as np

from .ranks import mann_whitney_u, midranks

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def _split(scores, labels) -> tuple:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be 1-D and of one length")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError("the AUC needs at least one positive and one negative case")
    return positives, negatives


def auc_mann_whitney(scores, labels) -> float:
    """AUC = U / (m n) = (1 / (m n)) sum_i sum_j psi(X_i, Y_j), computed from ranks:
    U = R_X - m (m + 1) / 2, where R_X is the sum of the positives' midranks among all m + n scores."""
    positives, negatives = _split(scores, labels)
    return mann_whitney_u(positives, negatives) / (len(positives) * len(negatives))


def delong_components(scores, labels) -> tuple:
    """DeLong's structural components in Sun and Xu's (2014) midrank form: with T_Z the midranks of all
    m + n scores, T_X those of the positives among themselves and T_Y those of the negatives among themselves,
        V10_i = (T_Z(X_i) - T_X(X_i)) / n        = (1/n) sum_j psi(X_i, Y_j)   (i = 1..m)
        V01_j = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m    = (1/m) sum_i psi(X_i, Y_j)   (j = 1..n)
    Returns (auc, V10, V01); the AUC is the mean of either component."""
    positives, negatives = _split(scores, labels)
    m, n = len(positives), len(negatives)
    all_ranks = midranks(np.concatenate([positives, negatives]))
    v10 = (all_ranks[:m] - midranks(positives)) / n
    v01 = 1.0 - (all_ranks[m:] - midranks(negatives)) / m
    return float(v10.mean()), v10, v01


def delong_variance(scores, labels) -> float:
    """var(AUC) = S10 / m + S01 / n, with S10 and S01 the sample variances (ddof 1) of V10 and V01
    (DeLong, DeLong and Clarke-Pearson 1988; computed in O(N log N) as in Sun and Xu 2014)."""
    _, v10, v01 = delong_components(scores, labels)
    return float(_sample_var(v10) / len(v10) + _sample_var(v01) / len(v01))


def _sample_var(v: np.ndarray) -> float:
    return float(np.var(v, ddof=1)) if len(v) > 1 else 0.0  # one case of a class: no spread to estimate


def auc_ci95(scores, labels) -> tuple:
    """The AUC's 95% confidence interval: AUC -/+ 1.96 sqrt(var_DeLong), clipped to [0, 1]."""
    auc = auc_mann_whitney(scores, labels)
    half = Z95 * math.sqrt(delong_variance(scores, labels))
    return max(0.0, auc - half), min(1.0, auc + half)


def delong_paired_test(scores_a, scores_b, labels) -> float:
    """Two-sided p of H0: AUC_a = AUC_b, for two scorers of the same cases (DeLong et al. 1988):
        z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab),  p = 2 (1 - Phi(|z|)) = erfc(|z| / sqrt 2),
    where cov_ab = cov(V10_a, V10_b) / m + cov(V01_a, V01_b) / n (sample covariances, ddof 1).
    Identical scorers (variance of the difference 0) give p = 1."""
    auc_a, v10_a, v01_a = delong_components(scores_a, labels)
    auc_b, v10_b, v01_b = delong_components(scores_b, labels)
    # the difference's variance straight from the differences of the components: var(a - b) = var a + var b - 2 cov
    var_diff = _sample_var(v10_a - v10_b) / len(v10_a) + _sample_var(v01_a - v01_b) / len(v01_a)
    if var_diff <= 1e-15:
        return 1.0 if abs(auc_a - auc_b) < 1e-12 else 0.0
    z = (auc_a - auc_b) / math.sqrt(var_diff)
    return math.erfc(abs(z) / math.sqrt(2))


def mean_std(values) -> tuple:
    """(mean, standard deviation with ddof 1) over repeats; the std of a single value is None (undefined)."""
    values = np.asarray(values, dtype=np.float64)
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(values.mean()), std


def roc_curve(scores, labels) -> tuple:
    """False and true positive rates at every threshold, from (0, 0) to (1, 1); tied scores make one step
    (a diagonal segment), so the area under the polyline equals `auc_mann_whitney`."""
    positives, negatives = _split(scores, labels)
    scores = np.concatenate([positives, negatives])
    is_positive = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    tp = np.cumsum(is_positive)[last_of_tie]
    fp = np.cumsum(1 - is_positive)[last_of_tie]
    return np.r_[0.0, fp / len(negatives)], np.r_[0.0, tp / len(positives)]


def mean_roc(curves: list, grid: np.ndarray) -> np.ndarray:
    """Vertical averaging of ROC curves (`roc_curve`'s, one per repeat): each curve's TPR interpolated at the
    FPRs of `grid`, averaged over the curves; the result starts at (0, 0) like every ROC curve (at FPR 0
    np.interp would give a point of the vertical first step). Returns len(grid) + 1 TPRs: 0, then one per FPR."""
    mean = np.mean([np.interp(grid, fpr, tpr, right=1.0) for fpr, tpr in curves], axis=0)
    return np.r_[0.0, mean]
