"""Paired statistics that decide whether backend A beats backend B on the same records.

Every comparison is paired: ``a[i]`` and ``b[i]`` are the scores of the two backends on record ``i`` — except
``compare_unpaired`` (``unpaired_bootstrap_ci``), for two arms of a split, each scored on its own records.

- ``paired_bootstrap_ci``: percentile bootstrap 95 % CI of ``mean(a - b)`` (records resampled with
  replacement, the pair kept together; seeded, numpy).
- ``mcnemar_exact``: McNemar's exact (binomial) two-sided test for 0/1 scores, from the discordant pairs.
- ``min_detectable_difference``: the smallest true mean difference the comparison would detect with 80 %
  power at a two-sided 5 % level, by the normal approximation of the paired test:
  ``(z(1 - alpha/2) + z(power)) * sd(a - b) / sqrt(n)``, with ``sd`` the sample SD of the paired
  differences. It is floored at ``z² / (n + z²)``: the difference detectable when every disagreement goes
  one way (a true difference d of 0/1 scores has a variance of at least d(1 - d)), so backends that agreed on
  every record in the sample are not credited with a resolution the sample cannot have.
- ``compare_paired``: all of the above and a verdict that calls a win only when the CI excludes 0 — and, for
  0/1 scores, McNemar's exact test agrees at the same level (the percentile bootstrap is too narrow on a few
  discordant pairs: 5 of 10 records won one way give a CI clear of 0 but an exact p of 0.0625); below
  ``min_n`` records it refuses to give one unless forced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from genroute.errors import UsageError

#: Most resampled values held at once by ``bootstrap_ci`` (8 MB of indices, 8 MB of scores).
_BOOTSTRAP_CELLS = 1_000_000


def bootstrap_ci(scores: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded: the same scores always give the same interval)."""
    import numpy as np

    if len(scores) == 0:
        return 0.0, 0.0
    data = np.asarray(scores, dtype=float)
    if len(data) == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    return _percentiles(_bootstrap_means(data, n_boot, np.random.default_rng(seed)), level)


def _bootstrap_means(data: Any, n_boot: int, rng: Any) -> Any:
    """``n_boot`` means of ``data`` resampled with replacement (a numpy array)."""
    import numpy as np

    n = len(data)
    # Resample a chunk of rows at a time: one (n_boot x n) index array is 1.6 GB at n = 100k.
    rows = max(1, _BOOTSTRAP_CELLS // n)
    return np.concatenate([data[rng.integers(0, n, size=(min(rows, n_boot - start), n))].mean(axis=1)
                           for start in range(0, n_boot, rows)])


def _percentiles(values: Any, level: float) -> tuple[float, float]:
    import numpy as np

    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def unpaired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(a) - mean(b)`` for two independent samples (each resampled on its own)."""
    import numpy as np

    if len(a) == 0 or len(b) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return _percentiles(_bootstrap_means(xs, n_boot, rng) - _bootstrap_means(ys, n_boot, rng), level)


def _pairs(a: Sequence[float], b: Sequence[float]) -> list[float]:
    if len(a) != len(b):
        raise UsageError(f"paired scores need equal lengths (got {len(a)} and {len(b)})", field="b_scores")
    return [float(x) - float(y) for x, y in zip(a, b, strict=True)]


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(a - b)``, resampling records (pairs stay together)."""
    return bootstrap_ci(_pairs(a, b), n_boot=n_boot, level=level, seed=seed)


def is_binary(scores: Sequence[float]) -> bool:
    """Whether every score is 0 or 1."""
    return all(s in (0, 1) for s in scores)


class McNemar(BaseModel):
    """McNemar's exact test: records only A got right, only B got right, and the two-sided p-value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    a_only: int
    b_only: int
    p_value: float


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> McNemar:
    """Exact two-sided McNemar test for 0/1 scores: ``min(1, 2 * P(X <= min(a_only, b_only)))``, X ~ Bin(d, ½)."""
    _pairs(a, b)
    if not (is_binary(a) and is_binary(b)):
        raise UsageError("McNemar's test needs 0/1 scores", field="scores")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 0)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if x == 0 and y == 1)
    d = a_only + b_only
    tail = sum(math.comb(d, k) for k in range(min(a_only, b_only) + 1)) / 2 ** d
    return McNemar(a_only=a_only, b_only=b_only, p_value=min(1.0, 2 * tail))


def min_detectable_difference(a: Sequence[float], b: Sequence[float], *, power: float = 0.8,
                              level: float = 0.95) -> float:
    """Smallest mean difference detectable at ``power`` (two-sided, ``1 - level``), from the paired SD.

    ``z * sd / sqrt(n)`` with ``z = z(1 - alpha/2) + z(power)``, floored at ``z² / (n + z²)`` (see the module
    docstring); ``inf`` below 2 records.
    """
    diffs = _pairs(a, b)
    n = len(diffs)
    if n < 2:
        return math.inf
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    z = NormalDist().inv_cdf((1 + level) / 2) + NormalDist().inv_cdf(power)
    return max(z * sd / math.sqrt(n), z * z / (n + z * z))


class Difference(BaseModel):
    """A's mean score minus B's, and a CI of that difference at ``level``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    a: str
    b: str
    mean_a: float
    mean_b: float
    difference: float = Field(description="mean(a) - mean(b)")
    ci: tuple[float, float]
    level: float


class PairedComparison(Difference):
    """A vs B on the same records: difference ``mean(a) - mean(b)``, its paired bootstrap CI, McNemar, a verdict."""

    n: int
    mcnemar_p: float | None = Field(default=None, description="Exact McNemar p-value when all scores are 0/1.")
    a_only: int | None = None
    b_only: int | None = None
    min_detectable: float = Field(description="Smallest difference n could detect (80 % power, paired SD).")
    min_n: int = 0
    resolved: bool = Field(description="The CI excludes 0 (and McNemar's p < 1 - level for 0/1 scores).")
    winner: str | None = Field(description="The better side when resolved and a verdict is given.")
    decision: Literal["win", "no_difference", "no_verdict"] = Field(
        description="win: resolved; no_difference: not resolved; no_verdict: n below min_n, not forced.")
    verdict: str

    @property
    def short(self) -> str:
        """The verdict in a few words, for a table cell."""
        if self.decision == "win":
            return f"{self.winner} wins"
        if self.decision == "no_verdict":
            return f"no verdict (n < {self.min_n})"
        return "no difference detected"


def compare_paired(a_scores: Sequence[float], b_scores: Sequence[float], *, a: str = "A", b: str = "B",
                   min_n: int = 0, force: bool = False, n_boot: int = 2000, level: float = 0.95,
                   power: float = 0.8, seed: int = 0) -> PairedComparison:
    """Compare two backends' scores on the same records, in the same order.

    A win is called only when the paired bootstrap CI excludes 0 (and, for 0/1 scores, McNemar's exact p is
    below ``1 - level``); otherwise the verdict says no difference
    was detected at this n and what the smallest detectable difference is. Below ``min_n`` records no
    verdict is given (the numbers still are) unless ``force``.
    """
    diffs = _pairs(a_scores, b_scores)
    n = len(diffs)
    mean_a = sum(map(float, a_scores)) / n if n else 0.0
    mean_b = sum(map(float, b_scores)) / n if n else 0.0
    ci = bootstrap_ci(diffs, n_boot=n_boot, level=level, seed=seed)
    mcn = mcnemar_exact(a_scores, b_scores) if n and is_binary(a_scores) and is_binary(b_scores) else None
    mde = min_detectable_difference(a_scores, b_scores, power=power, level=level)
    resolved = n > 0 and (ci[0] > 0 or ci[1] < 0) and (mcn is None or mcn.p_value < 1 - level)
    diff = mean_a - mean_b
    pct = f"{level:.0%}"
    mde_text = "∞" if math.isinf(mde) else f"{mde:.3f}"
    if n < min_n and not force:
        winner, decision = None, "no_verdict"
        verdict = (f"no verdict: n = {n} is below the minimum of {min_n} records for a decision "
                   f"(difference {diff:+.3f}, {pct} CI [{ci[0]:+.3f}, {ci[1]:+.3f}]; smallest detectable "
                   f"{mde_text}); force it to print one anyway")
    elif resolved:
        winner, decision = (a if ci[0] > 0 else b), "win"
        verdict = f"{winner} wins: {a} - {b} = {diff:+.3f}, {pct} CI [{ci[0]:+.3f}, {ci[1]:+.3f}], n = {n}"
    else:
        winner, decision = None, "no_difference"
        verdict = (f"no difference detected at n = {n} ({a} - {b} = {diff:+.3f}, {pct} CI "
                   f"[{ci[0]:+.3f}, {ci[1]:+.3f}]; smallest detectable difference {mde_text})")
    if mcn is not None:
        verdict += f"; McNemar exact p = {mcn.p_value:.3g} ({mcn.a_only} vs {mcn.b_only} discordant)"
    return PairedComparison(
        a=a, b=b, n=n, mean_a=mean_a, mean_b=mean_b, difference=diff, ci=ci, level=level,
        mcnemar_p=None if mcn is None else mcn.p_value, a_only=None if mcn is None else mcn.a_only,
        b_only=None if mcn is None else mcn.b_only, min_detectable=mde, min_n=min_n, resolved=resolved,
        winner=winner, decision=decision, verdict=verdict,
    )


class UnpairedComparison(Difference):
    """A vs B on different records (two arms of a split): ``mean(a) - mean(b)`` and its two-sample bootstrap CI."""

    n_a: int
    n_b: int


def compare_unpaired(a_scores: Sequence[float], b_scores: Sequence[float], *, a: str = "A", b: str = "B",
                     n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> UnpairedComparison:
    """Compare two backends scored on different records (e.g. the two arms of a split): means, difference, CI."""
    mean_a = sum(map(float, a_scores)) / len(a_scores) if a_scores else 0.0
    mean_b = sum(map(float, b_scores)) / len(b_scores) if b_scores else 0.0
    return UnpairedComparison(a=a, b=b, n_a=len(a_scores), n_b=len(b_scores), mean_a=mean_a, mean_b=mean_b,
                              difference=mean_a - mean_b, level=level,
                              ci=unpaired_bootstrap_ci(a_scores, b_scores, n_boot=n_boot, level=level, seed=seed))


def align(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], list[float], list[float]]:
    """The record ids both mappings scored (sorted) and their two score lists, ready for ``compare_paired``."""
    ids = sorted(set(a) & set(b))
    return ids, [a[i] for i in ids], [b[i] for i in ids]
