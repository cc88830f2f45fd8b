"""Midranks and the Mann-Whitney U test as a Z-score: the normal approximation with the tie correction, no continuity
correction (what Meehan, Chaudhuri and Dasgupta's data-copying test C_T averages over cells).

With samples X (m values) and Y (n values), N = m + n, R_X the sum of X's midranks among all N values and
t_k the sizes of the groups of tied values:
    U = R_X - m (m + 1) / 2                     (the number of pairs with X > Y, ties counting 1/2)
    E[U] = m n / 2,   var U = m n / 12 * ((N + 1) - sum_k (t_k^3 - t_k) / (N (N - 1)))
    Z = (U - E[U]) / sqrt(var U)
Z is negative when X tends to be smaller than Y.
"""
import math

import numpy as np


def midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N of `values` where tied values share the mean of their ranks (the midrank)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):  # one run of equal values at a time
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def tie_term(values: np.ndarray) -> float:
    """sum over groups of tied values of (t^3 - t); 0 without ties."""
    _, counts = np.unique(values, return_counts=True)
    counts = counts.astype(np.float64)
    return float((counts ** 3 - counts).sum())


def mann_whitney_u(x, y) -> float:
    """U of X against Y: the pairs (x_i, y_j) with x_i > y_j, ties counting 1/2."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    ranks = midranks(np.concatenate([x, y]))
    return float(ranks[:len(x)].sum() - len(x) * (len(x) + 1) / 2)


def mann_whitney_z(x, y) -> float:
    """The tie-corrected normal-approximation Z of U (see the module's docstring); 0.0 when every value is
    the same (no order, so no evidence either way). Needs at least one value in each sample."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("the Mann-Whitney test needs at least one value in each sample")
    total = m + n
    both = np.concatenate([x, y])
    correction = tie_term(both) / (total * (total - 1)) if total > 1 else 0.0
    variance = m * n / 12 * ((total + 1) - correction)
    if variance <= 0:
        return 0.0
    return (mann_whitney_u(x, y) - m * n / 2) / math.sqrt(variance)
