"""The CI of graded scores (``quality_ci``, ``compare_paired``): Student's t interval, and of two independent arms
(``compare_unpaired``): Welch's, against hand-computed cases and by their coverage (the percentile bootstraps they
replaced held the truth 91 % of the time at n = 20 paired, 94.4 % at 20 records an arm)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genroute.bench.stats import bootstrap_ci, compare_paired, compare_unpaired, quality_ci
from genroute.bench.t_interval import student_t_quantile, t_interval, welch_interval
from genroute.outcomes import OutcomeRecord, Side
from genroute.outcomes.stats import outcome_stats
from genroute.policies import build_policy
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.types import GenerateRequest


@pytest.mark.parametrize(("p", "df", "quantile"), [
    (0.975, 1, 12.7062047), (0.975, 2, 4.3026527), (0.975, 6, 2.4469119), (0.975, 19, 2.0930241),
    (0.975, 29, 2.0452296), (0.995, 9, 3.2498355), (0.95, 99, 1.6603911), (0.975, 5000, 1.9604386),
])
def test_student_t_quantiles_match_the_tables(p: float, df: int, quantile: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(quantile, abs=2e-7)


def test_the_quality_ci_of_graded_scores_is_the_t_interval_widened_by_the_unseen_share_by_hand() -> None:
    # 7 scores, 6 times over: mean 0.528571; s² = 0.116237; t(0.975, 41) = 2.019541: t part 0.106243; the share of
    # scores at 0 or 1 that 42 records miss 2.5 % of the time, u = 1 - 0.025^(1/42) = 0.084084: below the mean
    # sqrt(0.106243² + (0.528571 u)²) = 0.115165, above sqrt(0.106243² + (0.471429 u)²) = 0.113397
    scores = [0.2, 0.9, 0.5, 0.7, 1.0, 0.0, 0.4] * 6
    assert quality_ci(scores) == pytest.approx((0.413407, 0.641968), abs=2e-6)
    # three 1s and a 0.5: mean 0.875, t part 3.182446 * 0.125 = 0.397806, u = 1 - 0.025^(1/4) = 0.602362:
    # below sqrt(0.397806² + (0.875 u)²) = 0.660342; above, cut at 1
    assert quality_ci([1.0, 1.0, 1.0, 0.5]) == pytest.approx((0.214658, 1.0), abs=2e-6)
    assert quality_ci([]) == (0.0, 0.0)
    # Scores outside [0, 1] (not a scorer's) have no bound to miss: mean 2, sd 1, t(0.975, 2) = 4.302653
    assert t_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=2e-6)


def test_equal_graded_scores_are_not_a_zero_wide_quality_ci() -> None:
    # One graded record, or copies of one value, show no spread: the interval was [x, x], so a backend with one
    # shadowed outcome of 0.95 outranked one measured 0.9 on 200 records under cost_aware's use_ci_low. n equal
    # scores m: [m (1 - u), m + (1 - m) u], u = 1 - 0.025^(1/n) (Markov's bound at n = 1: u = 0.975).
    assert quality_ci([0.3]) == pytest.approx((0.0075, 0.9825))
    u = 1 - 0.025 ** (1 / 20)  # 0.168433
    assert quality_ci([0.7] * 20) == pytest.approx((0.7 - 0.7 * u, 0.7 + 0.3 * u))
    measured = [1.0] * 150 + [0.6] * 50  # mean 0.9
    assert quality_ci([0.95])[0] < quality_ci(measured)[0]
    assert quality_ci([0.95] * 3)[0] < quality_ci(measured)[0]


def test_two_near_equal_scores_do_not_outrank_200_records_slightly_lower(tmp_path: Path) -> None:
    # The t interval of 0.92 and 0.93 was [0.861, 0.989] (sd 0.007, t(0.975, 1) = 12.7): above the 200 records
    # averaging 0.88 ([0.869, 0.891] then), so cost_aware's use_ci_low sent the task to the backend seen twice. Only
    # equal scores were widened: the behaviour jumped at "every score equal". Now [0.144, 1] and [0.860, 0.891].
    few, many = [0.92, 0.93], [0.8, 0.96] * 100
    assert quality_ci(few)[0] < quality_ci(many)[0]
    assert quality_ci(few)[0] < 0.5 and quality_ci(many)[0] > 0.85
    records = [OutcomeRecord(metadata={"id": str(i), "task": "bank"}, outcomes={
        "big": Side(score=score, cost_usd=0.002, latency_s=1.0),
        **({"prompt": Side(score=few[i], cost_usd=0.0001, latency_s=0.5)} if i < 2 else {})})
        for i, score in enumerate(many)]
    path = outcome_stats(records).save(tmp_path / "stats.json")
    policy = build_policy({"kind": "cost_aware", "stats_path": str(path), "default": "icl", "min_quality": 0.85,
                           "use_ci_low": True})
    decision = policy.decide(GenerateRequest(input="hello", task="bank"), PolicyContext(catalogue={
        name: BackendInfo(name, "prompt_template") for name in ("prompt", "big", "icl")}))
    assert decision.rungs[0].backend == "big", decision.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.001, 0.999), min_size=1, max_size=60), st.integers(0, 59), st.sampled_from([1e-9, -1e-9]))
def test_the_quality_ci_of_graded_scores_is_within_0_1_holds_the_mean_shrinks_with_n_and_is_continuous(
        scores: list[float], which: int, nudge: float) -> None:
    low, high = quality_ci(scores)
    mean = sum(scores) / len(scores)
    assert 0.0 <= low <= mean <= high <= 1.0 and high > low
    twice = quality_ci(scores * 2)  # the same scores, twice as many records: never wider
    assert twice[1] - twice[0] <= high - low + 1e-12
    nudged = list(scores)
    nudged[which % len(scores)] += nudge
    # no jump (the all-or-nothing Bhatia-Davis width at "every score equal" moved by up to 0.4)
    assert quality_ci(nudged) == pytest.approx((low, high), abs=1e-6)


def test_equal_graded_differences_and_constant_arms_are_not_a_zero_wide_difference() -> None:
    # Paired: every difference 0 on 30 records: [0, 0] before; now ± (0 - (-1)) u, u = 1 - 0.025^(1/30)
    u = 1 - 0.025 ** (1 / 30)
    assert compare_paired([0.5] * 30, [0.5] * 30).ci == pytest.approx((-u, u))
    # Two arms of equal values: (0.3, 0.3) before. Each arm's interval, [0.5 (1 - u2), 0.5 + 0.5 u2] and
    # [0.2 (1 - u1), 0.2 + 0.8 u1] (u2 = 1 - 0.025^(1/2) = 0.841886, u1 = 0.975), joined by square-and-add
    assert compare_unpaired([0.5, 0.5], [0.2]).ci == pytest.approx((-0.586337, 0.763916), abs=2e-6)
    low, high = compare_unpaired([0.7] * 100, [0.7] * 100).ci
    assert low < 0 < high and high - low > 0.02


def test_the_paired_ci_of_graded_scores_is_the_t_interval_by_hand() -> None:
    # differences 1, 0.5, 0.4 and 17 zeros: mean 0.095; SS = 1.41 - 1.9² / 20 = 1.2295;
    # se = sqrt(1.2295 / 19 / 20) = 0.0568817; t(0.975, 19) = 2.093024: t part 0.119055; squared and added to the
    # unseen share u = 1 - 0.025^(1/20) = 0.168433 of the way to -1 below and to 1 above
    a = [1.0, 0.5, 1.0, 0.0, 0.8] + [1.0] * 15
    b = [0.0, 0.5, 0.5, 0.0, 0.4] + [1.0] * 15
    c = compare_paired(a, b)
    u = 0.168433
    assert c.ci == pytest.approx((0.095 - math.hypot(0.119055, 1.095 * u), 0.095 + math.hypot(0.119055, 0.905 * u)),
                                 abs=2e-6)
    assert c.decision == "no_difference" and c.permutation_p == pytest.approx(0.25)  # 2 of the 8 flips


def f1_like(u: np.ndarray, shift: float) -> np.ndarray:
    """Token-F1-like scores at uniforms ``u``: 0 w.p. 0.45 - shift, 1 w.p. 0.35 + shift, else 0.25 .. 0.8."""
    partial = np.array([0.25, 0.4, 0.5, 0.67, 0.8])[np.clip(((u - 0.45 + shift) / 0.2 * 5).astype(int), 0, 4)]
    return np.where(u < 0.45 - shift, 0.0, np.where(u >= 0.65 - shift, 1.0, partial))


def test_the_paired_ci_of_graded_scores_holds_its_level_at_20_records() -> None:
    # 1,000 seeded comparisons of 20 records, A's mean 0.05 above B's; the two backends read one uniform 70 % of
    # the time (most pairs agree exactly). The t interval holds the truth 953 times, the
    # percentile bootstrap held it 909 times (90.9 %).
    held = {"t": 0, "bootstrap": 0}
    for run in range(1000):
        rng = np.random.default_rng([20, run])
        u = np.where(rng.random((2, 20)) < 0.7, rng.random(20), rng.random((2, 20)))
        a, b = f1_like(u[0], 0.05), f1_like(u[1], 0.0)
        for name, (low, high) in (("t", compare_paired(a.tolist(), b.tolist()).ci),
                                  ("bootstrap", bootstrap_ci((a - b).tolist()))):
            held[name] += low <= 0.05 <= high
    assert held["t"] >= 945 and held["bootstrap"] < 925, held


def test_the_unpaired_ci_of_graded_scores_is_welchs_interval_by_hand() -> None:
    # Scores outside [0, 1]: a: mean 0.45, s² = 0.35 / 3; b: mean 0.3, s² = 0.16 / 4. se² = 0.35 / 12 + 0.04 / 5 =
    # 0.0371667 (se 0.1927866); Hsu's df = min(4, 5) - 1 = 3: t(0.975, 3) = 3.182446, half-width 0.613533
    assert welch_interval([0.1, 0.5, 0.9, 0.3], [0.2, 0.4, 0.6, 0.2, 0.1]) == \
        pytest.approx((0.15 - 0.613533, 0.15 + 0.613533), abs=2e-6)
    # An arm of equal values adds no spread and no limit on df: mean 2, se 1/sqrt(3), t(0.975, 2) = 4.302653
    assert welch_interval([1.0, 2.0, 3.0], [2.0, 2.0]) == pytest.approx((-2.484138, 2.484138), abs=2e-6)
    # Scores in [0, 1]: each arm's quality interval, joined by Newcombe's square-and-add (MOVER)
    a, b = [0.1, 0.5, 0.9, 0.3] * 10, [0.2, 0.4, 0.6, 0.2, 0.1] * 10
    (la, ha), (lb, hb) = quality_ci(a), quality_ci(b)
    c = compare_unpaired(a, b)
    assert c.difference == pytest.approx(0.15)
    assert c.ci == pytest.approx((0.15 - math.hypot(0.45 - la, hb - 0.3), 0.15 + math.hypot(ha - 0.45, 0.3 - lb)))


def test_the_unpaired_ci_of_graded_scores_holds_its_level_at_20_records_an_arm() -> None:
    # 2,000 seeded comparisons of two independent arms of token-F1-like scores: 20 vs 20 records, A's mean 0.05 above
    # B's, and 100 vs 20 with equal means. The t interval (Welch's standard error, Hsu's df) holds the truth 1,927
    # times (96.4 %); the two-sample percentile bootstrap it replaced held it 1,887 times (94.4 %): fewer than the
    # 1,900 a 95 % interval should (Welch-Satterthwaite's df: 1,915).
    held = 0
    for (n_a, n_b, shift) in ((20, 20, 0.05), (100, 20, 0.0)):
        for run in range(1000):
            rng = np.random.default_rng([n_a, n_b, run])
            a, b = f1_like(rng.random(n_a), shift), f1_like(rng.random(n_b), 0.0)
            low, high = compare_unpaired(a.tolist(), b.tolist()).ci
            held += low <= shift <= high
    assert held >= 1900, held


def test_each_side_of_the_unpaired_ci_of_0_1_scores_holds_its_2_5_percent_with_unequal_arms() -> None:
    # Split mode promotes on the lower bound alone. 2,000 seeded comparisons of 0/1 arms, both 0.95 right, at 100 vs
    # 20 records and 2,000 at 20 vs 100. Without the continuity correction (Newcombe's method 10) the bound toward the
    # smaller arm missed the truth 62 and 78 times (140 of 4,000, 3.5 %; exactly 3.5 % over every outcome), the other
    # bound 0 times. Corrected (method 11): 33 and 34 (exactly 1.6 %). Each side may miss 2.5 % of the runs plus the
    # Monte Carlo margin (1.96 standard errors): 64 of 2,000, 119 of the 4,000.
    toward_small = 0
    for n_a, n_b in ((100, 20), (20, 100)):
        above = below = 0
        for run in range(2000):
            rng = np.random.default_rng([95, n_a, n_b, run])
            a, b = (rng.random(n_a) < 0.95).astype(float), (rng.random(n_b) < 0.95).astype(float)
            low, high = compare_unpaired(a.tolist(), b.tolist()).ci
            above, below = above + (low > 0), below + (high < 0)
        assert above <= 64 and below <= 64, (n_a, n_b, above, below)
        toward_small += max(above, below)
    assert toward_small <= 119, toward_small


def test_a_level_whose_quantile_rounds_to_1_is_a_usage_error_naming_the_level() -> None:
    """(1 + 0.9999999999999999) / 2 rounds to 1.0: statistics.StatisticsError ("p must be in the range 0.0 < p < 1.0")
    came out of quality_ci, t_interval and student_t_quantile."""
    from genroute.errors import UsageError

    level = 0.9999999999999999
    for call in (lambda: quality_ci([0.1, 0.5, 0.9], level=level), lambda: t_interval([0.1, 0.5, 0.9], level=level)):
        with pytest.raises(UsageError) as refused:
            call()
        assert refused.value.field == "level" and refused.value.message.startswith(f"{level!r} is too close to 1")
    with pytest.raises(UsageError) as quantile:
        student_t_quantile((1 + level) / 2, 2)
    assert quantile.value.field == "p" and "(got 1.0)" in quantile.value.message
    low, high = t_interval([0.1, 0.5, 0.9], level=0.9999999999999998)  # the last level below it still has one
    assert low < 0.5 < high


def test_a_bound_given_on_one_side_only_still_cuts_the_interval() -> None:
    # t_interval and welch_interval cut their interval to ``bounds`` (a mean of costs >= 0, say); since 0d0e9ab
    # widened the interval between two finite bounds, a bound given on one side only was dropped: [0.05, 0.1, 0.9]
    # with bounds (0, inf) read [-0.835, 1.535], below the one bound the caller gave (mean 0.35, s² = 0.2275,
    # t(0.975, 2) = 4.302653: half-width 1.184858).
    assert t_interval([0.05, 0.1, 0.9], bounds=(0.0, math.inf)) == pytest.approx((0.0, 0.35 + 1.184858), abs=2e-6)
    assert t_interval([0.05, 0.1, 0.9], bounds=(-math.inf, 1.0)) == pytest.approx((0.35 - 1.184858, 1.0), abs=2e-6)
    # Welch's, likewise (the two samples of the by-hand case above: 0.15 ± 0.613533)
    assert welch_interval([0.1, 0.5, 0.9, 0.3], [0.2, 0.4, 0.6, 0.2, 0.1], bounds=(-0.2, math.inf)) == \
        pytest.approx((-0.2, 0.15 + 0.613533), abs=2e-6)
