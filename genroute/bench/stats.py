"""Paired statistics that decide whether backend A beats backend B on the same records.

Every comparison is paired: ``a[i]`` and ``b[i]`` are the scores of the two backends on record ``i`` — except
``compare_unpaired``, for two arms of a split, each scored on its own records.

- ``compare_unpaired``: means and a CI of their difference: Newcombe's hybrid score interval with continuity
  correction for 0/1 scores (without it, the lower bound a split promotion reads was above the truth 3.6-3.9 % of
  the time at 100 vs 20 records near a perfect score instead of 2.5 %), else Welch's t interval with Hsu's degrees of
  freedom (``genroute.bench.t_interval.welch_interval``: the two-sample percentile bootstrap's held the true
  difference of token-F1-like scores 93.3 % of the time at 20 records an arm and 93.5 % at 20 vs 100,
  ``benchmarks/verdict_calibration.py --unpaired``); for scores in [0, 1], each arm's bounded t interval joined
  by Newcombe's square-and-add.
- ``quality_ci``: the CI of one backend's mean score: exact (Clopper-Pearson, ``exact_binomial_ci``) for 0/1
  scores, whose percentile bootstrap is [1, 1] when every record was right; the bounded t interval for other
  scores (``genroute.bench.t_interval``: Student's, each side widened by the share of scores at 0 or 1 that n
  records can miss; the percentile bootstrap's was too narrow at small n, the t interval alone at near-equal
  scores).
- ``paired_bootstrap_ci``: percentile bootstrap 95 % CI of ``mean(a - b)`` (records resampled with
  replacement, the pair kept together; seeded, numpy); given ``groups``, inputs resampled (``per_input``).
- ``per_input``: the one place repeated inputs are folded for every paired comparison (quality and cost): each
  distinct input's mean values, so a bootstrap resamples inputs, not their copies (a cluster bootstrap).
- ``mcnemar_exact`` and ``sign_flip_p`` (``genroute.bench.exact_tests``, imported here): McNemar's exact test for
  0/1 scores and the paired sign-flip permutation test for any other scores.
- ``min_detectable_difference``: the smallest true mean difference the comparison would detect with 80 %
  power at a two-sided 5 % level, by the normal approximation of the paired test:
  ``(z(1 - alpha/2) + z(power)) * sd(a - b) / sqrt(n)``, with ``sd`` the sample SD of the paired
  differences. It is floored at ``z² / (n + z²)``: the difference detectable when every disagreement goes
  one way (a true difference d of 0/1 scores has a variance of at least d(1 - d)), so backends that agreed on
  every record in the sample are not credited with a resolution the sample cannot have.
- ``compare_paired``: all of the above and a verdict that calls a win only when the CI excludes 0 and an exact
  test agrees at the same level. Its CI is Newcombe's paired score interval for 0/1 scores
  (``genroute.bench.intervals``; the bootstrap's is [0, 0] with no discordant pair, and held the truth 91 % of the
  time at n = 30 near a perfect score), else the bounded t interval of the paired differences (``t_interval``;
  the percentile bootstrap's held the true difference of token-F1-like scores 92 % of the time at n = 20 and
  93-94 % at n = 30-100, ``benchmarks/verdict_calibration.py``). The test is McNemar's for 0/1 scores, the
  sign-flip test for any other scores: a CI alone is too narrow at small n (5 of 10 records won one way give a
  bootstrap CI clear of 0 but an exact p of 0.0625; one record, or equal differences, give a zero-width one; on
  continuous scores with no true difference it called 18 % of n = 5 comparisons a win). Below ``min_n`` records
  it gives no verdict (not resolved) unless forced. Given ``groups``, records that share an input are one: all of
  the above runs on each distinct input's mean scores and n counts inputs (``genroute.bench.clusters``).

Scores must be finite (``UsageError`` naming ``scores``); ``level``, ``power``, ``n_boot``, ``seed`` and ``min_n``
are checked too (``genroute.bench.score_checks``, whose checks are imported here).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from statistics import NormalDist
from typing import Any, Literal

from pydantic import ConfigDict, Field

from genroute.bench.clusters import cluster_means
from genroute.bench.exact_tests import McNemar as McNemar
from genroute.bench.exact_tests import mcnemar_exact as mcnemar_exact
from genroute.bench.exact_tests import sign_flip_p as sign_flip_p
from genroute.bench.intervals import exact_binomial_ci, newcombe_paired_ci, newcombe_unpaired_ci
from genroute.bench.score_checks import check_level as check_level
from genroute.bench.score_checks import check_min_n as check_min_n
from genroute.bench.score_checks import check_n_boot as check_n_boot
from genroute.bench.score_checks import check_seed as check_seed
from genroute.bench.score_checks import finite_scores as finite_scores
from genroute.bench.score_checks import is_binary as is_binary
from genroute.bench.score_checks import paired_differences
from genroute.bench.t_interval import t_interval, t_interval_of, welch_interval
from genroute.exact_sums import Moments
from genroute.public_model import PublicModel

#: Shared records below which an all-records comparison (and the graduation advisor's tuned vs ICL) gives no
#: verdict: the difference is reported as not resolved. The exact tests hold their level at any n, but cannot
#: reject at all below 6 records, and a CI beside them (of graded scores) has little to go on with a few records.
MIN_PAIRED_N = 20

#: Most resampled values held at once by ``bootstrap_ci`` (8 MB of indices, 8 MB of scores).
_BOOTSTRAP_CELLS = 1_000_000


def bootstrap_ci(scores: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded: the same scores always give the same interval)."""
    import numpy as np

    finite_scores(scores, "scores")
    check_level(level)
    check_n_boot(n_boot)
    check_seed(seed)
    if len(scores) == 0:
        return 0.0, 0.0
    data = np.asarray(scores, dtype=float)
    if len(data) == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    return _percentiles(_bootstrap_means(data, n_boot, np.random.default_rng(seed)), level)


def quality_ci(scores: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
               seed: int = 0) -> tuple[float, float]:
    """CI of a mean score: the exact (Clopper-Pearson) interval for 0/1 scores, else the bounded t interval when the
    scores are in [0, 1] (``t_interval_of``), Student's alone when not; ``n_boot`` and ``seed`` are checked, and no
    longer used.

    The percentile bootstrap of 0/1 scores is [1, 1] when every record was right (and [0, 0] when none was), so
    at n = 10 and a true quality of 0.97 its "95 %" interval held the truth 26 % of the time (over every outcome of
    the 10 records, as tests/test_bench_stats.py sums it); the exact interval holds it at least ``level`` of the time
    at any n. The percentile bootstrap of graded scores was too narrow at small n (token-F1-like scores: 94.3 % at
    n = 20-50, ``benchmarks/verdict_calibration.py``); the t interval's spread uses ``n - 1`` and Student's quantile.
    Each side is widened by the share of scores at 0 (or 1) that n records can miss (``t_interval_of``), so equal
    scores, or 2 near-equal ones, are not a near-zero-wide interval (the t interval alone put 2 scores of 0.90 and
    0.91 at [0.84, 0.97], above 200 records averaging 0.88 under ``use_ci_low``).
    """
    finite_scores(scores, "scores")
    check_level(level)
    check_n_boot(n_boot)
    check_seed(seed)
    values = [float(s) for s in scores]
    return quality_ci_of(Moments.of(values), ones=values.count(1.0), zeros=values.count(0.0),
                         inside=all(0.0 <= v <= 1.0 for v in values), level=level)


def quality_ci_of(moments: Moments, *, ones: int, zeros: int, inside: bool,
                  level: float = 0.95) -> tuple[float, float]:
    """``quality_ci`` of finite scores from their ``Moments``, how many are exactly 1 and 0, and whether all are in
    [0, 1] (``inside``): what ``RunningOutcomes`` keeps up to date, so that a refresh does not read every score."""
    check_level(level)
    if moments.n == 0:
        return 0.0, 0.0
    if ones + zeros < moments.n:
        return t_interval_of(moments, level=level, bounds=(0.0, 1.0) if inside else (-math.inf, math.inf))
    return exact_binomial_ci(ones, moments.n, level=level)


def _bounds(*scores: Sequence[float], low: float) -> tuple[float, float]:
    """Where a mean (``low`` = 0) or a difference of means (``low`` = -1) of the scores can be: within [low, 1]
    when every score is in [0, 1] (as a scorer's are), else anywhere."""
    inside = all(0.0 <= s <= 1.0 for values in scores for s in values)
    return (low, 1.0) if inside else (-math.inf, math.inf)


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

    check_level(level)
    check_n_boot(n_boot)
    check_seed(seed)
    finite_scores(a, "a_scores")
    finite_scores(b, "b_scores")
    if len(a) == 0 or len(b) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return _percentiles(_bootstrap_means(xs, n_boot, rng) - _bootstrap_means(ys, n_boot, rng), level)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0, groups: Sequence[Hashable] | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(a - b)``, resampling records (pairs stay together), or given ``groups``
    inputs: each distinct input's mean difference, resampled as ``compare_paired`` does (``per_input``)."""
    a, b = per_input(a, b, groups)
    return bootstrap_ci(paired_differences(a, b), n_boot=n_boot, level=level, seed=seed)


def per_input(a: Sequence[float], b: Sequence[float], groups: Sequence[Hashable] | None
              ) -> tuple[Sequence[float], Sequence[float]]:
    """The paired values every comparison resamples and tests: ``a`` and ``b`` as they are without ``groups``,
    else each distinct input's mean (``clusters.cluster_means``; an input seen once keeps its values, so without
    repeats nothing changes). Copies of one input are not independent evidence: resampling records would count
    them as such, and the CI would be too narrow."""
    paired_differences(a, b)
    return (a, b) if groups is None else cluster_means(a, b, groups)


#: How a verdict starts when the CI and the exact test called a win that Holm's correction did not let through.
HOLM_DEMOTED = "not resolved after Holm's correction"
#: The verdict where the CI excludes 0 and the exact test does not reject (few discordant pairs): not resolved.
CI_ONLY = "not resolved at n ="
def min_detectable_difference(a: Sequence[float], b: Sequence[float], *, power: float = 0.8,
                              level: float = 0.95) -> float:
    """Smallest mean difference detectable at ``power`` (two-sided, ``1 - level``), from the paired SD.

    ``z * sd / sqrt(n)`` with ``z = z(1 - alpha/2) + z(power)``, floored at ``z² / (n + z²)`` (see the module
    docstring); ``inf`` below 2 records.
    """
    check_level(level)
    check_level(power, "power")
    diffs = paired_differences(a, b)
    n = len(diffs)
    if n < 2:
        return math.inf
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    z = NormalDist().inv_cdf((1 + level) / 2) + NormalDist().inv_cdf(power)
    return max(z * sd / math.sqrt(n), z * z / (n + z * z))


class Difference(PublicModel):
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
    """A vs B on the same records: difference ``mean(a) - mean(b)``, its paired CI (Newcombe's for 0/1 scores,
    else the bounded t interval of the differences), an exact test (McNemar's for 0/1 scores, else the sign-flip
    permutation test), a verdict."""

    n: int = Field(description="Pairs compared: distinct inputs when some input repeats.")
    n_records: int | None = Field(default=None, description="Records behind the n inputs when some input repeats.")
    mcnemar_p: float | None = Field(default=None, description="Exact McNemar p-value when all scores are 0/1.")
    a_only: int | None = None
    b_only: int | None = None
    permutation_p: float | None = Field(default=None, description="Paired sign-flip permutation p-value when the "
                                                                  "scores are not all 0/1.")
    min_detectable: float = Field(description="Smallest difference n could detect (80 % power, paired SD).")
    min_n: int = 0
    resolved: bool = Field(description="The CI excludes 0 and the exact test (McNemar's for 0/1 scores, else the "
                                       "sign-flip test) has p < 1 - level (its Holm-adjusted p, in a family).")
    adjustment: Literal["holm"] | None = Field(default=None, description="The family-wise correction of the "
                                                                         "verdict (``genroute.bench.multiplicity``).")
    family_size: int | None = Field(default=None, description="m: distinct comparisons in the family "
                                                                    "corrected over (a repeated one counts once).")
    adjusted_p: float | None = Field(default=None, description="The exact test's Holm-adjusted p in its family.")
    repeats: str | None = Field(default=None, description="The earlier row (\"A vs B\") of the family whose comparison "
                                "this one repeats (the same two score vectors on the same records), counted once in "
                                "the family and given that row's adjusted p; None when it states its own.")
    winner: str | None = Field(description="The better side when resolved and a verdict is given.")
    decision: Literal["win", "no_difference", "no_verdict"] = Field(
        description="win: resolved; no_difference: not resolved; no_verdict: n below min_n, not forced (so not "
                    "resolved either way).")
    verdict: str

    @property
    def short(self) -> str:
        """The verdict in a few words, for a table cell."""
        if self.decision == "win":
            return f"{self.winner} wins"
        if self.decision == "no_verdict":
            return f"no verdict (n < {self.min_n})"
        if self.adjusted_p is not None and self.verdict.startswith(HOLM_DEMOTED):
            return f"not resolved after Holm (m = {self.family_size})"
        if self.verdict.startswith(CI_ONLY):
            return f"not resolved (exact test p ≥ {1 - self.level:.2g})"
        return "no difference detected"


def compare_paired(a_scores: Sequence[float], b_scores: Sequence[float], *, a: str = "A", b: str = "B",
                   min_n: int = 0, force: bool = False, n_boot: int = 2000, level: float = 0.95,
                   power: float = 0.8, seed: int = 0, groups: Sequence[Hashable] | None = None
                   ) -> PairedComparison:
    """Compare two backends' scores on the same records, in the same order.

    A win is called only when the paired CI (Newcombe's score interval for 0/1 scores, else the t interval of the
    paired differences, bounded to [-1, 1] for scores in [0, 1] as ``t_interval_of`` says;
    ``n_boot`` is checked, and no longer used)
    excludes 0 and an exact test rejects at ``1 - level``: McNemar's for 0/1 scores, else the paired sign-flip
    permutation test (``sign_flip_p``); otherwise the
    verdict says no difference was detected at this n and what the smallest detectable difference is. Below
    ``min_n`` records no verdict is given (the numbers still are) unless ``force``. ``groups`` (one key per pair,
    e.g. the input's ``input_key``): pairs sharing a key are one input, so everything above (means, CI, tests,
    ``n`` and ``min_n``) is computed over each input's mean scores (``genroute.bench.clusters``). ``UsageError``
    for scores that are not finite, or a ``level`` / ``power`` outside (0, 1) or ``n_boot`` < 1 (naming each).
    """
    check_level(level)
    check_level(power, "power")
    check_n_boot(n_boot)
    check_seed(seed)
    check_min_n(min_n)
    n_records = len(paired_differences(a_scores, b_scores))
    a_scores, b_scores = per_input(a_scores, b_scores, groups)
    diffs = paired_differences(a_scores, b_scores)
    n = len(diffs)
    size, unit = (f"{n}", "records") if n == n_records else (f"{n} distinct inputs ({n_records} records)",
                                                             "distinct inputs")
    mean_a = sum(map(float, a_scores)) / n if n else 0.0
    mean_b = sum(map(float, b_scores)) / n if n else 0.0
    binary = is_binary(a_scores) and is_binary(b_scores)
    ci = (0.0, 0.0) if not n else newcombe_paired_ci(a_scores, b_scores, level=level) if binary else \
        t_interval(diffs, level=level, bounds=_bounds(a_scores, b_scores, low=-1.0))
    mcn = mcnemar_exact(a_scores, b_scores) if n and binary else None
    perm = sign_flip_p(a_scores, b_scores, seed=seed) if n and not binary else None
    exact_p = mcn.p_value if mcn is not None else perm
    mde = min_detectable_difference(a_scores, b_scores, power=power, level=level)
    resolved = n >= 2 and (ci[0] > 0 or ci[1] < 0) and exact_p is not None and exact_p < 1 - level
    diff = mean_a - mean_b
    pct = f"{level:.0%}"
    mde_text = "∞" if math.isinf(mde) else f"{mde:.3f}"
    if n < min_n and not force:
        winner, decision = None, "no_verdict"
        verdict = (f"no verdict: n = {size} is below the minimum of {min_n} {unit} for a decision, so the "
                   f"difference is not resolved (difference {diff:+.3f}, {pct} CI [{ci[0]:+.3f}, {ci[1]:+.3f}]; "
                   f"smallest detectable {mde_text})")
    elif resolved:
        winner, decision = (a if ci[0] > 0 else b), "win"
        verdict = f"{winner} wins: {a} - {b} = {diff:+.3f}, {pct} CI [{ci[0]:+.3f}, {ci[1]:+.3f}], n = {size}"
    elif ci[0] > 0 or ci[1] < 0:  # beside a CI that excludes 0, "no difference detected" read as a contradiction
        winner, decision = None, "no_difference"
        verdict = (f"{CI_ONLY} {size}: the {pct} CI [{ci[0]:+.3f}, {ci[1]:+.3f}] excludes 0 but the exact "
                   f"test does not agree at the same level ({a} - {b} = {diff:+.3f}; smallest detectable difference "
                   f"{mde_text})")
    else:
        winner, decision = None, "no_difference"
        verdict = (f"no difference detected at n = {size} ({a} - {b} = {diff:+.3f}, {pct} CI "
                   f"[{ci[0]:+.3f}, {ci[1]:+.3f}]; smallest detectable difference {mde_text})")
    if mcn is not None:
        verdict += f"; McNemar exact p = {mcn.p_value:.3g} ({mcn.a_only} vs {mcn.b_only} discordant)"
    if perm is not None:
        verdict += f"; sign-flip permutation p = {perm:.3g}"
    return PairedComparison(
        a=a, b=b, n=n, n_records=None if n == n_records else n_records, mean_a=mean_a, mean_b=mean_b,
        difference=diff, ci=ci, level=level,
        mcnemar_p=None if mcn is None else mcn.p_value, a_only=None if mcn is None else mcn.a_only,
        b_only=None if mcn is None else mcn.b_only, permutation_p=perm, min_detectable=mde, min_n=min_n,
        resolved=resolved, winner=winner, decision=decision, verdict=verdict,
    )


class UnpairedComparison(Difference):
    """A vs B on different records (two arms of a split): ``mean(a) - mean(b)`` and its CI (Newcombe's hybrid
    score interval with continuity correction for 0/1 scores, else each arm's bounded t interval joined by
    square-and-add for scores in [0, 1], Welch's t interval with Hsu's degrees of freedom for others)."""

    n_a: int
    n_b: int


def compare_unpaired(a_scores: Sequence[float], b_scores: Sequence[float], *, a: str = "A", b: str = "B",
                     n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> UnpairedComparison:
    """Compare two backends scored on different records (e.g. the two arms of a split): means, difference, CI.

    The CI is Newcombe's hybrid score interval with continuity correction for 0/1 scores (each side holds its
    ``(1 - level) / 2`` near 0.5 or 1, arms equal or not: ``genroute.bench.intervals``), else ``welch_interval``:
    for scores in [0, 1] each arm's bounded t interval joined by square-and-add, within [-1, 1] (two constant arms
    are not a zero-wide difference), for others Welch's t interval with Hsu's ``min(n_a, n_b) - 1`` df
    (``n_boot`` and ``seed`` are checked, and no longer used); (0, 0) when an arm has no score. No verdict is given
    here (graduation applies its own rule to the CI); scores must be finite and ``level`` / ``n_boot`` valid, as for
    ``compare_paired`` (``UsageError`` naming ``scores`` / ``level`` / ``n_boot``).
    """
    check_level(level)
    check_n_boot(n_boot)
    check_seed(seed)
    finite_scores(a_scores, "a_scores")
    finite_scores(b_scores, "b_scores")
    mean_a = sum(map(float, a_scores)) / len(a_scores) if a_scores else 0.0
    mean_b = sum(map(float, b_scores)) / len(b_scores) if b_scores else 0.0
    if not a_scores or not b_scores:
        ci = (0.0, 0.0)
    elif is_binary(a_scores) and is_binary(b_scores):
        ci = newcombe_unpaired_ci(a_scores, b_scores, level=level)
    else:
        ci = welch_interval(a_scores, b_scores, level=level, bounds=_bounds(a_scores, b_scores, low=-1.0))
    return UnpairedComparison(a=a, b=b, n_a=len(a_scores), n_b=len(b_scores), mean_a=mean_a, mean_b=mean_b,
                              difference=mean_a - mean_b, level=level, ci=ci)


def align(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], list[float], list[float]]:
    """The record ids both mappings scored (sorted) and their two score lists, ready for ``compare_paired``."""
    ids = sorted(set(a) & set(b))
    return ids, [a[i] for i in ids], [b[i] for i in ids]
