"""The reader study's statistics against independent computations: the exact binomial test and the
Clopper-Pearson interval from their definitions (scipy as a second oracle), kappa from its definition and a
published example, Fisher's exact test, the two-way bootstrap, and the study's AUC against brute force."""
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as scipy_stats

from stats.agreement import cohen_kappa, fisher_exact, fleiss_kappa, two_way_bootstrap
from stats.auc import auc_mann_whitney
from stats.binomial import binomial_test, clopper_pearson, exact_power, proportion
from reader_study.readings import Reading
from reader_study.report import real_or_synthetic_reader


def exact_pmf(i, n, p) -> Fraction:
    return math.comb(n, i) * Fraction(p) ** i * (1 - Fraction(p)) ** (n - i)


def test_the_papers_36_of_50():
    """The paper's radiologist preferred the diffusion model in 36 of 50 pairs: p = 0.0026."""
    p = binomial_test(36, 50)
    assert round(p, 4) == 0.0026
    # the definition in exact rational arithmetic: for p0 = 1/2 the outcomes as unlikely as 36 are <= 14 and >= 36
    exact = sum(exact_pmf(i, 50, Fraction(1, 2)) for i in itertools.chain(range(15), range(36, 51)))
    assert p == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("k, n, p0", [(0, 1, 0.5), (3, 10, 0.5), (7, 9, 0.3), (13, 40, 0.25), (50, 50, 0.5)])
def test_binomial_test_from_its_definition(k, n, p0):
    pmf = [exact_pmf(i, n, Fraction(p0).limit_denominator(1000)) for i in range(n + 1)]
    exact = sum(q for q in pmf if q <= pmf[k] * Fraction(10**7 + 1, 10**7))
    assert binomial_test(k, n, p0) == pytest.approx(float(exact), rel=1e-9, abs=1e-15)
    assert binomial_test(k, n, p0) == pytest.approx(scipy_stats.binomtest(k, n, p0).pvalue, rel=1e-9)


@pytest.mark.parametrize("k, n", [(0, 5), (1, 5), (36, 50), (49, 50), (50, 50), (7, 300)])
def test_clopper_pearson_from_its_definition(k, n):
    lower, upper = clopper_pearson(k, n)
    # the definition: the tails equal alpha/2 = 0.025 at the bounds
    if k > 0:
        assert float(sum(exact_pmf(i, n, Fraction(lower)) for i in range(k, n + 1))) == pytest.approx(0.025, abs=1e-9)
    else:
        assert lower == 0.0
    if k < n:
        assert float(sum(exact_pmf(i, n, Fraction(upper)) for i in range(k + 1))) == pytest.approx(0.025, abs=1e-9)
    else:
        assert upper == 1.0
    # the beta quantiles
    assert lower == pytest.approx(scipy_stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0, abs=1e-9)
    assert upper == pytest.approx(scipy_stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0, abs=1e-9)


def test_power_of_50_pairs_at_70_percent():
    """docs/study.md: with 50 pairs a true 70% preference is found at the 5% level with power about 0.78."""
    region = [k for k in range(51) if scipy_stats.binomtest(k, 50).pvalue <= 0.05]
    brute = scipy_stats.binom.pmf(region, 50, 0.7).sum()
    assert exact_power(50, 0.7) == pytest.approx(brute, rel=1e-9)
    assert round(exact_power(50, 0.7), 2) == 0.78


def test_proportion_of_nothing_reports_none():
    assert proportion(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": None, "p_value": None}


def test_cohen_kappa_from_its_definition():
    first = ["y", "y", "n", "n", "y", "n", "y", "y", "n", "y"]
    second = ["y", "n", "n", "n", "y", "n", "y", "n", "y", "y"]
    # 2x2 table: yy = 4, yn = 2, ny = 1, nn = 3 -> p_o = 0.7, p_e = 0.6*0.5 + 0.4*0.5 = 0.5, kappa = 0.4
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa(first, first) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None


def test_fleiss_kappa_of_fleiss_example():
    """The worked example of Fleiss' kappa (10 cases, 14 raters, 5 categories): kappa = 0.210."""
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    calls = [[c for c, n in enumerate(row) for _ in range(n)] for row in counts]
    assert fleiss_kappa(calls) == pytest.approx(0.20993, abs=1e-4)


def test_fisher_exact_against_hypergeometric_sum_and_scipy():
    for table in ([[8, 2], [1, 5]], [[3, 1], [1, 3]], [[10, 0], [0, 10]], [[5, 5], [5, 5]], [[0, 7], [2, 1]]):
        (a, b), (c, d) = table
        probabilities = [math.comb(a + b, x) * math.comb(c + d, a + c - x) for x in range(0, a + c + 1)
                         if 0 <= a + c - x <= c + d and x <= a + b]
        observed = math.comb(a + b, a) * math.comb(c + d, c)
        exact = Fraction(sum(q for q in probabilities if q <= observed), math.comb(a + b + c + d, a + c))
        assert fisher_exact(table) == pytest.approx(float(exact), rel=1e-9)
        assert fisher_exact(table) == pytest.approx(scipy_stats.fisher_exact(table).pvalue, rel=1e-9)


def test_two_way_bootstrap():
    assert two_way_bootstrap(np.full((3, 5), 0.7), reps=50) == pytest.approx([0.7, 0.7])
    rng = np.random.default_rng(0)
    matrix = (rng.random((4, 40)) < 0.75).astype(float)
    matrix[0, :5] = np.nan  # a reader who has not finished
    ci = two_way_bootstrap(matrix, reps=500, seed=1)
    assert ci == two_way_bootstrap(matrix, reps=500, seed=1)  # seeded
    assert ci[0] < np.nanmean(matrix) < ci[1] and ci[1] - ci[0] < 0.4
    # resampling readers as well as images: wider than resampling images alone when readers differ
    spread = np.array([[1.0] * 20, [0.0] * 20])
    assert two_way_bootstrap(spread, reps=500)[1] - two_way_bootstrap(spread, reps=500)[0] > 0.5


def test_study_auc_equals_brute_force_mann_whitney():
    rng = np.random.default_rng(3)
    truths = ["synthetic"] * 12 + ["real"] * 15
    scores = [int(rng.integers(3, 7)) if t == "synthetic" else int(rng.integers(1, 5)) for t in truths]
    readings = [Reading("r", i, i, "", "", "", s, t, t, "", 100, "") for i, (s, t) in enumerate(zip(scores, truths))]
    figures = real_or_synthetic_reader(readings)
    positives = [s for s, t in zip(scores, truths) if t == "synthetic"]
    negatives = [s for s, t in zip(scores, truths) if t == "real"]
    brute = sum((x > y) + 0.5 * (x == y) for x in positives for y in negatives) / (len(positives) * len(negatives))
    assert figures["auc"] == pytest.approx(brute) == pytest.approx(auc_mann_whitney(scores, [t == "synthetic" for t in truths]))
    correct = sum((s >= 4) == (t == "synthetic") for s, t in zip(scores, truths))
    assert figures["accuracy"]["k"] == correct and figures["accuracy"]["n"] == 27
    assert figures["sensitivity"]["k"] == sum(s >= 4 for s in positives)
    assert figures["specificity"]["k"] == sum(s <= 3 for s in negatives)
    assert figures["auc_ci95"][0] < figures["auc"] < figures["auc_ci95"][1]
