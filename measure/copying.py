"""The data-copying test C_T of Meehan, Chaudhuri and Dasgupta ("A Non-Parametric Test to Detect Data-Copying in
Generative Models", AISTATS 2020): do generated images lie closer to the training images than held-out real
images of the same kind do?

In Inception pool features (raw, Euclidean, as the paper):
  1. k-means on REAL (the training images) makes K cells; every SYNTH and held-out image joins the cell of its
     nearest centre. Cells keep the test local: a generator that copies one region and misses another would
     average out over the whole space.
  2. Every SYNTH and held-out image gets its distance to its nearest REAL image.
  3. Per cell, the Mann-Whitney Z of {SYNTH distances} against {held-out distances} (stats.ranks): negative when
     SYNTH sits closer to REAL than unseen real images do.
  4. C_T = sum over cells of (the cell's share of REAL) x Z, over the cells holding at least `min_cell` SYNTH and
     held-out images, the shares renormalised over those cells.
C_T < -3: copying; C_T > +3: the generator stays further from REAL than new real images do (underfitting);
between: neither is shown.
"""
from dataclasses import dataclass

import numpy as np

from stats.ranks import mann_whitney_z

COPYING_BELOW, UNDERFITTING_ABOVE = -3.0, 3.0  # the paper's thresholds
REAL_PER_CELL, MAX_CELLS = 20, 20  # the default K: about 20 REAL images per cell, at most 20 cells


def default_cells(n_real: int) -> int:
    return int(min(MAX_CELLS, max(1, round(n_real / REAL_PER_CELL))))


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, float64, never below 0 (round-off)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans(points, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding (Arthur and Vassilvitskii 2007) from one seeded generator:
    the (k, D) centres. An emptied cell is given the point furthest from its centre, so k cells stay k."""
    x = np.asarray(points, dtype=np.float64)
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= {len(x)} points, got k = {k}")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):  # each next centre drawn with probability proportional to its squared distance
        d = squared_distances(x, np.array(centres)).min(1)
        centres.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    centres = np.array(centres)
    labels = None
    for _ in range(iterations):
        d = squared_distances(x, centres)
        new = d.argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                centres[j] = members.mean(0)
            else:
                far = d[np.arange(len(x)), labels].argmax()
                centres[j], labels[far] = x[far], j
    return centres


def nearest(points, centres) -> np.ndarray:
    """Index of the nearest centre (or reference point) of every point."""
    return squared_distances(points, centres).argmin(1)


def nearest_distance(points, reference) -> np.ndarray:
    """Euclidean distance of every point to its nearest reference point."""
    return np.sqrt(squared_distances(points, reference).min(1))


@dataclass
class DataCopying:
    ct: float | None  # None when no cell holds enough SYNTH and held-out images
    k: int
    cells: list  # per cell: n_real, n_synth, n_held_out, z (None where the cell is left out), weight
    synth_distance: np.ndarray  # (n_synth,) each SYNTH image's distance to its nearest REAL image
    held_out_distance: np.ndarray  # (n_held_out,)
    min_cell: int

    @property
    def verdict(self) -> str:
        if self.ct is None:
            return "undetermined"
        if self.ct < COPYING_BELOW:
            return "copying"
        return "underfitting" if self.ct > UNDERFITTING_ABOVE else "neither"

    def explanation(self) -> str:
        """One sentence a non-specialist can act on."""
        if self.ct is None:
            return (f"no cell holds {self.min_cell} synthetic and {self.min_cell} held-out images: give more images, "
                    "fewer --cells or a smaller --min-cell")
        return {
            "copying": "synthetic images lie closer to the training images than unseen real images do: the "
                       "generator copies its training data",
            "underfitting": "synthetic images lie further from the training images than unseen real images do: "
                            "the generator misses the training distribution (no sign of copying)",
            "neither": "synthetic images lie as close to the training images as unseen real images do: no "
                       "evidence of data copying at this sample size",
        }[self.verdict]

    def as_json(self) -> dict:
        return {"ct": self.ct, "k": self.k, "min_cell": self.min_cell, "cells": self.cells, "verdict": self.verdict,
                "explanation": self.explanation(), "n_held_out": int(len(self.held_out_distance)),
                "features": "2048-d pool, Euclidean"}


def data_copying(real, synth, held_out, cells: int | None = None, min_cell: int = 5, seed: int = 0) -> DataCopying:
    """C_T of SYNTH against REAL with the held-out set (rows of pool features each); cells=None: the default K."""
    real, synth, held_out = (np.asarray(a, dtype=np.float64) for a in (real, synth, held_out))
    k = default_cells(len(real)) if cells is None else cells
    centres = kmeans(real, k, seed)
    cell_of = {name: nearest(rows, centres) for name, rows in (("real", real), ("synth", synth),
                                                                ("held_out", held_out))}
    synth_distance, held_out_distance = nearest_distance(synth, real), nearest_distance(held_out, real)
    rows, weighted, weights = [], 0.0, 0.0
    for j in range(k):
        in_synth, in_held = cell_of["synth"] == j, cell_of["held_out"] == j
        row = {"n_real": int((cell_of["real"] == j).sum()), "n_synth": int(in_synth.sum()),
               "n_held_out": int(in_held.sum()), "z": None, "weight": 0.0}
        if row["n_synth"] >= min_cell and row["n_held_out"] >= min_cell:
            row["z"] = mann_whitney_z(synth_distance[in_synth], held_out_distance[in_held])
            weighted += row["n_real"] * row["z"]
            weights += row["n_real"]
        rows.append(row)
    for row in rows:
        if row["z"] is not None:
            row["weight"] = row["n_real"] / weights
    return DataCopying(weighted / weights if weights else None, k, rows, synth_distance, held_out_distance, min_cell)
