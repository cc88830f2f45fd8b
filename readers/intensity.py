"""Intensity -> 8-bit display values: min-max, percentiles, a window, z-scores.

Every method is the same linear map from a value range [lo, hi] onto [0, 1], clipped, only the
range differs, so one function (`to_uint8`) does the arithmetic for all of them. The window is the
DICOM standard's linear VOI function, `((x - (c - 0.5)) / (w - 1) + 0.5)` clipped to [0, 1], whose
range is [c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2].
"""
from dataclasses import dataclass

import numpy as np

from mini_ldm.errors import UserError

ZSCORE_SPAN = 3.0  # zscore maps mean - 3 std .. mean + 3 std onto 0..255
METHODS = "minmax, percentile:LO,HI, window:CENTER,WIDTH or zscore"


@dataclass(frozen=True)
class Normalization:
    kind: str  # "minmax", "percentile", "window", "zscore"
    a: float = 0.0  # percentile LO or window centre
    b: float = 0.0  # percentile HI or window width

    def __str__(self) -> str:  # the spelling --normalize accepts, written to metadata.csv
        if self.kind in ("percentile", "window"):
            return f"{self.kind}:{self.a:g},{self.b:g}"
        return self.kind


def parse_normalization(text: str) -> Normalization:
    """'minmax' | 'percentile:1,99' | 'window:40,400' | 'zscore' -> Normalization; UserError otherwise."""
    kind, _, params = text.partition(":")
    if kind in ("minmax", "zscore") and not params:
        return Normalization(kind)
    if kind in ("percentile", "window"):
        try:
            a, b = (float(v) for v in params.split(","))
        except ValueError:
            a = b = float("nan")
        if kind == "percentile" and 0 <= a < b <= 100:
            return Normalization(kind, a, b)
        if kind == "window" and np.isfinite(a) and b >= 1:
            return Normalization(kind, a, b)
    raise UserError(f"--normalize {text}: use {METHODS} (percentiles 0 <= LO < HI <= 100, window width >= 1)")


def value_range(norm: Normalization, values: np.ndarray) -> tuple[float, float]:
    """The [lo, hi] that maps onto 0..255, from the finite values of a whole volume or image."""
    if norm.kind == "window":
        lo = norm.a - 0.5 - (norm.b - 1) / 2
        return lo, lo + norm.b - 1
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    if norm.kind == "minmax":
        return float(finite.min()), float(finite.max())
    if norm.kind == "percentile":
        lo, hi = np.percentile(finite, [norm.a, norm.b])
        return float(lo), float(hi)
    mean, std = float(finite.mean()), float(finite.std())
    return mean - ZSCORE_SPAN * std, mean + ZSCORE_SPAN * std


def to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] onto [0, 1], clipped; NaN (outside the scan) becomes 0, i.e. black.
    An empty range (a constant image, a window of width 1) is a threshold at lo."""
    values = np.asarray(values, dtype=np.float64)
    if hi > lo:
        unit = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    else:
        unit = (values > lo).astype(np.float64)
    return np.nan_to_num(unit, nan=0.0)


def unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return unit_to_uint8(to_unit(values, lo, hi))
