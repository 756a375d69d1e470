"""Anytime-valid confidence sequences of a mean score and of a difference of two, for decisions taken repeatedly.

A fixed-horizon 95 % CI holds its level at one look planned in advance. A promotion decision is run again as
traffic accumulates, until it says "promote": every look is another chance of a false promotion ("peeking";
``benchmarks/promotion_peeking.py`` measures it). A confidence sequence (CS) holds the mean at every n at once with
probability ``level``, so it may be looked at as often as one likes and acted on whenever it says so.

The CS here is the predictable plug-in empirical-Bernstein CS (PrPl-EB) of Waudby-Smith & Ramdas, "Estimating means
of bounded random variables by betting", JRSS-B 86(1), 2024, 1-27 (arXiv:2010.09686, Theorem 2 / eq. (13)-(15)):
for ``X_1, X_2, ...`` in [0, 1] with conditional mean ``mu`` given the past, and ``alpha = 1 - level``,

    mu_hat_t    = (1/2 + sum_{i<=t} X_i) / (t + 1)                          mu_hat_0 = 1/2
    sigma2_t    = (1/4 + sum_{i<=t} (X_i - mu_hat_i)^2) / (t + 1)            sigma2_0 = 1/4
    lambda_t    = min(sqrt(2 log(2/alpha) / (sigma2_{t-1} t log(1 + t))), c)   c = 1/2
    v_t         = 4 (X_t - mu_hat_{t-1})^2
    psi_E(l)    = (-log(1 - l) - l) / 4
    C_t         = sum lambda_i X_i / sum lambda_i  +-  (log(2/alpha) + sum v_i psi_E(lambda_i)) / sum lambda_i

and ``P(mu in C_t for every t >= 1) >= level``. Its width shrinks like ``sqrt(log t / t)`` (a fixed CI's like
``sqrt(1 / t)``: the price of looking at will). Since every ``C_t`` holds ``mu`` at once, so does their running
intersection ``[max_{s<=t} low_s, min_{s<=t} high_s]``, which is what is returned (clipped to [0, 1]; where it is
empty, ``C_t`` itself). The observations must be taken in the order they arrived (for a promotion, the order the
outcome store lists them).

- ``mean_cs``: the CS of one mean, at every t;
- ``paired_difference_cs``: of ``mean(a - b)`` on paired scores in [0, 1]: ``d = a - b`` in [-1, 1] maps to
  ``(d + 1) / 2`` in [0, 1], and the CS maps back (``2 C - 1``);
- ``unpaired_difference_cs``: of ``mean(a) - mean(b)`` for two arms each scored on its own records: each arm's CS at
  ``1 - alpha / 2`` and ``[low_a - high_b, high_a - low_b]``, at least ``level`` by the union bound, however the
  two arms' records interleave.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from genroute.bench.score_checks import check_level, finite_scores
from genroute.errors import UsageError

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: The truncation ``c`` of the bets ``lambda_t`` (the paper's suggestion: 1/2 or 3/4).
TRUNCATION = 0.5


def mean_cs(scores: Sequence[float], *, level: float = 0.95) -> NDArray[Any]:
    """The PrPl-EB confidence sequence of the mean of ``scores`` (in [0, 1], in arrival order), running-intersected:
    row ``t - 1`` is ``(low, high)`` after ``t`` scores. ``UsageError`` naming ``scores`` for one outside [0, 1]."""
    import numpy as np

    check_level(level)
    x = _unit_scores(scores, "scores")
    if not len(x):
        return np.empty((0, 2))
    t = np.arange(1, len(x) + 1, dtype=np.float64)
    log_term = math.log(2 / (1 - level))
    mu_hat = (0.5 + np.cumsum(x)) / (t + 1)
    sigma2 = (0.25 + np.cumsum((x - mu_hat) ** 2)) / (t + 1)
    mu_before = np.concatenate(([0.5], mu_hat[:-1]))
    sigma2_before = np.concatenate(([0.25], sigma2[:-1]))
    bets = np.minimum(np.sqrt(2 * log_term / (sigma2_before * t * np.log1p(t))), TRUNCATION)
    psi = (-np.log1p(-bets) - bets) / 4
    weight = np.cumsum(bets)
    centre = np.cumsum(bets * x) / weight
    radius = (log_term + np.cumsum(4 * (x - mu_before) ** 2 * psi)) / weight
    own = np.clip(np.column_stack([centre - radius, centre + radius]), 0.0, 1.0)
    low, high = np.maximum.accumulate(own[:, 0]), np.minimum.accumulate(own[:, 1])
    # An empty intersection happens only on the event (of probability < 1 - level) that some C_t missed the mean,
    # or when the mean moved over time (a backend that got worse): then each t shows its own C_t, not an inverted
    # interval nor the stale bound of a mean that no longer holds.
    crossed = low > high
    return np.where(crossed[:, None], own, np.column_stack([low, high]))


def paired_difference_cs(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """The CS of ``mean(a - b)`` after every pair (``a``, ``b`` in [0, 1], pairs in arrival order), at the last pair:
    ``(-1, 1)`` with no pair."""
    if len(a) != len(b):
        raise UsageError(f"paired scores need equal lengths (got {len(a)} and {len(b)})", field="b_scores")
    if not len(a):
        return -1.0, 1.0
    d = (_unit_scores(a, "a_scores") - _unit_scores(b, "b_scores") + 1) / 2
    low, high = mean_cs(d, level=level)[-1]
    return float(2 * low - 1), float(2 * high - 1)


def unpaired_difference_cs(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """The CS of ``mean(a) - mean(b)`` for two independent arms (each in its own arrival order), at their last
    records: each arm's CS at ``1 - (1 - level) / 2``, combined by the union bound; ``(-1, 1)`` while an arm is
    empty."""
    check_level(level)
    if not len(a) or not len(b):
        return -1.0, 1.0
    each = 1 - (1 - level) / 2
    low_a, high_a = mean_cs(a, level=each)[-1]
    low_b, high_b = mean_cs(b, level=each)[-1]
    return float(low_a - high_b), float(high_a - low_b)


def _unit_scores(scores: Sequence[float], what: str) -> NDArray[Any]:
    """``scores`` as a float array, after checking each is finite and in [0, 1] (``UsageError`` naming ``scores``)."""
    import numpy as np

    finite_scores(scores, what)
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero((x < 0) | (x > 1))
    if len(bad):
        raise UsageError(f"{what}[{bad[0]}] is {x[bad[0]]:g}: an anytime-valid sequence needs scores in [0, 1]",
                         field="scores")
    return x
