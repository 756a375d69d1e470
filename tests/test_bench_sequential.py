"""The anytime-valid confidence sequences (``genroute.bench.sequential``): values worked out by hand, coverage at
every time at once in a seeded simulation, the sqrt(log t / t) width, and the inputs they refuse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genroute import UsageError
from genroute.bench.sequential import mean_cs, paired_difference_cs, unpaired_difference_cs

#: psi_E(1/2) = (-log(1 - 1/2) - 1/2) / 4
PSI_HALF = (math.log(2) - 0.5) / 4


def all_ones_low(t, level=0.95):
    """The lower bound after ``t`` scores of 1, by hand: every bet is capped at c = 1/2 (the uncapped one,
    sqrt(2 log(2/alpha) / (sigma2_{t-1} t log(1 + t))), is above 2 here), so sum(lambda) = t / 2;
    mu_hat_{i-1} = (i - 1/2) / i, so v_i = 4 (1 - mu_hat_{i-1})^2 = 1 / i^2; the centre is 1 and the radius
    (log(2/alpha) + psi_E(1/2) sum 1/i^2) / (t/2)."""
    return 1 - (math.log(2 / (1 - level)) + PSI_HALF * sum(1 / i**2 for i in range(1, t + 1))) / (t / 2)


def test_known_values_at_small_t():
    cs = mean_cs([1.0] * 12)
    assert cs[:7].tolist() == [[0.0, 1.0]] * 7        # radius >= 2 log(40) / t > 1 below t = 8: nothing learnt
    assert all_ones_low(10) == pytest.approx(0.2472573, abs=1e-6)   # 1 - (3.6888795 + 0.0748339) / 5
    assert cs[9].tolist() == pytest.approx([all_ones_low(10), 1.0])
    assert cs[11, 0] == pytest.approx(all_ones_low(12)) and cs[7, 0] == pytest.approx(all_ones_low(8))
    assert mean_cs([0.0] * 10)[-1].tolist() == pytest.approx([0.0, 1 - all_ones_low(10)])   # the mirror image
    # A difference of +1 on every pair is a mean of 1 on the [0, 1] scale: 2 x 0.2472573 - 1.
    assert paired_difference_cs([1.0] * 10, [0.0] * 10) == pytest.approx((2 * all_ones_low(10) - 1, 1.0))
    # Two arms: each at 97.5 % (log(2 / 0.025) = log 80), combined by the union bound.
    low_a = all_ones_low(10, level=0.975)
    assert low_a == pytest.approx(1 - (math.log(80) + PSI_HALF * 1.5497677) / 5)
    assert unpaired_difference_cs([1.0] * 10, [0.0] * 10) == pytest.approx((low_a - (1 - low_a), 1.0))


def test_no_records_say_nothing():
    assert mean_cs([]).shape == (0, 2)
    assert paired_difference_cs([], []) == (-1.0, 1.0)
    assert unpaired_difference_cs([1.0], []) == (-1.0, 1.0)


@pytest.mark.parametrize("draw", ["bernoulli 0.5", "bernoulli 0.8", "bernoulli 0.97", "beta(2, 5)"])
def test_the_sequence_holds_the_mean_at_every_time_at_once(draw):
    """Over 400 seeded runs of 2,000 scores, the share of runs whose sequence missed the mean at any time is at most
    5 % (plus 3 Monte Carlo standard errors); a fixed 95 % CI read at every one of those times misses far more."""
    rng = np.random.default_rng(7)
    runs, t = 400, 2000
    kind, _, value = draw.partition(" ")
    if kind == "bernoulli":
        mean, scores = float(value), lambda: (rng.random(t) < float(value)).astype(float)
    else:
        mean, scores = 2 / 7, lambda: rng.beta(2, 5, size=t)
    missed = wald_missed = 0
    n = np.arange(1, t + 1)
    for _ in range(runs):
        x = scores()
        cs = mean_cs(x)
        missed += bool(np.any((cs[:, 0] > mean) | (cs[:, 1] < mean)))
        running = np.cumsum(x) / n
        sd = np.sqrt(np.maximum(np.cumsum(x**2) / n - running**2, 1e-12))
        wald_missed += bool(np.any((np.abs(running - mean) > 1.96 * sd / np.sqrt(n))[29:]))  # from t = 30 on
    assert missed / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert wald_missed / runs > 0.2    # peeking at a fixed-horizon interval at every time


def test_paired_and_unpaired_differences_hold_the_difference_at_every_time():
    rng = np.random.default_rng(11)
    runs, t, missed_paired, missed_unpaired = 300, 1500, 0, 0
    for _ in range(runs):
        cells = rng.choice(4, size=t, p=[0.65, 0.065, 0.135, 0.15])   # both, a only, b only, neither: a - b = -0.07
        a, b = ((cells == 0) | (cells == 1)).astype(float), ((cells == 0) | (cells == 2)).astype(float)
        d = mean_cs((a - b + 1) / 2) * 2 - 1
        missed_paired += bool(np.any((d[:, 0] > -0.07) | (d[:, 1] < -0.07)))
        arm_a, arm_b = (rng.random(t) < 0.73).astype(float), (rng.random(t) < 0.8).astype(float)
        each_a, each_b = mean_cs(arm_a, level=0.975), mean_cs(arm_b, level=0.975)   # the two arms, t records each
        missed_unpaired += bool(np.any((each_a[:, 0] - each_b[:, 1] > -0.07) | (each_a[:, 1] - each_b[:, 0] < -0.07)))
    limit = 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert missed_paired / runs <= limit and missed_unpaired / runs <= limit
    assert paired_difference_cs(a, b) == pytest.approx(tuple(d[-1]))
    assert unpaired_difference_cs(arm_a, arm_b) == pytest.approx((each_a[-1, 0] - each_b[-1, 1],
                                                                  each_a[-1, 1] - each_b[-1, 0]))


def test_the_width_shrinks_like_sqrt_log_t_over_t():
    x = (np.random.default_rng(3).random(100_000) < 0.5).astype(float)
    cs = mean_cs(x)
    width = {t: cs[t - 1, 1] - cs[t - 1, 0] for t in (1_000, 10_000, 100_000)}
    scaled = {t: w * math.sqrt(t / math.log(t)) for t, w in width.items()}
    # Within a factor of 1.5 over two decades (a log log t factor remains), while width x sqrt(t) keeps growing:
    # it is wider than a fixed-horizon CI (~ 1/sqrt(t)) by a factor that grows with t, slowly.
    assert max(scaled.values()) / min(scaled.values()) < 1.5
    assert width[1_000] * math.sqrt(1_000) < width[10_000] * math.sqrt(10_000) < width[100_000] * math.sqrt(100_000)
    assert np.all(np.diff(cs[:, 0]) >= 0) and np.all(np.diff(cs[:, 1]) <= 0)   # the running intersection


def test_a_mean_that_moved_shows_the_current_interval_not_a_stale_one():
    # Right 500 times, then wrong 500 times: no constant mean fits, the running intersection empties, and each t
    # shows its own C_t (which covers the bet-weighted mean of the means, here above 0.5: the early scores weigh more)
    # instead of a stale [0.98, 1] or an inverted interval.
    cs = mean_cs([1.0] * 500 + [0.0] * 500)
    assert cs[499, 0] > 0.98 and cs[-1, 0] < 0.9 and cs[-1, 0] <= cs[-1, 1] < 1


@pytest.mark.parametrize(("scores", "message"), [([0.5, 1.5], r"scores\[1\] is 1.5"), ([0.5, math.nan], "finite"),
                                                 ([-0.1], r"scores\[0\] is -0.1")])
def test_scores_outside_0_1_are_refused(scores, message):
    with pytest.raises(UsageError, match=message) as exc:
        mean_cs(scores)
    assert exc.value.field == "scores"
    with pytest.raises(UsageError) as exc:
        paired_difference_cs(scores, [0.5] * len(scores))
    assert exc.value.field == "scores"


def test_a_level_outside_0_1_and_unequal_pairs_are_refused():
    for call in (lambda: mean_cs([0.5], level=1.0), lambda: unpaired_difference_cs([1.0], [1.0], level=0)):
        with pytest.raises(UsageError) as exc:
            call()
        assert exc.value.field == "level"
    with pytest.raises(UsageError) as exc:
        paired_difference_cs([1.0, 0.0], [1.0])
    assert exc.value.field == "b_scores"
