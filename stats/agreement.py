"""Agreement between readers (Cohen's and Fleiss' kappa), Fisher's exact test of two proportions, and a
two-way bootstrap over readers and cases: the figures a multi-reader study reports besides each reader's own.
"""
import math

import numpy as np


def cohen_kappa(first, second) -> float | None:
    """Cohen's kappa of two readers' calls on the same cases: (p_o - p_e) / (1 - p_e), p_o the share of cases
    they agree on, p_e the agreement expected by chance from each reader's own category shares. None when
    chance agreement is already perfect (both readers gave one and the same category throughout)."""
    first, second = list(first), list(second)
    if len(first) != len(second) or not first:
        raise ValueError("Cohen's kappa needs two equally long, non-empty lists of calls")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    categories = set(first) | set(second)
    expected = sum((first.count(c) / n) * (second.count(c) / n) for c in categories)
    return None if expected >= 1.0 else (observed - expected) / (1 - expected)


def fleiss_kappa(calls) -> float | None:
    """Fleiss' kappa of R >= 2 readers on N cases; `calls[i]` holds the R calls on case i. With n_ij the number
    of readers who put case i in category j: P_i = (sum_j n_ij^2 - R) / (R (R - 1)), P_bar their mean,
    p_j = sum_i n_ij / (N R), P_e = sum_j p_j^2, kappa = (P_bar - P_e) / (1 - P_e). None when P_e = 1."""
    calls = [list(c) for c in calls]
    if not calls or len({len(c) for c in calls}) != 1 or len(calls[0]) < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of calls on each of >= 1 cases")
    readers = len(calls[0])
    categories = sorted({c for case in calls for c in case}, key=str)
    counts = np.array([[case.count(c) for c in categories] for case in calls], dtype=np.float64)  # (N, J)
    p_case = ((counts ** 2).sum(axis=1) - readers) / (readers * (readers - 1))
    shares = counts.sum(axis=0) / counts.sum()
    p_expected = float((shares ** 2).sum())
    if p_expected >= 1.0:
        return None
    return float((p_case.mean() - p_expected) / (1 - p_expected))


def _log_hypergeometric(a: int, row1: int, row2: int, col1: int) -> float:
    """log P(top-left cell = a) of a 2x2 table with fixed margins (rows row1, row2; first column col1)."""
    def log_comb(n, k):
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return log_comb(row1, a) + log_comb(row2, col1 - a) - log_comb(row1 + row2, col1)


def fisher_exact(table) -> float:
    """Two-sided p of Fisher's exact test on the 2x2 table [[a, b], [c, d]] (rows: groups; columns: yes, no):
    the probability, given the margins, of every table no more likely than the observed one."""
    (a, b), (c, d) = [[int(x) for x in row] for row in table]
    row1, row2, col1 = a + b, c + d, a + c
    if min(a, b, c, d) < 0:
        raise ValueError("a 2x2 table of counts cannot hold negative numbers")
    low, high = max(0, col1 - row2), min(row1, col1)
    observed = _log_hypergeometric(a, row1, row2, col1)
    probabilities = [_log_hypergeometric(x, row1, row2, col1) for x in range(low, high + 1)]
    p = math.fsum(math.exp(q) for q in probabilities if q <= observed + 1e-7)
    return min(1.0, p)


def two_way_bootstrap(matrix, reps: int = 2000, seed: int = 0, confidence: float = 0.95) -> list | None:
    """Percentile interval of the mean of a (readers, cases) matrix (NaN where a reader has not read a case)
    when both readers and cases are resampled with replacement, each replicate drawing R readers and N cases
    independently: the spread then holds both the readers' and the cases' variability. None when the matrix
    holds no value."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or not np.isfinite(matrix).any():
        return None
    rng = np.random.default_rng(seed)
    readers, cases = matrix.shape
    means = []
    for _ in range(reps):
        sample = matrix[rng.integers(0, readers, readers)][:, rng.integers(0, cases, cases)]
        if np.isfinite(sample).any():
            means.append(np.nanmean(sample))
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
