"""The per-round estimates of the adaptive false-negative rules: each function takes a round's teacher scores and
returns the margin or threshold that :class:`~md2pr_st.false_negatives.FalseNegativeMapper` flags candidates with.

Every formula is in the docstring of the function that computes it. ``t`` are teacher scores (logits, or grades for
a :class:`~md2pr_st.teacher.QrelsScorer`), ``d+`` a row's positive, ``d`` one of its mined candidates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# The rule names (and which rules adapt, which can mask, their default quantiles) are settings' names: defined in
# md2pr_st.config, where the settings are checked, and re-exported here.
from md2pr_st.config import ADAPTIVE_RULES, DEFAULT_QUANTILE, MASKABLE_RULES, RULES

__all__ = [
    "ADAPTIVE_RULES",
    "DEFAULT_QUANTILE",
    "MASKABLE_RULES",
    "RULES",
    "GaussianMixture",
    "dynamic_margin",
    "fit_gaussian_mixture",
    "mixture_threshold",
    "positives_threshold",
]


def _as_flat(values: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError(f"The round has no {what}, so its threshold is undefined.")
    if not np.isfinite(values).all():
        raise ValueError(f"The round's {what} contain NaN or infinite teacher scores.")
    return values


def _check_quantile(quantile: float) -> None:
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}.")


def dynamic_margin(
    gaps: np.ndarray | Sequence[float],
    quantile: float = 0.1,
    min_margin: float | None = 0.0,
    max_margin: float | None = None,
) -> float:
    """The ``dynamic`` rule's margin over a round's gaps ``G_r = {t(q, d+) - t(q, d) : every row, every candidate}``::

        m_r = clip( Q_p(G_r), min_margin, max_margin )

    and a candidate is flagged when ``t(q, d) >= t(q, d+) - m_r``. ``Q_p`` is the p-quantile with linear
    interpolation (numpy's default: sort G ascending as g_0..g_{N-1}, h = (N - 1) p,
    Q_p = g_floor(h) + (h - floor(h)) (g_floor(h)+1 - g_floor(h))). Unless a clip binds, this flags a share p of
    the round's candidates whatever they are; ``min_margin = 0`` flags a candidate the teacher ranks at or above
    the positive in any case.

    Example:
        >>> # gaps 1..10: h = 9 * 0.1 = 0.9, Q = 1 + 0.9 * (2 - 1) = 1.9
        >>> round(dynamic_margin([float(g) for g in range(10, 0, -1)], quantile=0.1), 6)
        1.9
        >>> dynamic_margin([-3.0, -2.0, 5.0], quantile=0.1)  # clipped at min_margin = 0
        0.0
    """
    gaps = _as_flat(gaps, "candidates")
    _check_quantile(quantile)
    margin = float(np.quantile(gaps, quantile))
    if min_margin is not None:
        margin = max(margin, float(min_margin))
    if max_margin is not None:
        margin = min(margin, float(max_margin))
    return margin


def positives_threshold(positive_scores: np.ndarray | Sequence[float], quantile: float = 0.5) -> float:
    """The ``positives`` rule's threshold: the p-quantile of the round's positives' own teacher scores::

        theta_r = Q_p( {t(q, d+) : every row of the round} )

    (``Q_p`` as in :func:`dynamic_margin`), and a candidate is flagged when ``t(q, d) >= theta_r``: it scores like
    a positive of the round. The flagged share follows the candidates: it rises as mining finds candidates that
    score like positives and is zero when none do.

    Example:
        >>> positives_threshold([6.0, 3.0, 2.0], quantile=0.5)  # the median positive
        3.0
        >>> positives_threshold([6.0, 3.0, 2.0], quantile=0.25)  # h = 2 * 0.25 = 0.5: 2 + 0.5 * (3 - 2)
        2.5
    """
    _check_quantile(quantile)
    return float(np.quantile(_as_flat(positive_scores, "positives"), quantile))


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """A fitted two-component 1-D Gaussian mixture: component 0 is the low one (true negatives), 1 the high one."""

    weights: tuple[float, float]
    means: tuple[float, float]
    stds: tuple[float, float]
    iterations: int

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _otsu_split(x: np.ndarray) -> float:
    """The cut of sorted ``x`` that maximises the between-class variance (a deterministic EM start)."""
    n = x.size
    cumulative = np.cumsum(x)[:-1]
    left = np.arange(1, n)
    mean_left, mean_right = cumulative / left, (x.sum() - cumulative) / (n - left)
    between = left * (n - left) * (mean_left - mean_right) ** 2
    distinct = x[1:] > x[:-1]  # cut only between distinct values
    return float(x[int(np.argmax(np.where(distinct, between, -1.0))) + 1])


def fit_gaussian_mixture(
    scores: np.ndarray | Sequence[float],
    high: tuple[float, float] | None = None,
    max_iter: int = 500,
    tol: float = 1e-10,
) -> GaussianMixture | None:
    """Fit ``pi_0 N(mu_0, s_0^2) + pi_1 N(mu_1, s_1^2)`` (``mu_0 <= mu_1``) to ``scores`` by EM; None if the scores
    have fewer than two distinct values.

    ``high=(mu, s)`` fixes the high component's mean and standard deviation: EM then fits only the weights and the
    low component. EM starts from the split of the sorted scores with the largest between-class variance (no random
    start: the same scores give the same mixture), and every variance is kept above 1e-3 of the pooled variance so
    that discrete scores (graded judgements) cannot collapse a component onto one value.
    """
    x = np.sort(_as_flat(scores, "candidates"))
    if x[0] == x[-1]:
        return None
    floor = 1e-3 * float(x.var())
    cut = _otsu_split(x)
    low, upper = x[x < cut], x[x >= cut]
    weights = np.array([low.size, upper.size], dtype=np.float64) / x.size
    means = np.array([low.mean(), upper.mean()])
    variances = np.maximum([low.var(), upper.var()], floor)
    if high is not None:
        means[1], variances[1] = float(high[0]), max(float(high[1]) ** 2, floor)
    previous, iterations = -math.inf, 0
    while iterations < max_iter:
        iterations += 1
        log_density = -0.5 * ((x[:, None] - means) ** 2 / variances + np.log(2 * math.pi * variances))
        joint = np.log(np.maximum(weights, 1e-300)) + log_density
        total = np.logaddexp(joint[:, 0], joint[:, 1])
        responsibility = np.exp(joint - total[:, None])
        mass = responsibility.sum(axis=0) + 1e-300
        weights = mass / x.size
        fitted = np.array([0, 1]) if high is None else np.array([0])
        for k in fitted:
            means[k] = float(responsibility[:, k] @ x / mass[k])
            variances[k] = max(float(responsibility[:, k] @ (x - means[k]) ** 2 / mass[k]), floor)
        likelihood = float(total.mean())
        if likelihood - previous < tol:
            break
        previous = likelihood
    order = [0, 1] if high is not None or means[0] <= means[1] else [1, 0]
    return GaussianMixture(
        weights=(float(weights[order[0]]), float(weights[order[1]])),
        means=(float(means[order[0]]), float(means[order[1]])),
        stds=(math.sqrt(variances[order[0]]), math.sqrt(variances[order[1]])),
        iterations=iterations,
    )


def _crossing(mixture: GaussianMixture) -> float:
    (w0, w1), (m0, m1), (s0, s1) = mixture.weights, mixture.means, mixture.stds
    if w1 <= 0.0:
        return math.inf
    # f(x) = log(w1 N(x; m1, s1)) - log(w0 N(x; m0, s0)) = a x^2 + b x + c; the high posterior is >= 1/2 iff f >= 0.
    a = 1 / (2 * s0**2) - 1 / (2 * s1**2)
    b = m1 / s1**2 - m0 / s0**2
    c = m0**2 / (2 * s0**2) - m1**2 / (2 * s1**2) + math.log(w1 / s1) - math.log(max(w0, 1e-300) / s0)
    if a * m0**2 + b * m0 + c >= 0:
        return m0
    roots = np.roots([a, b, c]) if abs(a) > 1e-12 else np.array([-c / b]) if b else np.array([])
    above = sorted(float(r.real) for r in np.atleast_1d(roots) if abs(r.imag) < 1e-12 and r.real > m0)
    return above[0] if above else math.inf


def mixture_threshold(
    candidate_scores: np.ndarray | Sequence[float],
    positive_scores: np.ndarray | Sequence[float] | None = None,
) -> tuple[float, GaussianMixture | None]:
    """The ``mixture`` / ``positives_mixture`` rules' threshold and the fitted mixture.

    A two-component Gaussian mixture is fitted by EM (:func:`fit_gaussian_mixture`) to the round's candidate scores
    ``{t(q, d)}``: ``mixture`` fits both components; ``positives_mixture`` (``positive_scores`` given) fixes the high
    component to the mean and standard deviation of the round's positives' scores ``{t(q, d+)}`` and fits its weight
    pi_1 (the round's share of false negatives) and the low component. The threshold is the lowest score at or above
    the low mean mu_0 where the high component's posterior reaches 1/2::

        theta_r = min{ x >= mu_0 : pi_1 N(x; mu_1, s_1^2) >= pi_0 N(x; mu_0, s_0^2) }

    (a root of a quadratic in x; +inf when there is none, or when the scores have fewer than two distinct values),
    and a candidate is flagged when ``t(q, d) >= theta_r``. Every score above theta_r is flagged, also in the far
    tail where a narrower high component's posterior would fall again. The free ``mixture`` follows the shape of the
    candidates' scores only: shifting every candidate score by c shifts theta_r by c. ``positives_mixture`` also
    follows their distance to the positives.

    Example:
        >>> # low cluster {-1, 1} x 3 (mean 0, std 1), high cluster {9, 11} (mean 10, std 1): weights 3/4 and 1/4,
        >>> # equal stds, so f is linear: 10 x - 50 + log(1/3) = 0 at x = 5 + log(3) / 10
        >>> theta, mixture = mixture_threshold([-1.0, 1.0] * 3 + [9.0, 11.0])
        >>> round(theta, 6), round(5 + math.log(3) / 10, 6), mixture.weights
        (5.109861, 5.109861, (0.75, 0.25))
    """
    high = None
    if positive_scores is not None:
        positives = _as_flat(positive_scores, "positives")
        high = (float(positives.mean()), float(positives.std()))
    mixture = fit_gaussian_mixture(candidate_scores, high=high)
    return (math.inf if mixture is None else _crossing(mixture)), mixture
