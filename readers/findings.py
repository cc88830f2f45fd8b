"""Analytic finding detectors for the chest phantoms of readers/chest_findings.py: pixels -> measured findings.

They read any grey or RGB image of the phantom family (a generated one as much as a drawn one), so a model's
samples can be scored by the same rules as its training images. Sides are the patient's: the patient's left is
on the image's right (radiological convention, as in chest_findings.py).

  lungs      dark pixels inside the body: darker than halfway between the lung's level and the body's
  effusion   per side: the lung's dark height over the body's width falls below EFFUSION_BELOW (fluid fills the
             base; the apex stays, so the lung looks short)
  CTR        the widest gap between the two lungs' inner edges in the heart's rows, over the widest span of
             the lungs' outer edges
  nodule     a bright spot (3x3 mean) above its surrounding ring (15x15 box minus 7x7) inside the lung
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image

EFFUSION_BELOW = 0.62  # lung height / body width; the generator's normals measure 0.65-0.71, effusions below 0.58
CARDIOMEGALY_ABOVE = 0.5  # the CTR cut-off radiologists use; the generator leaves 0.46-0.54 empty
NODULE_ABOVE = 0.3  # spot-over-ring contrast, in units of (soft tissue - background)
RING_LUNG_SHARE = 0.6  # a spot counts only where at least this share of its ring is lung
HEART_ROWS = (0.38, 0.72)  # the band of rows (fractions of the height) searched for the heart's width


@dataclass(frozen=True)
class Measured:
    lung_height_left: float  # the patient's left lung (image right), over the body width
    lung_height_right: float
    ctr: float
    nodule_score: float

    @property
    def effusion_left(self) -> bool:
        return self.lung_height_left < EFFUSION_BELOW

    @property
    def effusion_right(self) -> bool:
        return self.lung_height_right < EFFUSION_BELOW

    @property
    def cardiomegaly(self) -> bool:
        return self.ctr > CARDIOMEGALY_ABOVE

    @property
    def nodule(self) -> bool:
        return self.nodule_score > NODULE_ABOVE


def measure(image: Image.Image) -> Measured:
    grey = _box_mean(np.asarray(image.convert("L"), dtype=np.float64) / 255, 3)
    dark, bright = np.percentile(grey, 5), np.percentile(grey, 85)
    body, lung = _body_and_lung(grey, (dark + bright) / 2)
    if lung.any():  # again, halfway between the lung's own level and the body's: edges where they lie
        body, lung = _body_and_lung(grey, (np.median(grey[lung]) + np.median(grey[body])) / 2)
    half = grey.shape[1] // 2
    body_width = max(1, int(_row_spans(body).max()))
    heights = [_height(lung[:, half:]) / body_width, _height(lung[:, :half]) / body_width]  # patient left, right
    contrast = max(bright - dark, 1e-6)
    return Measured(heights[0], heights[1], _ctr(lung, half), _nodule_score(grey, lung, contrast))


def _body_and_lung(grey: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    body = grey > threshold
    return body, (grey <= threshold) & _inside_rows(body)


def _box_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over the k x k box around each pixel (edges repeated), by an integral image."""
    pad = k // 2
    padded = np.pad(a, pad, mode="edge")
    s = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = a.shape
    return (s[k:k + h, k:k + w] - s[:h, k:k + w] - s[k:k + h, :w] + s[:h, :w]) / (k * k)


def _row_ends(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: whether it holds a True pixel, the first True column and the last (meaningless for empty rows)."""
    return mask.any(1), mask.argmax(1), mask.shape[1] - 1 - mask[:, ::-1].argmax(1)


def _inside_rows(mask: np.ndarray) -> np.ndarray:
    """Each row filled from its first to its last True pixel: the body's inside, lungs included."""
    cols = np.arange(mask.shape[1])
    any_, first, last = _row_ends(mask)
    first, last = np.where(any_, first, mask.shape[1]), np.where(any_, last, -1)
    return (cols >= first[:, None]) & (cols <= last[:, None]) & ~mask


def _row_spans(mask: np.ndarray) -> np.ndarray:
    """Per row, last True column - first True column + 1 (0 for empty rows)."""
    any_, first, last = _row_ends(mask)
    return np.where(any_, last - first + 1, 0)


def _height(lung_half: np.ndarray, min_pixels: int = 3) -> int:
    """The longest run of consecutive rows holding lung: a stray dark speck at the body's edge is no lung."""
    longest = run = 0
    for present in lung_half.sum(1) >= min_pixels:
        run = run + 1 if present else 0
        longest = max(longest, run)
    return longest


def _ctr(lung: np.ndarray, half: int) -> float:
    """The widest gap between the lungs' inner edges in the heart's rows, over the lungs' widest outer span."""
    h = lung.shape[0]
    any_left, _, inner_left = _row_ends(lung[:, :half])  # inner edges: the image-left lung's rightmost pixel
    any_right, first_right, _ = _row_ends(lung[:, half:])  # ... and the image-right lung's leftmost
    both, inner_right = any_left & any_right, half + first_right
    rows = np.arange(h)
    band = both & (rows >= HEART_ROWS[0] * h) & (rows <= HEART_ROWS[1] * h)
    if not band.any():
        return 0.0
    heart = (inner_right - inner_left - 1)[band].max()
    return float(heart / max(1, _row_spans(lung).max()))


def _ring_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the 15x15 box around each pixel minus its inner 7x7 box: a spot's surroundings."""
    return (_box_mean(a, 15) * 225 - _box_mean(a, 7) * 49) / (225 - 49)


def _nodule_score(grey: np.ndarray, lung: np.ndarray, contrast: float) -> float:
    spot, ring, ring_lung = _box_mean(grey, 3), _ring_mean(grey), _ring_mean(lung.astype(float))
    score = np.where(ring_lung >= RING_LUNG_SHARE, (spot - ring) / contrast, -np.inf)
    return float(score.max()) if np.isfinite(score.max()) else 0.0
