"""Student's t interval of a mean, bounded: the CI of graded (not 0/1) scores, their differences and two arms.

``compare_paired`` and ``quality_ci`` gave graded scores a percentile bootstrap interval. That interval is too
narrow at the sizes a comparison decides at: it spreads by the plug-in SD (``n`` in the denominator, not ``n - 1``)
times a normal quantile, not Student's, and token-F1-like scores (most of them exact 0s and 1s) make the resampled
means lumpy. Simulated (``benchmarks/verdict_calibration.py``, 5,000 comparisons at each n), the paired bootstrap
"95 %" interval held the true difference 92.0 % of the time at n = 20, 93.0 % at 30, 93.3 % at 50 and 94.0 % at 100;
the t interval 95.6, 95.1, 94.7 and 94.6 % (±0.6). Hesterberg's expanded percentile interval (the bootstrap's,
widened by the ratio of those quantiles) held 93-94 % at n = 20: it fixes the spread, not the lumpiness.

- ``student_t_quantile``: the ``p`` quantile of Student's t with ``df`` degrees of freedom (no scipy: the
  finite sums of Abramowitz & Stegun 26.7.3-4 and bisection up to 1,000 df, the Cornish-Fisher expansion above);
- ``t_interval``: ``mean ± t(1 - alpha/2, n - 1) * sd / sqrt(n)``; for values within finite ``bounds`` (a mean of
  scores in [0, 1], a difference of two in [-1, 1]) each side is widened by ``unseen_share(n)`` of the distance to
  its bound and cut there (the bounded t interval, below). ``t_interval_of``: the same from a sample's exact sums
  (``genroute.exact_sums``), which a running statistic keeps.
- ``welch_interval``: the interval of ``mean(a) - mean(b)`` for two independent samples (``compare_unpaired``'s of
  graded scores, where the two-sample percentile bootstrap was too narrow for the same reasons):
  ``d ± t(1 - alpha/2, df) * sqrt(s_a²/n_a + s_b²/n_b)``, Welch's standard error with Hsu's conservative degrees of
  freedom ``df = min(n_a, n_b) - 1``. Simulated (``benchmarks/verdict_calibration.py --unpaired``, token-F1-like
  scores, 8,000 comparisons a size), the bootstrap held the true difference 93.3 % of the time at 20 records an arm
  and 93.5-93.9 % at 20 vs 100; the Welch-Satterthwaite ``df`` 94.3 % at 20 vs 20 and 94.5 % at 50 vs 50; Hsu's
  95.1 and 94.7 % (±0.5). For two samples of scores in [0, 1] it is each one's bounded t interval joined by
  Newcombe's square-and-add (MOVER).

The bounded t interval (the one implementation of a graded CI: ``quality_ci`` for bench reports, compile's
``use_ci_low`` and the outcome statistics, ``compare_paired`` and ``compare_unpaired`` for graduation). The t
interval alone is as narrow as the sample's spread: n equal scores were [x, x] (then, only for exactly equal ones,
widened to the Bhatia-Davis SD), and 2 near-equal ones (0.92, 0.93) were [0.861, 0.989], above 200 records averaging
0.88. ``benchmarks/graded_intervals.py`` simulated the t interval, Hoeffding's and the empirical Bernstein bound,
Wilson's interval at n and at an effective n, the t interval with its variance shrunk toward the Bhatia-Davis
maximum, and the t part joined to the unseen share by a sum or by square-and-add, on 8 score distributions at n = 1
to 500 (RESULTS.md, "Which interval for graded scores?"). The t part and the unseen share squared and added held
95 % two-sided in every cell (the t interval alone missed the truth up to 86 % of the time at n = 2-30 on a point
mass at 0.9 with 5 % zeros, no zero drawn), narrowest at n = 500 of those that did; added instead of squared, it
also held each side's 2.5 % where skew makes the t interval lopsided (0.9 with 5 % zeros, n = 200-500: a lower
bound above the truth up to 3.6 % of the time squared, 1.6 % added), but at 1.3 times the paired width at
n = 50-100, which cut the power of a graded comparison by half or more (``benchmarks/verdict_calibration.py``).
Hoeffding's, Bernstein's and Wilson's were 1.9-3.1 times as wide at n = 500.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from genroute.bench.score_checks import check_level
from genroute.bounds import is_real
from genroute.errors import UsageError
from genroute.exact_sums import Moments

#: Above this many degrees of freedom ``student_t_quantile`` uses the Cornish-Fisher expansion (error < 1e-8).
EXACT_DF = 1000


def _central(t: float, df: int) -> float:
    """P(|T| <= t), T ~ Student's t with ``df`` >= 1 degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:
        total = term = math.cos(theta) if df > 1 else 0.0
        for k in range(3, df - 1, 2):
            term *= c2 * (k - 1) / k
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    total = term = 1.0
    for k in range(2, df - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return math.sin(theta) * total


def student_t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < ``p`` < 1) of Student's t with ``df`` >= 1 degrees of freedom; ``UsageError`` naming
    ``p`` for any other."""
    if not is_real(p) or not 0.5 < p < 1:  # 1.0 was statistics.StatisticsError from NormalDist
        raise UsageError(f"must be a probability strictly between 0.5 and 1 (got {p!r})", field="p")
    z = NormalDist().inv_cdf(p)
    if df > EXACT_DF:
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)
    target = 2 * p - 1
    low, high = 0.0, max(2 * z, 1.0)
    while _central(high, df) < target:
        high *= 2
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if _central(mid, df) < target else (low, mid)
    return (low + high) / 2


def unseen_share(n: int, level: float) -> float:
    """The largest share of scores at a bound that a sample of ``n`` misses with probability at least
    ``(1 - level) / 2``: ``1 - ((1 - level) / 2) ** (1 / n)`` (Clopper-Pearson's bound for none of ``n``; 0.168 at
    n = 20 and 95 %, ~ 3.69 / n above)."""
    return 1 - ((1 - level) / 2) ** (1 / n)


def t_interval(values: Sequence[float], *, level: float = 0.95,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """Student's t interval of the mean of ``values`` at ``level``, for values within finite ``bounds`` widened on
    each side by the mass the sample can miss there (``t_interval_of``), cut to ``bounds`` (``values`` finite,
    n >= 1); ``UsageError`` naming ``level`` for one outside (0, 1) or so close to 1 that its quantile is infinite."""
    return t_interval_of(Moments.of(values), level=level, bounds=bounds)


def t_interval_of(moments: Moments, *, level: float = 0.95,
                  bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """``t_interval`` of the values whose ``Moments`` these are (kept up to date by ``RunningOutcomes``): the mean and
    the variance are the floats nearest the exact figures, so the interval does not depend on the values' order.

    Half-widths ``sqrt(T² + ((mean - low) * u)²)`` below the mean and ``sqrt(T² + ((high - mean) * u)²)`` above it,
    ``T = t(1 - alpha/2, n - 1) * sd / sqrt(n)`` (the t part) and ``u = unseen_share(n, level)``, when ``bounds`` =
    (low, high) are finite (scores in [0, 1], or a difference of two in [-1, 1]); the t part alone, cut to the one
    that is finite (as before), when they are not both. The ``u`` part is the mass a sample of ``n`` can miss at a
    bound: n equal scores say nothing of a spread (their t part is 0), but a share ``u`` at the bound could have gone
    unseen (at n = 1 the interval is ``[low + (m - low) * 0.025, ...]``, Markov's bound). The two are squared and
    added, as two independent errors (and as Newcombe's square-and-add joins two intervals): the interval is
    continuous in the values, the unseen part rules at small n and near-equal scores, the t part at large n
    (``benchmarks/graded_intervals.py``).
    """
    check_level(level)
    mean, n = moments.mean, moments.n
    half = 0.0 if n < 2 or moments.constant else \
        student_t_quantile((1 + level) / 2, n - 1) * math.sqrt(moments.variance) / math.sqrt(n)
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):  # cut to a bound given on one side only
        return max(low, mean - half), min(high, mean + half)
    u = unseen_share(n, level)
    return max(low, mean - math.hypot(half, (mean - low) * u)), min(high, mean + math.hypot(half, (high - mean) * u))


def welch_interval(a: Sequence[float], b: Sequence[float], *, level: float = 0.95,
                   bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """The t interval of ``mean(a) - mean(b)`` at ``level`` (Welch's standard error, Hsu's ``min(n_a, n_b) - 1``
    degrees of freedom), cut to ``bounds`` (both samples finite, n >= 1 each).

    A sample of one value, or of equal values, adds no spread and no limit on the degrees of freedom (its t part is
    0): the other sample's ``n - 1`` count; zero width when both are so. With finite ``bounds``, (-1, 1) for two
    samples of scores in [0, 1], it is instead each sample's ``t_interval_of`` in [0, 1] joined by Newcombe's
    square-and-add (MOVER, as ``newcombe_unpaired_ci`` joins two Wilson intervals): ``d - sqrt((m_a - low_a)² +
    (high_b - m_b)²)`` to ``d + sqrt((high_a - m_a)² + (m_b - low_b)²)``, never zero wide.
    """
    check_level(level)
    if math.isfinite(bounds[0]) and math.isfinite(bounds[1]):
        (ma, la, ha), (mb, lb, hb) = ((m.mean, *t_interval_of(m, level=level, bounds=(0.0, 1.0)))
                                      for m in (Moments.of(a), Moments.of(b)))
        difference = ma - mb
        return (max(bounds[0], difference - math.hypot(ma - la, hb - mb)),
                min(bounds[1], difference + math.hypot(ha - ma, mb - lb)))
    means, spreads = [], []  # each sample's mean, and (squared standard error of its mean, n - 1) if it varies
    for values in (a, b):
        moments = Moments.of(values)
        means.append(moments.mean)
        if moments.n > 1 and not moments.constant:
            spreads.append((moments.variance / moments.n, moments.n - 1))
    difference = means[0] - means[1]
    half = 0.0 if not spreads else \
        student_t_quantile((1 + level) / 2, min(df for _, df in spreads)) * math.sqrt(sum(v for v, _ in spreads))
    return max(bounds[0], difference - half), min(bounds[1], difference + half)
