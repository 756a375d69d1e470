"""The anytime-valid confidence sequences (``genroute.bench.sequential``): values worked out by hand, coverage at
every time at once in a seeded simulation, the sqrt(log t / t) width, and the inputs they refuse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genroute import UsageError
from genroute.bench.sequential import (log_wealth_peaks, matched_difference_cs, mean_cs, paired_difference_cs,
                                       split_sequence_for, unpaired_difference_cs)


def all_ones_low(t, level=0.95):
    """The lower end after ``t`` scores of 1, by hand: the bet on ``X > m`` is min(l_i, c/m) with c = 1/2, and the
    plug-in l_i (sqrt(2 log(2/alpha) / (sigma2_{i-1} i log(1 + i))), 6.5, 4.6 and 4.0 at i = 1, 2, 3, then slowly
    down, above 2 up to i = 10^6) is above c/m at the ends below from t = 3 on; so K+_t(m) = (1 + c (1 - m) / m)^t
    and the end solves K+_t(m) = 2/alpha: m = c / (c + (2/alpha)^(1/t) - 1)."""
    return 0.5 / (0.5 + (2 / (1 - level)) ** (1 / t) - 1)


def test_known_values_at_small_t():
    assert mean_cs([1.0]) == (0.0, 1.0)   # K+_1(m) = 1 + 6.5 (1 - m) < 40 at every m >= 0: nothing learnt yet
    assert all_ones_low(3) == pytest.approx(0.1712357, abs=1e-6)   # 0.5 / (0.5 + 40^(1/3) - 1)
    assert all_ones_low(10) == pytest.approx(0.5284711, abs=1e-6)  # 0.5 / (0.5 + 1.4459767 - 1)
    for t in (3, 5, 10, 40):
        low, high = mean_cs([1.0] * t)
        assert high == 1.0 and all_ones_low(t) - 1e-5 <= low <= all_ones_low(t)   # a grid end, never inside
        assert mean_cs([0.0] * t) == pytest.approx((0.0, 1 - low))                # the mirror image
    # A difference of +1 on every pair is a mean of 1 on the [0, 1] scale: 2 x 0.5284711 - 1.
    assert paired_difference_cs([1.0] * 10, [0.0] * 10) == pytest.approx((2 * all_ones_low(10) - 1, 1.0), abs=1e-5)
    # Two arms: each at 97.5 % (2/alpha = 80), combined by the union bound.
    low_a = 0.5 / (0.5 + 80 ** (1 / 10) - 1)
    assert unpaired_difference_cs([1.0] * 10, [0.0] * 10) == pytest.approx((low_a - (1 - low_a), 1.0), abs=1e-5)
    # Matched arms: the k-th of each arm paired, at 95 % (2/alpha = 40): ten pairs of +1 are the paired value above,
    # narrower than the union's; the longer arm's 11th and 12th records wait for their match.
    assert matched_difference_cs([1.0] * 10 + [0.0] * 2, [0.0] * 10) == pytest.approx(
        (2 * all_ones_low(10) - 1, 1.0), abs=1e-5)
    assert 2 * all_ones_low(10) - 1 > low_a - (1 - low_a) + 0.1   # +0.057 against -0.075


def test_no_records_say_nothing():
    assert mean_cs([]) == (0.0, 1.0)
    assert paired_difference_cs([], []) == (-1.0, 1.0)
    assert unpaired_difference_cs([1.0], []) == (-1.0, 1.0)
    assert matched_difference_cs([], [0.0, 1.0]) == (-1.0, 1.0)


def missed(x, mean, level=0.95):
    """Whether the running sequence left ``mean`` out at some time: the capital betting against it reached
    2 / alpha (exact: no grid involved)."""
    up, down = log_wealth_peaks(x, [mean], level=level)
    return bool(max(up[0], down[0]) >= math.log(2 / (1 - level)))


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
    misses = wald_missed = 0
    n = np.arange(1, t + 1)
    for run in range(runs):
        x = scores()
        misses += missed(x, mean)
        if run < 20:   # the interval the rule reads agrees with the capital at the mean
            low, high = mean_cs(x)
            assert (low <= mean <= high) == (not missed(x, mean)) or min(abs(low - mean), abs(high - mean)) < 1e-5
        running = np.cumsum(x) / n
        sd = np.sqrt(np.maximum(np.cumsum(x**2) / n - running**2, 1e-12))
        wald_missed += bool(np.any((np.abs(running - mean) > 1.96 * sd / np.sqrt(n))[29:]))  # from t = 30 on
    assert misses / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert wald_missed / runs > 0.2    # peeking at a fixed-horizon interval at every time


def test_paired_and_unpaired_differences_hold_the_difference_at_every_time():
    rng = np.random.default_rng(11)
    runs, t, missed_paired, missed_unpaired = 300, 1500, 0, 0
    for _ in range(runs):
        cells = rng.choice(4, size=t, p=[0.65, 0.065, 0.135, 0.15])   # both, a only, b only, neither: a - b = -0.07
        a, b = ((cells == 0) | (cells == 1)).astype(float), ((cells == 0) | (cells == 2)).astype(float)
        missed_paired += missed((a - b + 1) / 2, (-0.07 + 1) / 2)
        arm_a, arm_b = (rng.random(t) < 0.73).astype(float), (rng.random(t) < 0.8).astype(float)
        # The union bound: the difference is left out only if one arm's 97.5 % sequence left its mean out.
        missed_unpaired += missed(arm_a, 0.73, level=0.975) or missed(arm_b, 0.8, level=0.975)
    limit = 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert missed_paired / runs <= limit and missed_unpaired / runs <= limit
    low, high = mean_cs((a - b + 1) / 2)
    assert paired_difference_cs(a, b) == pytest.approx((2 * low - 1, 2 * high - 1))
    (low_a, high_a), (low_b, high_b) = mean_cs(arm_a, level=0.975), mean_cs(arm_b, level=0.975)
    assert unpaired_difference_cs(arm_a, arm_b) == pytest.approx((low_a - high_b, high_a - low_b))


def test_split_arms_hold_the_difference_when_the_share_changed_mid_way():
    """A split whose share went from 10 % to 50 % half-way (the records do not say which share each request had):
    each arm's sequence reads only its own records, so the union holds the difference at every time whatever the
    share (an inverse-propensity sequence with the final share, 1/2, would weigh the early challenger records wrong)."""
    rng = np.random.default_rng(13)
    runs, t, misses, ipw_misses = 300, 3000, 0, 0
    for _ in range(runs):
        share = np.where(np.arange(t) < t // 2, 0.1, 0.5)
        to_challenger = rng.random(t) < share
        right = rng.random(t) < np.where(to_challenger, 0.75, 0.8)
        challenger, incumbent = right[to_challenger].astype(float), right[~to_challenger].astype(float)
        misses += missed(challenger, 0.75, level=0.975) or missed(incumbent, 0.8, level=0.975)
        # Z = 1[c] (Y - 1/2) / p - 1[i] (Y - 1/2) / (1 - p) with p = 1/2, on [0, 1] as (Z + 1) / 2: its mean in the
        # first half is (0.1 x 0.25 - 0.9 x 0.3) / 0.5 = -0.49, not -0.05.
        z = np.where(to_challenger, 2 * (right - 0.5), -2 * (right - 0.5))
        ipw_misses += missed((z + 1) / 2, (-0.05 + 1) / 2)
    assert misses / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert ipw_misses / runs > 0.5


def split_arms(rng, t, share, challenger, incumbent):
    """One split's two arms (challenger, incumbent), each in arrival order: request i goes to the challenger with
    probability ``share[i]`` and is right with probability ``challenger[i]`` there, ``incumbent[i]`` else."""
    to_challenger = rng.random(t) < share
    right = rng.random(t) < np.where(to_challenger, challenger, incumbent)
    return right[to_challenger].astype(float), right[~to_challenger].astype(float)


def matched_missed(a, b, difference):
    k = min(len(a), len(b))
    return missed((a[:k] - b[:k] + 1) / 2, (difference + 1) / 2)


@pytest.mark.parametrize("share", ["0.5", "0.1", "0.1 then 0.5"])
def test_matched_arms_hold_the_difference_at_every_time_whatever_the_share(share):
    """The k-th request of each arm matched: over 300 seeded splits of 3,000 requests (a challenger 0.05 worse, the
    null of a promotion at margin 0.05), the share of runs whose matched sequence left the difference out at any
    time is at most 5 % (plus 3 Monte Carlo standard errors): at a 50 % share, at 10 %, and with a share that went
    from 10 % to 50 % half-way (the arms' qualities steady: the k-th records of the two arms come from different
    times, which matters only when the quality drifts)."""
    rng = np.random.default_rng(17)
    runs, t = 300, 3000
    shares = np.where(np.arange(t) < t // 2, 0.1, 0.5) if share == "0.1 then 0.5" else float(share)
    misses = sum(matched_missed(*split_arms(rng, t, shares, 0.75, 0.8), -0.05) for _ in range(runs))
    assert misses / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)


def test_matched_arms_are_narrower_than_the_union_down_to_a_10_percent_share():
    """Mean width of the two at 2,000 requests (20 seeded splits, arms right 85 % and 80 %): matched 0.120 against
    the union's 0.189 at a 50 % share, 0.218 against 0.235 at 10 %; at 3 % the union, which uses all of the larger
    arm's records, is narrower (0.336 against 0.389), which is why ``split_sequence_for`` reads the configured share."""
    rng = np.random.default_rng(19)

    def widths(share):
        pairs = [split_arms(rng, 2000, share, 0.85, 0.8) for _ in range(20)]
        return [float(np.mean([high - low for low, high in map(lambda ab: cs(*ab), pairs)]))
                for cs in (matched_difference_cs, unpaired_difference_cs)]

    (matched_50, union_50), (matched_10, union_10) = widths(0.5), widths(0.1)
    assert matched_50 < 0.7 * union_50 and matched_10 < 0.95 * union_10
    matched_3, union_3 = widths(0.03)
    assert union_3 < matched_3
    assert [split_sequence_for(s) for s in (None, 0.5, 0.1, 0.9, 0.09, 0.95, 1.0)] == \
        ["matched", "matched", "matched", "matched", "union", "union", "union"]


def test_matched_arms_assume_the_kth_records_of_the_two_arms_come_from_the_same_traffic():
    """What matching assumes beyond the union: traffic that gets harder over time for both arms alike (right 90 %
    at first, 60 % at the end; the two arms equal throughout). At a 10 % share the challenger's k-th record comes
    about nine times later than the incumbent's, so the matched pairs compare late challenger requests with early
    incumbent ones and the sequence leaves the true difference, 0, out in most runs (61 of 100); at a 50 % share the
    k-th records are close in time and it holds (3 of 100)."""
    rng = np.random.default_rng(23)
    runs, t = 100, 3000
    quality = np.linspace(0.9, 0.6, t)
    misses = {share: sum(matched_missed(*split_arms(rng, t, share, quality, quality), 0.0) for _ in range(runs))
              for share in (0.5, 0.1)}
    assert misses[0.5] / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs) and misses[0.1] / runs > 0.4


def test_the_width_shrinks_like_sqrt_log_t_over_t():
    x = (np.random.default_rng(3).random(100_000) < 0.5).astype(float)
    ends = {t: mean_cs(x[:t]) for t in (1_000, 10_000, 100_000)}
    width = {t: high - low for t, (low, high) in ends.items()}
    scaled = {t: w * math.sqrt(t / math.log(t)) for t, w in width.items()}
    # Within a factor of 1.5 over two decades (a log log t factor remains), while width x sqrt(t) keeps growing:
    # it is wider than a fixed-horizon CI (~ 1/sqrt(t)) by a factor that grows with t, slowly.
    assert max(scaled.values()) / min(scaled.values()) < 1.5
    assert width[1_000] * math.sqrt(1_000) < width[10_000] * math.sqrt(10_000) < width[100_000] * math.sqrt(100_000)
    # The running intersection: a later interval lies within an earlier one.
    assert ends[1_000][0] <= ends[10_000][0] <= ends[100_000][0] <= ends[100_000][1] <= ends[10_000][1]


def test_tighter_than_the_closed_form_empirical_bernstein_sequence_at_small_n():
    """Against the predictable plug-in empirical-Bernstein CS (same paper, Theorem 2) it replaced, at 10 all-1
    scores: that one's lower end is 1 - (log 40 + psi_E(1/2) sum_{i<=10} 1/i^2) / 5 = 0.2472573 (every bet at
    1/2), this one's 0.5284711."""
    psi_half = (math.log(2) - 0.5) / 4
    closed_form = 1 - (math.log(40) + psi_half * sum(1 / i**2 for i in range(1, 11))) / 5
    assert closed_form == pytest.approx(0.2472573, abs=1e-6)
    assert mean_cs([1.0] * 10)[0] > closed_form + 0.28


def test_a_mean_that_moved_shows_the_current_interval_not_a_stale_one():
    # Right 500 times, then wrong 500 times: no constant mean fits, the running intersection empties, and the last
    # t shows its own C_t (which leans to the early scores: the bets were larger then) instead of a stale [0.98, 1]
    # or an inverted interval.
    assert mean_cs([1.0] * 500)[0] > 0.98
    low, high = mean_cs([1.0] * 500 + [0.0] * 500)
    assert low < 0.9 and low <= high < 1


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
