"""Holm's correction over the family of paired comparisons one report table makes.

A table of k backends makes k(k - 1)/2 comparisons, an outcome-matrix report some twenty: each tested at 5 % on
its own, about one in twenty of the comparisons with no true difference reads as a win. ``adjust_family`` applies
the Holm–Bonferroni step-down procedure to the exact tests' p-values (McNemar's, or the sign-flip test's) of the
comparisons of one table that get a verdict (a "no verdict" row, below its minimum n, decides nothing and is left
out of the family): the family-wise error rate, the chance of any false win among them, stays at most
``1 - level``. A win then needs the comparison's own CI to exclude 0 and its Holm-adjusted p to be below
``1 - level``; a row the correction stops says so ("not resolved after Holm's correction ..."). The CI shown stays
each comparison's own (unadjusted) interval: Holm's step-down tests have no simultaneous interval that agrees with
them row by row (Bonferroni's, at ``1 - (1 - level)/m``, would contradict Holm's later rejections), so the report
states the correction with the adjusted p and m beside the interval.
"""

from __future__ import annotations

from collections.abc import Sequence

from genroute.bench.stats import HOLM_DEMOTED, PairedComparison


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given: the i-th smallest times ``m - i + 1`` (i from 1), made
    non-decreasing in that order and capped at 1 (Holm 1979; ``statsmodels``' ``multipletests(method="holm")``)."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def exact_p(comparison: PairedComparison) -> float:
    """The comparison's exact-test p before any correction (1 when there was no pair to test)."""
    p = comparison.mcnemar_p if comparison.mcnemar_p is not None else comparison.permutation_p
    return 1.0 if p is None else p


def adjust_family(comparisons: Sequence[PairedComparison]) -> list[PairedComparison]:
    """``comparisons`` (one table's family) with Holm-adjusted p-values and verdicts, in the same order; each
    compared row records the method and the family size m (a family of one is its own test)."""
    tested = [i for i, c in enumerate(comparisons) if c.decision != "no_verdict"]
    adjusted = dict(zip(tested, holm([exact_p(comparisons[i]) for i in tested]), strict=True))
    m = len(tested)
    out = []
    for i, c in enumerate(comparisons):
        if i not in adjusted:
            out.append(c)
            continue
        p = adjusted[i]
        alpha = 1 - c.level
        update: dict[str, object] = {"adjustment": "holm", "family_size": m, "adjusted_p": p}
        if c.resolved and p >= alpha:
            update |= {"resolved": False, "winner": None, "decision": "no_difference",
                       "verdict": f"{HOLM_DEMOTED} over m = {m} comparisons (Holm-adjusted p = {p:.3g}, not below "
                                  f"{alpha:.2g}); unadjusted, {c.verdict}"}
        else:
            update["verdict"] = f"{c.verdict}; Holm-adjusted p = {p:.3g} (m = {m})"
        out.append(c.model_copy(update=update))
    return out
