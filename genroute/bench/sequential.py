"""Anytime-valid confidence sequences of a mean score and of a difference of two, for decisions taken repeatedly.

A fixed-horizon 95 % CI holds its level at one look planned in advance. A promotion decision is run again as
traffic accumulates, until it says "promote": every look is another chance of a false promotion ("peeking";
``benchmarks/promotion_peeking.py`` measures it). A confidence sequence (CS) holds the mean at every n at once with
probability ``level``, so it may be looked at as often as one likes and acted on whenever it says so.

The CS here is the hedged-capital betting CS of Waudby-Smith & Ramdas, "Estimating means of bounded random variables
by betting", JRSS-B 86(1), 2024, 1-27 (arXiv:2010.09686, Theorem 3, with the predictable plug-in bets of their
Section 4). For ``X_1, X_2, ...`` in [0, 1] with conditional mean ``mu`` given the past, ``alpha = 1 - level``,
``theta = 1/2`` and a truncation ``c = 1/2``, bet on each candidate mean ``m`` in [0, 1]:

    mu_hat_t   = (1/2 + sum_{i<=t} X_i) / (t + 1)                    mu_hat_0 = 1/2
    sigma2_t   = (1/4 + sum_{i<=t} (X_i - mu_hat_i)^2) / (t + 1)      sigma2_0 = 1/4
    l_t        = sqrt(2 log(2/alpha) / (sigma2_{t-1} t log(1 + t)))
    K+_t(m)    = prod_{i<=t} (1 + min(l_i, c/m) (X_i - m))
    K-_t(m)    = prod_{i<=t} (1 - min(l_i, c/(1 - m)) (X_i - m))
    C_t        = {m : max(theta K+_t(m), (1 - theta) K-_t(m)) < 1/alpha}

``theta K+ + (1 - theta) K-`` is a nonnegative martingale at ``m = mu`` (the bets are predictable and keep each
factor >= 1 - c > 0), so by Ville's inequality ``P(mu in C_t for every t >= 1) >= level``; and so does the running
intersection ``{m : max_{s<=t} K+_s(m) < 2/alpha and max_{s<=t} K-_s(m) < 2/alpha}``, which is what is returned.
``K+_t(m)`` does not grow with ``m`` and ``K-_t(m)`` does not shrink (each factor is monotone in ``m``, bets
included), so the set is an interval: each end is found by a grid over the candidate means refined ``PASSES``
times (numpy, one pass over the scores per refinement, in chunks), and reported at the rejected grid point next to it
(at most ``1 / GRID ** PASSES`` wider, never narrower). It is tighter than the closed-form predictable plug-in
empirical-Bernstein CS of the same paper (Theorem 2) at equal validity: a mean difference of scores 0/1 with 20 %
discordant pairs gets a 95 % CS 16 % narrower at 200 pairs, 7 % at 500, 1-4 % at 1,000-2,000; about 0.03 s at
10^4 scores and 0.3 s at 10^5. Where the running intersection is empty (an event of probability < ``1 - level``, or
a mean that moved over time: a backend that got worse) the current ``C_t`` is returned instead, not an inverted
interval nor the stale bound of a mean that no longer holds. The scores must be taken in the order they arrived (for
a promotion, the order the outcome store lists them).

- ``mean_cs``: the CS of one mean, after the last score;
- ``paired_difference_cs``: of ``mean(a - b)`` on paired scores in [0, 1]: ``d = a - b`` in [-1, 1] maps to
  ``(d + 1) / 2`` in [0, 1], and the CS maps back (``2 C - 1``);
- ``matched_difference_cs``: of ``mean(a) - mean(b)`` for two arms each scored on its own records (a split), by
  matching the k-th record of one arm with the k-th of the other (each arm in arrival order) and running
  ``paired_difference_cs`` on the ``min(n_a, n_b)`` matched pairs at the full level (below);
- ``unpaired_difference_cs``: of ``mean(a) - mean(b)`` for two arms each scored on its own records: each arm's CS at
  ``1 - alpha / 2`` and ``[low_a - high_b, high_a - low_b]``, at least ``level`` by the union bound, however the
  two arms' records interleave and whatever share of the requests each arm got, even one that changed. (One
  sequence on the inverse-propensity difference of each request, ``Z = 1[a] (Y - 1/2) / p - 1[b] (Y - 1/2) / (1 - p)``
  with mean ``mean(a) - mean(b)``, needs the share ``p`` of every request and every request scored whatever its
  arm, which the records do not hold, and was no narrower here: within 3 % of the union at 500-2,000 requests.)

Matched arms against the union. The union needs each arm's scores, in its own order, to have a constant conditional
mean given that arm's past. Matching needs, beyond that, ``E[A_k - B_k | the earlier matched pairs] = mean(a) -
mean(b)``, which holds when the two arms' score streams are independent of each other: requests independent of each
other with a steady quality underneath, each sent to an arm by a rule that does not look at the other requests and
does not change over time (genroute's split: a fixed hash of the key or input against a fixed share). Then the
matched differences ``A_k - B_k`` are independent with that mean, their CS holds at every k at once (Ville), and so
at every look, whatever ``min(n_a, n_b)`` is at that look: the records of both arms only ever grow at the end, so a
later look extends the same pairs. What it assumes that the union does not:

- the k-th record of each arm comes from the same traffic. With equal shares the two are close in time; with a share
  of 10 % the challenger's 100th record is near request 1,000 and the incumbent's near request 111, and a share
  changed mid-way moves them apart too. A drift of the traffic common to both arms (harder questions in the
  evening, a new client) then enters the matched difference as a bias, where the union's two arms span the same
  window. Neither is exact under drift (both assume a steady quality), but they fail differently: with two equal
  arms going from 90 % to 60 % right over 3,000 requests, the matched sequence left the difference out in 61 % of
  runs at a 10 % share and 3 % at 50 % (its pairs close in time), the union in 4 % at 10 % and 18 % at 50 % (each
  arm's own sequence of a moving mean; looks every 100 requests, 100 runs);
- the two arms' streams independent of each other: a routing that reacts to outcomes (to the other arm's recent
  scores) couples them. (A routing by content that shifts over time moves each arm's own mean, which neither
  sequence survives);
- the larger arm's records beyond ``min(n_a, n_b)`` are not used. Its width follows ``sqrt(var_a + var_b)`` on the
  smaller arm's count, at the full level, where the union adds the two arms' widths, each at ``1 - alpha/2``: at
  0/1 scores near 0.8 it was 36-39 % narrower at a 50 % share and 20-25 % at 25 % (500-2,000 requests); at 10 %,
  10 % narrower at 1,000-2,000 requests and as wide at 500; at 3 % the union was narrower (by the widths' scaling,
  below about 8 %), hence ``split_sequence_for``.

The choice between the two is made from the configured share, before any outcome is seen, and kept for every look:
picking whichever is narrower at a look would read two sequences and hold neither's level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from genroute.bench.score_checks import check_level, finite_scores
from genroute.errors import UsageError

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: The truncation ``c`` of the bets (the paper's 1/2; 3/4 was wider here).
TRUNCATION = 0.5
#: Candidate means per refinement of an end, and refinements: ends within 32^-4 (about 1e-6) of the exact ones.
GRID, PASSES = 32, 4
#: The smaller arm's share of a split below which the union of the two arms' sequences is used, not matched arms.
MATCHED_MIN_SHARE = 0.1
#: Scores per block of the pass over them (bounds the memory to CHUNK x 2 GRID floats at any length).
CHUNK = 2048


def mean_cs(scores: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """The hedged-capital confidence sequence of the mean of ``scores`` (in [0, 1], in arrival order) after the last
    one, running-intersected: ``(0, 1)`` with none. ``UsageError`` naming ``scores`` for one outside [0, 1]."""
    check_level(level)
    x = _unit_scores(scores, "scores")
    if not len(x):
        return 0.0, 1.0
    ends = _ends(x, level, running=True)
    if ends[0] > ends[1]:   # no constant mean fits every C_s: show the current C_t
        ends = _ends(x, level, running=False)
    return float(min(ends)), float(max(ends))


def log_wealth_peaks(scores: Sequence[float], candidates: Sequence[float], *, level: float = 0.95,
                     running: bool = True) -> tuple[NDArray[Any], NDArray[Any]]:
    """``(log max_{s<=t} K+_s(m), log max_{s<=t} K-_s(m))`` for each candidate mean ``m`` after the last score
    (``running=False``: at the last score only). ``m`` is outside the sequence at some time iff either is at least
    ``log(2 / (1 - level))``."""
    import numpy as np

    check_level(level)
    x = _unit_scores(scores, "scores")
    m = np.asarray(candidates, dtype=np.float64)
    both = _peaks(x, _plug_in_bets(x, level), np.concatenate((m, m)),
                  np.concatenate((np.ones(len(m)), -np.ones(len(m)))), running)
    return both[:len(m)], both[len(m):]


def paired_difference_cs(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """The CS of ``mean(a - b)`` after every pair (``a``, ``b`` in [0, 1], pairs in arrival order), at the last pair:
    ``(-1, 1)`` with no pair."""
    if len(a) != len(b):
        raise UsageError(f"paired scores need equal lengths (got {len(a)} and {len(b)})", field="b_scores")
    if not len(a):
        return -1.0, 1.0
    d = (_unit_scores(a, "a_scores") - _unit_scores(b, "b_scores") + 1) / 2
    low, high = mean_cs(d, level=level)
    return 2 * low - 1, 2 * high - 1


def matched_difference_cs(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """The CS of ``mean(a) - mean(b)`` for two arms of a split (each in its own arrival order): the k-th score of
    ``a`` matched with the k-th of ``b``, the paired CS on the ``min(len(a), len(b))`` pairs (the longer arm's
    later scores wait for their match); ``(-1, 1)`` while an arm is empty. Assumes what the module docstring says."""
    check_level(level)
    k = min(len(a), len(b))
    return paired_difference_cs(a[:k], b[:k], level=level)


def split_sequence_for(share: float | None) -> Literal["matched", "union"]:
    """The sequence for a split whose challenger gets ``share`` of the requests, as configured (``None``: not
    known): ``matched``, but ``union`` below a 10 % share or above 90 % (where the larger arm's records the matching
    leaves out make the union narrower). Never from the outcomes."""
    if share is not None and (share < MATCHED_MIN_SHARE or share > 1 - MATCHED_MIN_SHARE):
        return "union"
    return "matched"


def unpaired_difference_cs(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """The CS of ``mean(a) - mean(b)`` for two independent arms (each in its own arrival order), at their last
    records: each arm's CS at ``1 - (1 - level) / 2``, combined by the union bound; ``(-1, 1)`` while an arm is
    empty."""
    check_level(level)
    if not len(a) or not len(b):
        return -1.0, 1.0
    each = 1 - (1 - level) / 2
    low_a, high_a = mean_cs(a, level=each)
    low_b, high_b = mean_cs(b, level=each)
    return low_a - high_b, high_a - low_b


def _plug_in_bets(x: NDArray[Any], level: float) -> NDArray[Any]:
    """The predictable plug-in bets ``l_t`` (before the truncation at ``c / m`` or ``c / (1 - m)``)."""
    import numpy as np

    t = np.arange(1, len(x) + 1, dtype=np.float64)
    mu_hat = (0.5 + np.cumsum(x)) / (t + 1)
    sigma2 = (0.25 + np.cumsum((x - mu_hat) ** 2)) / (t + 1)
    sigma2_before = np.concatenate(([0.25], sigma2[:-1]))
    result: NDArray[Any] = np.sqrt(2 * math.log(2 / (1 - level)) / (sigma2_before * t * np.log1p(t)))
    return result


def _peaks(x: NDArray[Any], bets: NDArray[Any], m: NDArray[Any], sign: NDArray[Any],
           running: bool) -> NDArray[Any]:
    """The log capital betting on ``X > m`` (``sign`` +1) or ``X < m`` (-1) for each candidate: its maximum over time
    (``running``) or its last value, over the scores in blocks of ``CHUNK``."""
    import numpy as np

    with np.errstate(divide="ignore"):   # m = 0 (+) or m = 1 (-): no truncation needed, the factor stays >= 1
        cap = TRUNCATION / np.where(sign > 0, m, 1 - m)
    carry, top = np.zeros(len(m)), np.full(len(m), -np.inf)
    for start in range(0, len(x), CHUNK):
        bet = np.minimum(bets[start:start + CHUNK, None], cap)
        path = np.cumsum(np.log1p(sign * bet * (x[start:start + CHUNK, None] - m)), axis=0) + carry
        top, carry = np.maximum(top, path.max(axis=0)), path[-1]
    result: NDArray[Any] = top if running else carry
    return result


def _ends(x: NDArray[Any], level: float, *, running: bool) -> tuple[float, float]:
    """The two ends of ``{m : K+ < 2/alpha and K- < 2/alpha}``: the largest rejected grid point below it and the
    smallest above (0 or 1 where none is). Crossed (low > high) where the set is empty."""
    import numpy as np

    threshold, bets = math.log(2 / (1 - level)), _plug_in_bets(x, level)
    sign = np.concatenate((np.ones(GRID), -np.ones(GRID)))
    low, high = (0.0, 1.0), (0.0, 1.0)   # brackets: (rejected or 0, accepted) and (accepted, rejected or 1)
    for _ in range(PASSES):
        low_grid, high_grid = np.linspace(*low, GRID), np.linspace(*high, GRID)
        peaks = _peaks(x, bets, np.concatenate((low_grid, high_grid)), sign, running) >= threshold
        # K+ rejects a prefix of the low grid, K- a suffix of the high one.
        first_kept, first_out = int(np.argmin(peaks[:GRID])), int(np.argmax(peaks[GRID:]))
        if peaks[:GRID].all():    # every candidate rejected from below: the set is empty
            return 1.0, 0.0
        if peaks[GRID:].all():
            return 1.0, 0.0
        low = (float(low_grid[max(first_kept - 1, 0)]), float(low_grid[first_kept]))
        high = (float(high_grid[first_out - 1]), float(high_grid[first_out])) if peaks[GRID:].any() else \
            (float(high_grid[-1]), float(high_grid[-1]))
    return low[0], high[1]


def _unit_scores(scores: Sequence[float], what: str) -> NDArray[Any]:
    """``scores`` as a float array, after checking each is finite and in [0, 1] (``UsageError`` naming ``scores``)."""
    import numpy as np

    finite_scores(scores, what)
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero((x < 0) | (x > 1))
    if len(bad):
        raise UsageError(f"{what}[{bad[0]}] is {x[bad[0]]:g}: an anytime-valid sequence needs scores in [0, 1]",
                         field="scores")
    return x
