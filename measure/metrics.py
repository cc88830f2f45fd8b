"""FID, KID, Inception Score and the nearest-neighbour memorisation audit, on feature matrices.

Everything is computed in float64, and each function follows torchmetrics' definition (FrechetInceptionDistance,
KernelInceptionDistance, InceptionScore) so that the numbers agree with it given the same features:
- FID: sample covariances (n - 1), trace of sqrt(sigma1 sigma2) from eigenvalues (see `fid`);
- KID: unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over random subsets drawn as torchmetrics draws
  them (a permutation of the real set, then of the synthetic set, per subset); std over subsets without Bessel;
- IS: softmax of the 1008 bias-free logits (all classes kept), one random permutation, `torch.chunk` splits,
  exp(mean KL(p(y|x) || p(y))) per split; std over splits with Bessel.
Random draws use their own seeded generator: the same seed gives the same subsets as torchmetrics after
`torch.manual_seed(seed)`, and nothing here touches the global random state.
"""
import math
from dataclasses import dataclass

import torch


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)


def gaussian_stats(features) -> tuple:
    """Mean (D,) and sample covariance (D, D) of (N, D) features, float64."""
    x = _f64(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least two feature vectors for a covariance, got shape {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> float:
    """tr(sqrt(sigma1 @ sigma2)) = sum of the square roots of the eigenvalues of sigma1 @ sigma2.

    With fewer images than dimensions both covariances are singular, and a matrix square root of the product
    (scipy's sqrtm, as in pytorch-fid) can fail or turn complex. Its trace only needs the eigenvalues, which are
    real and >= 0 in exact arithmetic: sigma1 @ sigma2 is similar to the symmetric PSD matrix
    sqrt(sigma1) @ sigma2 @ sqrt(sigma1). We take them from that symmetric form (eigvalsh: real, stable) and set
    round-off negatives to 0, which is what the real part of a complex square root gives torchmetrics.
    """
    evals, evecs = torch.linalg.eigh(sigma1)
    root1 = (evecs * _zero_round_off(evals).sqrt()) @ evecs.T
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2  # symmetric up to round-off; make it exactly so for eigvalsh
    return float(_zero_round_off(torch.linalg.eigvalsh(inner)).sqrt().sum())


def _zero_round_off(evals: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix with the round-off ones set to 0. With N < D images, D - N + 1 of them are
    0 exactly but come out as +-1e-13 or so; their square roots (3e-7 each, thousands of them) would otherwise
    add up to a visible FID for two identical sets."""
    tol = evals.abs().max() * len(evals) * torch.finfo(evals.dtype).eps
    return torch.where(evals > tol, evals, torch.zeros_like(evals))


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2))."""
    mu1, sigma1, mu2, sigma2 = map(_f64, (mu1, sigma1, mu2, sigma2))
    mean_term = float((mu1 - mu2).square().sum())
    return mean_term + float(sigma1.trace() + sigma2.trace()) - 2 * trace_sqrt_product(sigma1, sigma2)


def fid(real_features, synth_features) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (each N >= 2)."""
    return fid_from_stats(*gaussian_stats(real_features), *gaussian_stats(synth_features))


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef: float = 1.0) -> torch.Tensor:
    """Unbiased MMD^2 between two equal-size sets with the kernel (x.y / D + coef) ** degree."""
    m, dims = x.shape
    k_xx = (x @ x.T / dims + coef) ** degree
    k_yy = (y @ y.T / dims + coef) ** degree
    k_xy = (x @ y.T / dims + coef) ** degree
    # the unbiased estimator leaves out each point's kernel with itself
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / m**2


def default_kid_subset_size(n_real: int, n_synth: int) -> int:
    return min(1000, n_real, n_synth)


def kid(real_features, synth_features, subsets: int = 100, subset_size: int | None = None,
        seed: int = 0, degree: int = 3, coef: float = 1.0) -> tuple:
    """Kernel Inception Distance: (mean, std) of the unbiased polynomial MMD^2 over random subsets."""
    x, y = _f64(real_features), _f64(synth_features)
    size = default_kid_subset_size(len(x), len(y)) if subset_size is None else subset_size
    if not 2 <= size <= min(len(x), len(y)):
        raise ValueError(f"KID subset size must be between 2 and the smaller set ({min(len(x), len(y))}), got {size}")
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        xs = x[torch.randperm(len(x), generator=gen)[:size]]
        ys = y[torch.randperm(len(y), generator=gen)[:size]]
        scores.append(polynomial_mmd2(xs, ys, degree, coef))
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


def inception_score(logits, splits: int = 10, seed: int = 0) -> tuple:
    """Inception Score of (N, 1008) bias-free logits: (mean, std) over `splits` parts of a random permutation.
    `torch.chunk` makes the parts, so with N not a multiple of splits there can be fewer of them (as in
    torchmetrics); with a single part the std is NaN."""
    z = _f64(logits)
    z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))]
    scores = []
    for part in z.chunk(splits, dim=0):
        p, log_p = part.softmax(1), part.log_softmax(1)
        marginal = p.mean(0, keepdim=True)
        scores.append((p * (log_p - marginal.log())).sum(1).mean().exp())
    scores = torch.stack(scores)
    std = float(scores.std()) if len(scores) > 1 else math.nan
    return float(scores.mean()), std


# --------------------------------------------------------------------------- memorisation audit

PER_REAL_RATIO = 0.5  # per-real rule: the synthetic image is within half of j's distance to j's nearest other real


@dataclass
class Audit:
    nearest_real: torch.Tensor  # (S,) index of each synthetic image's nearest real image
    similarity: torch.Tensor  # (S,) its cosine similarity
    flagged: torch.Tensor  # (S,) bool: flagged by either rule below
    real_nn_max: float  # the global rule's threshold: the largest real-to-nearest-other-real similarity
    real_nn_p99: float  # the 99th percentile of those similarities, for context
    real_nn: torch.Tensor  # (R,) each real image's similarity to its nearest other real image
    flagged_global: torch.Tensor = None  # (S,) bool: closer than any two real images are to each other
    flagged_per_real: torch.Tensor = None  # (S,) bool: distance_ratio below PER_REAL_RATIO
    distance_ratio: torch.Tensor = None  # (S,) (1 - similarity) / (1 - real_nn[nearest_real])

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())


def cosine_matrix(a, b) -> torch.Tensor:
    a = torch.nn.functional.normalize(_f64(a), dim=1)
    b = torch.nn.functional.normalize(_f64(b), dim=1)
    return a @ b.T


def memorization_audit(real_features, synth_features, real_mirrored_features=None) -> Audit:
    """Nearest real image of every synthetic one by cosine similarity, calibrated on the real set itself.

    With `real_mirrored_features` (the real images flipped left-right) a mirrored copy counts as a copy: each
    real image's similarity is the larger of its own and its mirror's.

    Two rules, both reported; a synthetic image flagged by either is a prompt to look:
    - global: closer to some real image than any real image is to its nearest other real image (or that one's
      mirror). Two independent draws of the data are never that close. One near-duplicate pair in the real
      set (the same patient twice) raises this threshold for every image, so it alone can be blinded.
    - per real image j (the synthetic image's nearest): its cosine distance to j is below PER_REAL_RATIO times
      j's distance to j's own nearest other real image. Calibrated per image, so a duplicate elsewhere in the
      real set changes nothing. (Merely "closer than j's nearest other real" would flag about half of all
      genuinely new images: a new draw is as likely as j's own neighbour to be the closer one.)
    """
    real = _f64(real_features)
    if len(real) < 2:
        raise ValueError("the memorisation audit needs at least two real images to calibrate on")
    views = [real] if real_mirrored_features is None else [real, _f64(real_mirrored_features)]
    synth = _f64(synth_features)
    real_real = torch.stack([cosine_matrix(real, v) for v in views]).amax(0)
    real_real.fill_diagonal_(-math.inf)  # an image is not its own neighbour, nor is its mirror
    real_nn = real_real.max(1).values
    similarity, nearest = torch.stack([cosine_matrix(synth, v) for v in views]).amax(0).max(1)
    threshold = float(real_nn.max())
    ratio = (1 - similarity).clamp_min(0) / (1 - real_nn[nearest]).clamp_min(1e-12)
    flagged_global, flagged_per_real = similarity > threshold, ratio < PER_REAL_RATIO
    return Audit(nearest_real=nearest, similarity=similarity, flagged=flagged_global | flagged_per_real,
                 real_nn_max=threshold, real_nn_p99=float(torch.quantile(real_nn, 0.99)), real_nn=real_nn,
                 flagged_global=flagged_global, flagged_per_real=flagged_per_real, distance_ratio=ratio)
