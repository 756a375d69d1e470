"""Paired statistics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from genroute.bench.stats import (
    align,
    bootstrap_ci,
    compare_paired,
    mcnemar_exact,
    min_detectable_difference,
    paired_bootstrap_ci,
    quality_ci,
)
from genroute.bench.t_interval import t_interval
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


@pytest.mark.parametrize(("right", "n", "low", "high"), [
    (10, 10, 0.6915029, 1.0), (0, 33, 0.0, 0.1057628), (3, 10, 0.0667395, 0.6524529), (1, 1, 0.025, 1.0),
    (99_999, 100_000, 0.9999443, 0.9999997),
])
def test_the_quality_ci_of_right_or_wrong_scores_is_exact(right: int, n: int, low: float, high: float) -> None:
    # The figures are scipy.stats.binomtest(right, n).proportion_ci(method="exact").
    assert quality_ci([1.0] * right + [0.0] * (n - right)) == pytest.approx((low, high), abs=1e-7)


def test_the_quality_ci_holds_its_level_where_the_bootstrap_did_not() -> None:
    """The chance that the interval holds the true quality, summed over every outcome of 10 records: the
    percentile bootstrap's held 0.97 only when some record was wrong (26 %); the exact one at least 95 %."""
    n, p = 10, 0.97
    cover = {"exact": 0.0, "bootstrap": 0.0}
    for k in range(n + 1):
        chance = math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        scores = [1.0] * k + [0.0] * (n - k)
        for name, ci in (("exact", quality_ci(scores)), ("bootstrap", bootstrap_ci(scores))):
            cover[name] += chance if ci[0] <= p <= ci[1] else 0.0
    assert cover["exact"] >= 0.95 and cover["bootstrap"] < 0.3


def test_graded_scores_get_the_t_interval_quality_ci() -> None:
    scores = [0.2, 0.9, 0.5, 0.7, 1.0, 0.0, 0.4]
    assert quality_ci(scores, seed=4) == t_interval(scores, bounds=(0.0, 1.0))
    assert quality_ci([]) == (0.0, 0.0)


def test_newcombe_intervals_match_the_published_examples() -> None:
    from genroute.bench.intervals import newcombe_paired_ci, newcombe_unpaired_ci, wilson_ci

    # Newcombe (1998), independent proportions 56/70 vs 48/80, continuity-corrected (method 11): 0.0428 to 0.3422
    # (without the correction, method 10: 0.0524 to 0.3339); one proportion (method 4): 81/263, 0/20 and 29/29.
    assert newcombe_unpaired_ci([1] * 56 + [0] * 14, [1] * 48 + [0] * 32) == pytest.approx((0.0428, 0.3422), abs=1e-4)
    assert wilson_ci(81, 263, continuity=True) == pytest.approx((0.2535, 0.3682), abs=1e-4)
    assert wilson_ci(0, 20, continuity=True) == pytest.approx((0.0, 0.2005), abs=1e-4)
    assert wilson_ci(29, 29, continuity=True) == pytest.approx((0.8544, 1.0), abs=1e-4)
    # Fagerland, Lydersen & Laake, paired 2x2 table (Cavo et al. 2012): 59 both, 6 A only, 16 B only, 80 neither.
    a, b = [1] * 59 + [1] * 6 + [0] * 16 + [0] * 80, [1] * 59 + [0] * 6 + [1] * 16 + [0] * 80
    assert newcombe_paired_ci(a, b) == pytest.approx((-0.1186, -0.0046), abs=1e-4)


def test_a_paired_ci_of_records_that_all_agree_has_width() -> None:
    """30 records, both right on each: the paired bootstrap's CI was [0, 0], as if no difference were possible."""
    cmp = compare_paired([1.0] * 30, [1.0] * 30)
    assert cmp.ci[0] < -0.1 and cmp.ci[1] > 0.1 and cmp.decision == "no_difference"
    assert paired_bootstrap_ci([1.0] * 30, [1.0] * 30) == (0.0, 0.0)  # the bootstrap alone


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
    # It said "no difference detected" beside that CI, which excludes 0: a contradiction on its face.
    assert cmp.verdict.startswith("not resolved at n = 10: the 95% CI [")
    assert "excludes 0 but the exact test does not agree" in cmp.verdict
    assert cmp.short == "not resolved (exact test p ≥ 0.05)" and cmp.winner is None
    # One more such record and both agree (p = 2 / 2^6 = 0.03125).
    cmp = compare_paired([0] * 6 + [1] * 4, [1] * 10, a="cheap", b="smart")
    assert cmp.resolved and cmp.winner == "smart"


# -- small n and graded scores (B1, B2) ----------------------------------------------------------------------

def test_a_30_record_run_says_not_resolved_and_names_no_winner_until_both_agree() -> None:
    """The wording of a small unfamiliar set's comparisons: CI holding 0, CI clear of 0 with p = 0.0625, a win."""
    wording = {k: compare_paired([0] * 30, [1] * k + [0] * (30 - k), a="lite", b="full", min_n=20) for k in (4, 5, 6)}
    assert wording[4].ci[1] > 0 and wording[4].short == "no difference detected"
    assert wording[5].ci[1] < 0 and wording[5].short == "not resolved (exact test p ≥ 0.05)"
    assert [c.winner for c in wording.values()] == [None, None, "full"] and wording[6].short == "full wins"


def test_one_record_is_never_a_win() -> None:
    # One record gave a zero-width CI clear of 0; the sign-flip test has p = 1 there. The bounded t interval of one
    # difference of 0.5 reaches 0.975 of the way to -1 and to 1.
    cmp = compare_paired([0.9], [0.4], a="tuned", b="icl")
    assert cmp.ci == pytest.approx((0.5 - 1.5 * 0.975, 0.5 + 0.5 * 0.975)) and cmp.permutation_p == 1.0
    assert not cmp.resolved and cmp.decision == "no_difference" and cmp.winner is None
    assert "sign-flip permutation p = 1" in cmp.verdict


@pytest.mark.parametrize(("n", "p"), [(2, 2 / 4), (3, 2 / 8), (5, 2 / 32)])
def test_equal_differences_on_a_few_records_are_not_a_win(n: int, p: float) -> None:
    # Every difference +0.5: the CI was the point; only 2 of the 2^n sign flips reach |sum| = 0.5 n. The bounded
    # t interval reaches u = 1 - 0.025^(1/n) of the way to -1 and to 1 (n records can miss a share u there).
    cmp = compare_paired([0.9] * n, [0.4] * n)
    u = 1 - 0.025 ** (1 / n)
    assert cmp.ci == pytest.approx((0.5 - 1.5 * u, 0.5 + 0.5 * u)) and cmp.permutation_p == pytest.approx(p)
    assert not cmp.resolved and cmp.decision == "no_difference"


def test_equal_differences_on_six_records_decide_as_mcnemar_does() -> None:
    # 2 / 2^6 = 0.03125, the p McNemar gives 6 discordant pairs one way: both tests reject. Newcombe's CI of the 0/1
    # scores excludes 0, so they are a win; 6 graded differences of 0.5 are not: 6 records can miss a share
    # u = 0.459 of differences at -1, so the bounded CI reaches 0.5 - 1.5 u = -0.189. At 12 records they decide alike.
    graded = compare_paired([0.9] * 6, [0.4] * 6, a="x", b="y")
    binary = compare_paired([1] * 6, [0] * 6, a="x", b="y")
    assert graded.permutation_p == pytest.approx(binary.mcnemar_p) == pytest.approx(2 / 64)
    assert binary.winner == "x" and graded.winner is None and graded.ci[0] == pytest.approx(-0.188887, abs=1e-6)
    assert binary.permutation_p is None and graded.mcnemar_p is None
    graded = compare_paired([0.9] * 12, [0.4] * 12, a="x", b="y")
    assert graded.winner == compare_paired([1] * 12, [0] * 12, a="x", b="y").winner == "x"


def test_sign_flip_p_by_enumeration_and_by_draws() -> None:
    from genroute.bench.stats import sign_flip_p

    # Differences [3, 1, -1] (sum 3): flips with |sum| >= 3 are (+3 +1 -1), (+3 -1 +1), (+3 +1 +1) and their
    # negatives: 6 of 8. Zeros flip to themselves and change nothing.
    assert sign_flip_p([3, 1, 0, 0], [0, 0, 1, 0]) == pytest.approx(6 / 8)
    assert sign_flip_p([0.5, 0.5], [0.5, 0.5]) == 1.0
    # Above 16 non-zero differences: seeded draws, p = (1 + hits) / (1 + draws), close to the normal test's p.
    import numpy as np

    rng = np.random.default_rng(3)
    a, b = rng.random(400).tolist(), rng.random(400).tolist()
    p = sign_flip_p(a, b, seed=5)
    assert p == sign_flip_p(a, b, seed=5)
    d = np.asarray(a) - np.asarray(b)
    z = abs(d.mean()) / (d.std(ddof=1) / math.sqrt(len(d)))
    normal_p = 2 * (1 - 0.5 * (1 + math.erf(z / math.sqrt(2))))
    assert p == pytest.approx(normal_p, abs=0.02)


@pytest.mark.parametrize("n", [5, 10])
def test_graded_scores_with_no_true_difference_are_rarely_a_win(n: int) -> None:
    # A and B i.i.d. uniform on [0, 1]: the percentile bootstrap alone called 18 % (n = 5) and 10 % (n = 10) of
    # these a win; with the exact sign-flip test required the share stays at the nominal 5 %.
    import numpy as np

    rng = np.random.default_rng(20261206)
    sims = 1000  # the share's standard error is then ~0.007 around the exact test's 0.05
    wins = sum(compare_paired(rng.random(n).tolist(), rng.random(n).tolist(), seed=s, n_boot=500).decision == "win"
               for s in range(sims))
    assert wins / sims <= 0.06


def test_a_clear_graded_difference_is_still_a_win() -> None:
    a = [0.6 + 0.01 * (i % 7) for i in range(30)]
    b = [x - 0.2 + 0.05 * (i % 3) for i, x in enumerate(a)]
    cmp = compare_paired(a, b, a="tuned", b="icl")
    assert cmp.winner == "tuned" and cmp.permutation_p is not None and cmp.permutation_p < 0.001


# -- arguments and scores that are refused (B3, nits) --------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_refused(bad: float) -> None:
    from genroute.bench.stats import compare_unpaired, sign_flip_p

    a, b = [1.0] * 200, [0.0] * 199 + [bad]
    for call in (lambda: compare_paired(a, b), lambda: paired_bootstrap_ci(a, b), lambda: sign_flip_p(a, b),
                 lambda: min_detectable_difference(a, b), lambda: compare_unpaired(a, b)):
        with pytest.raises(UsageError, match="b_scores\\[199\\]") as err:
            call()
        assert err.value.field == "scores"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"level": 1.5}, "level"), ({"level": 0}, "level"), ({"level": math.nan}, "level"), ({"level": True}, "level"),
    ({"n_boot": 0}, "n_boot"), ({"n_boot": 2.5}, "n_boot"), ({"power": 1.0}, "power"), ({"power": -0.2}, "power"),
    ({"seed": -1}, "seed"), ({"seed": 0.5}, "seed"), ({"min_n": -1}, "min_n"),
])
def test_bad_statistics_arguments_are_named(kwargs: dict[str, object], field: str) -> None:
    from genroute.bench.stats import bootstrap_ci, compare_unpaired

    with pytest.raises(UsageError) as err:
        compare_paired([1, 0, 1], [0, 0, 1], **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
    if field == "power":
        with pytest.raises(UsageError) as err:
            min_detectable_difference([1, 0, 1], [0, 0, 1], power=kwargs["power"])  # type: ignore[arg-type]
        assert err.value.field == "power"
    elif field != "min_n":  # a verdict's minimum n is compare_paired's alone
        for call in (bootstrap_ci, lambda s, **k: compare_unpaired(s, s, **k)):
            with pytest.raises(UsageError) as err:
                call([0.5, 1.0], **kwargs)  # type: ignore[operator]
            assert err.value.field == field


def test_the_explanation_states_the_level_it_was_given() -> None:
    from genroute.bench.paired import explain

    assert "95 % CI" in explain() and "p < 0.05" in explain()
    text = explain(30, level=0.9, held_out=False)
    assert "90 % CI" in text and "p < 0.1" in text and "95" not in text
    assert "at least 30 shared records" in text and "not resolved" in text
    # Several rows are several tests: the reader is told the verdicts are corrected for it (Holm), at that level.
    assert "corrected for the number of rows: Holm's" in explain() and "at most 5 %" in explain()
    assert "at most 10 %" in text and "below 0.1" in text


def test_a_held_out_share_is_stated_with_its_count_and_exact_interval_and_not_resolved_near_its_baseline() -> None:
    from genroute.bench.intervals import share_claim

    small = share_claim(0.8, 5, baseline=0.6, baseline_name="the majority")
    assert small.startswith("0.800 (4 of 5, exact 95 % CI [0.284, 0.995])")
    assert "not resolved against the majority (0.600)" in small
    assert "not resolved" not in share_claim(0.95, 200, baseline=0.6)
    assert share_claim(0.95, 200, baseline=0.6, baseline_name="the majority").endswith("above the majority (0.600)")
    # A learned router worse than always picking the most common best backend said nothing of it: 8 of 19 right,
    # where the majority rule had 13 of 19.
    worse = share_claim(8 / 19, 19, baseline=13 / 19, baseline_name="always the most common best backend")
    assert worse == ("0.421 (8 of 19, exact 95 % CI [0.203, 0.665]), below always the most common best backend "
                     "(0.684)")
    assert share_claim(0.0, 0) == "not measured (nothing held out)"
