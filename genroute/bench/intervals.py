"""Confidence intervals of proportions (0/1 scores) that hold their level where the percentile bootstrap does not.

The bootstrap of 0/1 scores has no width when every record agrees (all right: [1, 1]; no discordant pair:
[0, 0]), and is too narrow near 0 and 1 at the sample sizes a benchmark or a graduation has:

- ``exact_binomial_ci``: one proportion, Clopper-Pearson (at least ``level`` at any n);
- ``wilson_ci``: one proportion, Wilson's score interval, ``continuity``-corrected or not (the building block of the
  two below);
- ``newcombe_unpaired_ci``: ``mean(a) - mean(b)`` of two independent samples, Newcombe's hybrid score
  interval with continuity correction (Newcombe 1998, method 11): each side misses the truth at most ~2.5 % of the
  time at 20-300 records an arm, equal or not, near 0.5 or 1 (enumerated over every outcome: at most 2.56 %);
  without the correction (method 10) the side toward the smaller arm's extreme missed it up to 4.0 % of the time at
  100 vs 20 near a perfect score (benchmarks/RESULTS.md, split mode's CI);
- ``newcombe_paired_ci``: ``mean(a - b)`` on the same records, Newcombe's square-and-add interval for paired
  proportions with his corrected correlation (Newcombe 1998, as in Fagerland, Lydersen & Laake, ch. 8).

Scores here are 0/1 and already checked; ``genroute.bench.stats`` chooses between these and Student's t interval
(``genroute.bench.t_interval``) of graded scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist


def exact_binomial_ci(successes: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion: the ``p`` whose binomial tails at ``successes`` are at least
    ``(1 - level) / 2`` each (found by bisection; ``n`` >= 1)."""
    import numpy as np

    alpha = (1 - level) / 2
    log_factorial = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1)))))

    def lowest(k: int) -> float:
        """The p at which P(X >= k) = alpha, X ~ Bin(n, p) (that tail grows with p)."""
        if k == 0:
            return 0.0
        ks = np.arange(k, n + 1)
        # The terms that do not depend on p, once (the same operations in the same order: the same figures).
        log_choose, rest = log_factorial[n] - log_factorial[ks] - log_factorial[n - ks], n - ks
        low, high = 0.0, 1.0
        for _ in range(60):
            p = (low + high) / 2
            log_pmf = log_choose + ks * math.log(p) + rest * math.log1p(-p)
            top = float(log_pmf.max())
            tail = math.exp(top) * float(np.exp(log_pmf - top).sum())
            low, high = (p, high) if tail < alpha else (low, p)
        return (low + high) / 2

    # The upper bound for k successes is 1 - the lower bound for n - k failures.
    return lowest(successes), 1.0 - lowest(n - successes)


def wilson_ci(successes: int, n: int, *, level: float = 0.95, continuity: bool = False) -> tuple[float, float]:
    """Wilson's score interval of a proportion (``n`` >= 1); ``continuity``: with Yates' continuity correction
    (Newcombe 1998, method 4; a bound at 0 or 1 when every record is wrong or right)."""
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    if continuity:
        q, zz, scale = 1 - p, z * z, 2 * (n + z * z)
        low = 0.0 if successes <= 0 else (2 * n * p + zz - 1 - z * math.sqrt(max(zz - 2 - 1 / n + 4 * p * (n * q + 1),
                                                                              0.0))) / scale
        high = 1.0 if successes >= n else (2 * n * p + zz + 1 + z * math.sqrt(max(zz + 2 - 1 / n + 4 * p * (n * q - 1),
                                                                                0.0))) / scale
        return max(0.0, low), min(1.0, high)
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_unpaired_ci(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``mean(a) - mean(b)`` for two independent samples of 0/1 scores, from
    each arm's continuity-corrected Wilson interval (Newcombe 1998, method 11)."""
    pa, pb = sum(a) / len(a), sum(b) / len(b)
    la, ua = wilson_ci(round(sum(a)), len(a), level=level, continuity=True)
    lb, ub = wilson_ci(round(sum(b)), len(b), level=level, continuity=True)
    d = pa - pb
    return (max(-1.0, d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)),
            min(1.0, d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)))


def newcombe_paired_ci(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's square-and-add interval of ``mean(a - b)`` for 0/1 scores of the same records."""
    n = len(a)
    both = sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 1)
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 0)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if x == 0 and y == 1)
    neither = n - both - a_only - b_only
    pa, pb = (both + a_only) / n, (both + b_only) / n
    la, ua = wilson_ci(both + a_only, n, level=level)
    lb, ub = wilson_ci(both + b_only, n, level=level)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    # The correlation of the two proportions, corrected as Newcombe does: a small positive one counts as none.
    cross = both * neither - a_only * b_only
    corrected = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = corrected / math.sqrt(margins) if margins else 0.0
    d = pa - pb
    low = (pa - la) ** 2 + (ub - pb) ** 2 - 2 * phi * (pa - la) * (ub - pb)
    high = (ua - pa) ** 2 + (pb - lb) ** 2 - 2 * phi * (ua - pa) * (pb - lb)
    return max(-1.0, d - math.sqrt(max(low, 0.0))), min(1.0, d + math.sqrt(max(high, 0.0)))


def share_claim(share: float, n: int, *, baseline: float | None = None, baseline_name: str = "baseline") -> str:
    """A held-out share (routing accuracy) as a claim a reader can weigh: the count, ``n`` and the exact 95 % CI, and
    "not resolved" when ``baseline`` lies inside that CI (5 validation records cannot tell 0.8 from 0.6), else
    whether the share is below or above it."""
    if n < 1:
        return "not measured (nothing held out)"
    k = round(share * n)
    low, high = exact_binomial_ci(k, n)
    text = f"{share:.3f} ({k} of {n}, exact 95 % CI [{low:.3f}, {high:.3f}])"
    if baseline is not None and low <= baseline <= high:
        text += f", not resolved against {baseline_name} ({baseline:.3f})"
    elif baseline is not None:  # resolved either way: a share below its baseline is the news, not a footnote
        text += f", {'below' if high < baseline else 'above'} {baseline_name} ({baseline:.3f})"
    return text
