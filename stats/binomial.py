"""The exact binomial test, the Clopper-Pearson interval and the exact test's power: the statistics of a
two-alternative forced choice (the paper's reader preferred one model in 36 of 50 pairs) and of any
proportion a reader study reports.

Everything is computed from the binomial probabilities P(X = i) = C(n, i) p^i (1 - p)^(n - i) in log space
(no scipy at run time); the Clopper-Pearson bounds are the p at which a tail probability equals alpha / 2,
found by bisection (the tails are monotone in p), which is the beta-quantile definition.
"""
import math

RELATIVE_TIE = 1 + 1e-7  # outcomes as likely as the observed one, up to rounding, count as "as extreme"


def binomial_pmf(i: int, n: int, p: float) -> float:
    """P(X = i) for X ~ Binomial(n, p)."""
    if p <= 0.0 or p >= 1.0:
        return float(i == (0 if p <= 0.0 else n))
    log = (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
           + i * math.log(p) + (n - i) * math.log1p(-p))
    return math.exp(log)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, math.fsum(binomial_pmf(i, n, p) for i in range(k + 1)))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, math.fsum(binomial_pmf(i, n, p) for i in range(k, n + 1)))


def _check(k: int, n: int) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")


def binomial_test(k: int, n: int, p0: float = 0.5) -> float:
    """Two-sided exact p of H0: p = p0 after k successes in n trials: the total probability under H0 of every
    outcome no more likely than the observed one (the 'minimum likelihood' rule of R's binom.test and scipy's
    binomtest). 36 of 50 against 0.5 gives 0.0026."""
    _check(k, n)
    observed = binomial_pmf(k, n, p0)
    pmf = [binomial_pmf(i, n, p0) for i in range(n + 1)]
    return min(1.0, math.fsum(q for q in pmf if q <= observed * RELATIVE_TIE))


def _bisect(f, target: float, increasing: bool) -> float:
    """The p in [0, 1] with f(p) = target for a monotone f, to 1e-12."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple:
    """The exact (Clopper-Pearson) interval of a proportion: the lower bound is the p with P(X >= k | p) =
    alpha / 2 (0 when k = 0), the upper the p with P(X <= k | p) = alpha / 2 (1 when k = n); equivalently the
    alpha/2 quantile of Beta(k, n - k + 1) and the 1 - alpha/2 quantile of Beta(k + 1, n - k)."""
    _check(k, n)
    tail = (1 - confidence) / 2
    lower = 0.0 if k == 0 else _bisect(lambda p: binomial_sf(k, n, p), tail, increasing=True)
    upper = 1.0 if k == n else _bisect(lambda p: binomial_cdf(k, n, p), tail, increasing=False)
    return lower, upper


def rejection_region(n: int, p0: float = 0.5, alpha: float = 0.05) -> list:
    """The outcomes k of n for which the two-sided exact test rejects H0: p = p0 at level alpha."""
    return [k for k in range(n + 1) if binomial_test(k, n, p0) <= alpha]


def exact_power(n: int, p_true: float, p0: float = 0.5, alpha: float = 0.05) -> float:
    """The chance that the two-sided exact binomial test rejects H0: p = p0 at level alpha when the true rate is
    p_true: the sum of P(X = k | p_true) over the rejection region. 50 pairs at a true 70% give about 0.78."""
    return min(1.0, math.fsum(binomial_pmf(k, n, p_true) for k in rejection_region(n, p0, alpha)))


def proportion(k: int, n: int, p0: float = 0.5) -> dict:
    """k of n with its rate, Clopper-Pearson 95% interval and the exact two-sided p against p0; a proportion of
    nothing (n = 0) has every figure None, so a partial study still reports."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": None, "p_value": None}
    return {"k": k, "n": n, "rate": k / n, "ci95": list(clopper_pearson(k, n)), "p_value": binomial_test(k, n, p0)}
