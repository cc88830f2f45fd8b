"""The phantom model's honesty checks: the finding detectors on labelled phantoms, then (below) the model.

Every tolerance here was written down before the numbers were looked at.
"""
import numpy as np
import pytest

from readers.chest_findings import chest_case, chest_cases
from readers.findings import measure

DETECTOR_CASES = 300  # labelled phantoms the detectors are scored on (seed 7, the generator's own rates)


@pytest.fixture(scope="module")
def scored():
    return [(truth, measure(image)) for image, truth in chest_cases(seed=7, count=DETECTOR_CASES)]


def test_effusion_detector_is_right_per_side_on_97_percent(scored):
    for side in ("left", "right"):
        right = np.mean([getattr(t, f"effusion_{side}") == getattr(m, f"effusion_{side}") for t, m in scored])
        assert right >= 0.97, (side, right)


def test_cardiothoracic_ratio_within_002_and_cardiomegaly_right_on_97_percent(scored):
    errors = np.array([abs(t.ctr - m.ctr) for t, m in scored])
    assert errors.mean() <= 0.02, errors.mean()
    assert np.mean([t.cardiomegaly == m.cardiomegaly for t, m in scored]) >= 0.97


def test_nodule_detector_sensitivity_90_specificity_95_percent(scored):
    with_nodule = [m.nodule for t, m in scored if t.nodule]
    without = [not m.nodule for t, m in scored if not t.nodule]
    assert len(with_nodule) >= 50 and len(without) >= 50
    assert np.mean(with_nodule) >= 0.9, np.mean(with_nodule)
    assert np.mean(without) >= 0.95, np.mean(without)


def test_side_convention_patient_left_is_image_right():
    image, truth = chest_case(np.random.default_rng(3), effusion="left", cardiomegaly=False, nodule=False)
    pixels = np.asarray(image, dtype=float)
    lower = slice(int(0.66 * 128), int(0.76 * 128))  # the lung bases' rows
    assert pixels[lower, 64:].mean() > pixels[lower, :64].mean() + 20  # fluid is brighter than air: image right
    assert truth.caption == "chest radiograph, left pleural effusion"
