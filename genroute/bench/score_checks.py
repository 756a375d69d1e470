"""The checks every statistic in ``genroute.bench`` makes of its arguments before it computes anything.

A caller's mistake is a ``UsageError`` naming the field: a level outside (0, 1), a negative seed or minimum n, fewer
than one resample, a score that is not finite (one NaN turns every mean and CI into NaN), paired scores of unequal
lengths. ``is_binary`` tells the 0/1 scores that get exact intervals and McNemar's test from graded ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence, Sized
from numbers import Real

from genroute.bounds import is_real, is_whole
from genroute.errors import UsageError


def check_level(level: float, field: str = "level") -> None:
    """``UsageError`` naming ``field`` unless ``level`` is a number strictly between 0 and 1, and far enough from 1
    that the two-sided quantile's ``(1 + level) / 2`` is below 1 in floating point (0.9999999999999999 rounds to 1:
    statistics.StatisticsError from the quantile, deep inside)."""
    if not is_real(level) or not 0 < level < 1:
        raise UsageError(f"must be a number strictly between 0 and 1 (got {level!r})", field=field)
    if not (1 + level) / 2 < 1:
        raise UsageError(f"{level!r} is too close to 1: (1 + level) / 2 rounds to 1, whose quantile is infinite "
                         "(at most 0.9999999999999998)", field=field)


def check_seed(seed: int) -> None:
    """``UsageError`` naming ``seed`` unless it is an integer >= 0 (numpy's generators refuse a negative one; a
    benchmark would otherwise fail at its report, after every model call was made)."""
    if not is_whole(seed) or seed < 0:
        raise UsageError(f"the seed must be an integer >= 0 (got {seed!r})", field="seed")


def check_min_n(min_n: int, field: str = "min_n") -> None:
    """``UsageError`` naming ``field`` unless ``min_n`` (records below which no verdict is given) is an integer
    >= 0: a negative one would silently give verdicts at any n."""
    if not is_whole(min_n) or min_n < 0:
        raise UsageError(f"the minimum number of records for a verdict must be an integer >= 0 (got {min_n!r})",
                         field=field)


def check_n_boot(n_boot: int) -> None:
    """``UsageError`` naming ``n_boot`` unless it is an integer >= 1."""
    if not is_whole(n_boot) or n_boot < 1:
        raise UsageError(f"the number of resamples must be an integer >= 1 (got {n_boot!r})", field="n_boot")


def finite_scores(scores: Sequence[float], what: str) -> None:
    """``UsageError`` naming ``scores`` if they are not a list of numbers (a text was a ``ValueError``, a number a
    ``TypeError``) or a score is NaN or infinite (one NaN turns every mean and CI into NaN)."""
    if isinstance(scores, str | bytes) or not (isinstance(scores, Sized) and isinstance(scores, Iterable)):
        raise UsageError(f"{what} must be a list of numbers, not {type(scores).__name__}", field="scores")
    items: list[object] = list(scores)
    wrong = next((i for i, x in enumerate(items) if not isinstance(x, Real)), None)
    if wrong is not None:
        raise UsageError(f"{what}[{wrong}] is {items[wrong]!r:.40}: scores must be numbers", field="scores")
    bad = next((i for i, x in enumerate(scores) if not math.isfinite(float(x))), None)
    if bad is not None:
        raise UsageError(f"{what}[{bad}] is {float(scores[bad])}: scores must be finite numbers", field="scores")


def paired_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``a[i] - b[i]`` for each record, after checking both are finite and of equal length (``UsageError``)."""
    finite_scores(a, "a_scores")
    finite_scores(b, "b_scores")
    if len(a) != len(b):
        raise UsageError(f"paired scores need equal lengths (got {len(a)} and {len(b)})", field="b_scores")
    return [float(x) - float(y) for x, y in zip(a, b, strict=True)]


def is_binary(scores: Sequence[float]) -> bool:
    """Whether every score is 0 or 1."""
    return all(s in (0, 1) for s in scores)
