"""Paired statistics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from genroute.bench.stats import (
    align,
    compare_paired,
    mcnemar_exact,
    min_detectable_difference,
    paired_bootstrap_ci,
)
from genroute.errors import UsageError

Z = 1.959963984540054 + 0.8416212335729143  # z(0.975) + z(0.80)


@pytest.mark.parametrize(("a_only", "b_only", "p"), [
    (0, 5, 2 / 32),                       # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    (1, 9, 2 * (1 + 10) / 1024),          # 2 * (C(10,0) + C(10,1)) / 2^10
    (2, 10, 2 * (1 + 12 + 66) / 4096),    # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12
    (10, 2, 2 * (1 + 12 + 66) / 4096),    # symmetric
    (3, 3, 1.0),                          # 2 * 42/64 > 1, capped
    (0, 0, 1.0),                          # no discordant pair
])
def test_mcnemar_exact_matches_the_binomial_by_hand(a_only: int, b_only: int, p: float) -> None:
    both, neither = 7, 4
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    result = mcnemar_exact(a, b)
    assert (result.a_only, result.b_only) == (a_only, b_only)
    assert result.p_value == pytest.approx(p, rel=1e-12)


def test_mcnemar_refuses_graded_scores_and_unpaired_lists() -> None:
    with pytest.raises(UsageError, match="0/1") as err:
        mcnemar_exact([0.5, 1], [0, 1])
    assert err.value.field == "scores"
    with pytest.raises(UsageError, match="equal lengths") as err:
        compare_paired([1, 0], [1])
    assert err.value.field == "b_scores"


def test_paired_bootstrap_ci_by_enumeration() -> None:
    # Differences [0, 1]: resampled means are 0 (p 1/4), 1/2 (1/2), 1 (1/4): the 2.5 % and 97.5 % points are 0 and 1.
    assert paired_bootstrap_ci([1, 1], [1, 0]) == (0.0, 1.0)
    # Differences [1, 1, 1, 0]: P(mean = 0) = 1/256 < 2.5 % < P(mean <= 1/4) = 13/256; P(mean = 1) = 81/256.
    assert paired_bootstrap_ci([1, 1, 1, 0], [0, 0, 0, 0]) == (0.25, 1.0)
    # No spread: the interval is the point.
    assert paired_bootstrap_ci([0.7, 0.9], [0.2, 0.4]) == pytest.approx((0.5, 0.5))


def test_paired_bootstrap_ci_is_seeded_and_matches_the_normal_interval_at_large_n() -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    a = rng.random(4000).tolist()
    b = (np.asarray(a) - 0.05 + rng.normal(0, 0.3, 4000)).tolist()
    diffs = np.asarray(a) - np.asarray(b)
    low, high = paired_bootstrap_ci(a, b, seed=1)
    assert (low, high) == paired_bootstrap_ci(a, b, seed=1)
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert low == pytest.approx(diffs.mean() - half, abs=0.003)
    assert high == pytest.approx(diffs.mean() + half, abs=0.003)


def test_min_detectable_difference_from_the_paired_sd() -> None:
    # Differences [1, 0, 0, -1]: sd = sqrt(2/3); z * sd / sqrt(4).
    assert min_detectable_difference([1, 1, 1, 0], [0, 1, 1, 1]) == pytest.approx(Z * math.sqrt(2 / 3) / 2)
    # Differences alternate +1/-1 over 100 records: sd = sqrt(100/99).
    a, b = [1, 0] * 50, [0, 1] * 50
    assert min_detectable_difference(a, b) == pytest.approx(Z * math.sqrt(100 / 99) / 10)
    # Agreement on every record: floored at z^2 / (n + z^2), not 0.
    assert min_detectable_difference([1] * 100, [1] * 100) == pytest.approx(Z * Z / (100 + Z * Z))
    assert math.isinf(min_detectable_difference([1], [0]))


def test_more_records_resolve_smaller_differences() -> None:
    small = min_detectable_difference([1, 0] * 30, [0, 1] * 30)
    large = min_detectable_difference([1, 0] * 300, [0, 1] * 300)
    assert large == pytest.approx(small * math.sqrt(600 / 599 * 59 / 60) * math.sqrt(60 / 600), rel=1e-9)
    assert large < small


def test_a_clear_win_is_called_for_the_right_side() -> None:
    a = [1] * 30 + [1] * 40 + [0] * 30
    b = [0] * 30 + [1] * 40 + [0] * 30
    cmp = compare_paired(a, b, a="tuned", b="icl")
    assert cmp.difference == pytest.approx(0.3)
    assert cmp.ci[0] > 0 and cmp.resolved and cmp.winner == "tuned"
    assert cmp.verdict.startswith("tuned wins: tuned - icl = +0.300")
    assert (cmp.a_only, cmp.b_only) == (30, 0) and cmp.mcnemar_p == pytest.approx(2 / 2 ** 30)
    flipped = compare_paired(b, a, a="icl", b="tuned")
    assert flipped.winner == "tuned" and flipped.ci[1] < 0


def test_an_unresolved_difference_says_so_with_the_detectable_size() -> None:
    a = [1, 0] * 50
    b = [0, 1] * 49 + [0, 0]
    cmp = compare_paired(a, b, a="A", b="B")
    assert cmp.difference == pytest.approx(0.01)
    assert cmp.ci[0] < 0 < cmp.ci[1] and not cmp.resolved and cmp.winner is None
    assert cmp.verdict.startswith("no difference detected at n = 100")
    assert f"smallest detectable difference {cmp.min_detectable:.3f}" in cmp.verdict
    assert cmp.mcnemar_p == pytest.approx(1.0)


def test_graded_scores_get_no_mcnemar() -> None:
    cmp = compare_paired([0.5, 0.75, 1.0], [0.25, 0.5, 0.5])
    assert cmp.mcnemar_p is None and "McNemar" not in cmp.verdict


def test_below_the_minimum_n_no_verdict_unless_forced() -> None:
    a, b = [1] * 40 + [0] * 20, [0] * 40 + [0] * 20
    refused = compare_paired(a, b, a="learned", b="icl", min_n=100)
    assert refused.winner is None and refused.resolved
    assert refused.verdict.startswith("no verdict: n = 60 is below the minimum of 100")
    forced = compare_paired(a, b, a="learned", b="icl", min_n=100, force=True)
    assert forced.winner == "learned" and forced.verdict.startswith("learned wins")


def test_align_pairs_by_record_id() -> None:
    ids, a, b = align({"r2": 1.0, "r1": 0.0, "r3": 1.0}, {"r1": 1.0, "r2": 1.0, "r9": 0.0})
    assert ids == ["r1", "r2"] and a == [0.0, 1.0] and b == [1.0, 1.0]


def test_decision_and_short_verdicts() -> None:
    win = compare_paired([1] * 50, [0] * 50, a="x", b="y")
    assert (win.decision, win.short) == ("win", "x wins")
    none = compare_paired([1, 0] * 50, [0, 1] * 50)
    assert (none.decision, none.short) == ("no_difference", "no difference detected")
    refused = compare_paired([1] * 50, [0] * 50, min_n=100)
    assert (refused.decision, refused.short) == ("no_verdict", "no verdict (n < 100)")


def test_few_discordant_pairs_need_mcnemar_to_agree() -> None:
    # 5 of 10 records won by B, none by A: every bootstrap resample has a difference <= 0 and the 95 % CI is
    # clear of 0, but the exact test gives p = 2 / 2^5 = 0.0625: not a win at the 5 % level.
    a, b = [0] * 5 + [1] * 5, [1] * 5 + [1] * 5
    cmp = compare_paired(a, b, a="cheap", b="smart")
    assert cmp.ci[1] < 0 and cmp.mcnemar_p == pytest.approx(0.0625)
    assert not cmp.resolved and cmp.decision == "no_difference"
    # One more such record and both agree (p = 2 / 2^6 = 0.03125).
    cmp = compare_paired([0] * 6 + [1] * 4, [1] * 10, a="cheap", b="smart")
    assert cmp.resolved and cmp.winner == "smart"
