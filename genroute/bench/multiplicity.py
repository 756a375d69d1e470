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

m counts hypotheses, not rows: a table can state one comparison twice (the compiled-policy table compares a policy
with "best single" and with that same backend by its own name, and with "per-task best" when it is that backend
too). Given each row's ``hypothesis`` (``hypothesis``: the two score vectors on the same records, either way round),
rows that repeat a comparison are tested once, and each shows that one test's adjusted p and verdict; a repeat names
the row it repeats (``PairedComparison.repeats``). Counting the copies would make the correction more conservative
than the family it controls.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from genroute.bench.stats import HOLM_DEMOTED, PairedComparison
from genroute.errors import UsageError


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


def hypothesis(a_scores: Iterable[float], b_scores: Iterable[float], records: Iterable[Hashable] = ()) -> Hashable:
    """What a paired comparison tests, for ``adjust_family``: its two score vectors on ``records`` (ids, in the
    scores' order), the same whichever side is A (the exact tests are two-sided)."""
    key = tuple(records)
    a, b = tuple(map(float, a_scores)), tuple(map(float, b_scores))
    return key, min(a, b), max(a, b)


def adjust_family(comparisons: Sequence[PairedComparison],
                  hypotheses: Sequence[Hashable] | None = None) -> list[PairedComparison]:
    """``comparisons`` (one table's family) with Holm-adjusted p-values and verdicts, in the same order; each
    compared row records the method and the family size m (a family of one is its own test). ``hypotheses``
    (one ``hypothesis`` a row): rows with the same one are one comparison, counted once in m and given its one
    adjusted p; without it every row is its own."""
    if hypotheses is not None and len(hypotheses) != len(comparisons):
        raise UsageError(f"one hypothesis a comparison: got {len(hypotheses)} for {len(comparisons)} comparisons",
                         field="hypotheses")
    keys: Sequence[Hashable] = range(len(comparisons)) if hypotheses is None else hypotheses
    first: dict[Hashable, int] = {}  # each distinct hypothesis that gets a verdict -> the row that states it first
    for i, c in enumerate(comparisons):
        if c.decision != "no_verdict":
            first.setdefault(keys[i], i)
    tested = list(first.values())
    by_key = dict(zip(first, holm([exact_p(comparisons[i]) for i in tested]), strict=True))
    m = len(tested)
    out = []
    for i, c in enumerate(comparisons):
        if c.decision == "no_verdict":
            out.append(c)
            continue
        p = by_key[keys[i]]
        alpha = 1 - c.level
        update: dict[str, object] = {"adjustment": "holm", "family_size": m, "adjusted_p": p}
        if c.resolved and p >= alpha:
            update |= {"resolved": False, "winner": None, "decision": "no_difference",
                       "verdict": f"{HOLM_DEMOTED} over m = {m} comparisons (Holm-adjusted p = {p:.3g}, not below "
                                  f"{alpha:.2g}); unadjusted, {c.verdict}"}
        else:
            update["verdict"] = f"{c.verdict}; Holm-adjusted p = {p:.3g} (m = {m})"
        if first[keys[i]] != i:  # its verdict says so in words; ``repeats`` names the row for code to read
            stated = comparisons[first[keys[i]]]
            update["repeats"] = f"{stated.a} vs {stated.b}"
            update["verdict"] = f"{update['verdict']}; the same comparison as {update['repeats']}, counted once"
        out.append(c.model_copy(update=update))
    return out
