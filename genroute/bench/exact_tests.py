"""The exact tests of a paired comparison (``genroute.bench.stats.compare_paired`` calls a win only when one agrees
with the CI).

- ``mcnemar_exact``: McNemar's exact (binomial) two-sided test for 0/1 scores, from the discordant pairs.
- ``sign_flip_p``: the exact paired sign-flip permutation test of ``mean(a - b) = 0`` (every flip enumerated up to
  ``EXACT_FLIPS`` non-zero differences, seeded Monte Carlo above; McNemar's test is this test on 0/1 scores).

Both hold their level at any n; ``genroute.bench.multiplicity`` corrects their p-values over a report's family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import ConfigDict

from genroute.bench.score_checks import is_binary, paired_differences
from genroute.errors import UsageError
from genroute.public_model import PublicModel

#: Most sign-flip sums held at once by ``sign_flip_p`` (8 MB of signs and sums).
_FLIP_CELLS = 1_000_000


class McNemar(PublicModel):
    """McNemar's exact test: records only A got right, only B got right, and the two-sided p-value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    a_only: int
    b_only: int
    p_value: float


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> McNemar:
    """Exact two-sided McNemar test for 0/1 scores: ``min(1, 2 * P(X <= min(a_only, b_only)))``, X ~ Bin(d, ½)."""
    paired_differences(a, b)
    if not (is_binary(a) and is_binary(b)):
        raise UsageError("McNemar's test needs 0/1 scores", field="scores")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 0)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if x == 0 and y == 1)
    d = a_only + b_only
    tail = sum(math.comb(d, k) for k in range(min(a_only, b_only) + 1)) / 2 ** d
    return McNemar(a_only=a_only, b_only=b_only, p_value=min(1.0, 2 * tail))


#: Up to this many non-zero differences ``sign_flip_p`` enumerates every flip (2^16 sums); above, it draws them.
EXACT_FLIPS = 16
#: Random sign flips drawn above ``EXACT_FLIPS`` (seeded); p is then (1 + hits) / (1 + draws), never 0.
N_FLIPS = 10_000


def sign_flip_p(a: Sequence[float], b: Sequence[float], *, n_flips: int = N_FLIPS, seed: int = 0) -> float:
    """Two-sided p of the paired sign-flip permutation test of ``mean(a - b) = 0``: the share of sign flips of
    the differences whose sum is at least as far from 0 as the observed one (exact up to ``EXACT_FLIPS``
    non-zero differences, seeded Monte Carlo above). With no true difference each difference is as likely
    negative as positive, which is all the test assumes: it holds its level at any n (p = 1 at n = 1)."""
    import numpy as np

    diffs = np.asarray(paired_differences(a, b), dtype=float)
    diffs = diffs[diffs != 0]  # a zero flips to itself
    m = len(diffs)
    if m == 0:
        return 1.0
    observed = abs(float(diffs.sum()))
    # Sums equal in exact arithmetic may differ in the last bits: count those as "at least as far".
    threshold = observed - 1e-9 * float(np.abs(diffs).sum())
    if m <= EXACT_FLIPS:
        signs = ((np.arange(2 ** m)[:, None] >> np.arange(m)) & 1) * 2 - 1
        return float(np.mean(np.abs(signs @ diffs) >= threshold))
    rng = np.random.default_rng(seed)
    rows = max(1, _FLIP_CELLS // m)
    hits = 0
    for start in range(0, n_flips, rows):
        signs = rng.integers(0, 2, size=(min(rows, n_flips - start), m), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ diffs) >= threshold))
    return (1 + hits) / (1 + n_flips)
