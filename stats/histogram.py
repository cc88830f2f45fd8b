"""Histograms of samples compared on one axis (members against held-out scores, synthetic against held-out
distances): common bins, each sample's counts as shares of its own size, so that sets of different sizes draw
curves of comparable height."""
import math

import numpy as np


def shared_histograms(samples: list, max_bins: int) -> tuple:
    """(edges (bins + 1,), [shares (bins,) of each sample]) on bins spanning every sample's values (numpy widens a
    single value to +-0.5), about sqrt(all values) of them, from 5 to `max_bins`."""
    samples = [np.asarray(s, dtype=np.float64).ravel() for s in samples]
    together = np.concatenate(samples)
    edges = np.histogram_bin_edges(together, bins=max(5, min(max_bins, int(math.sqrt(len(together))))))
    return edges, [np.histogram(s, bins=edges)[0] / max(1, len(s)) for s in samples]
