"""Paired comparisons in reports: every "A vs B" on the same records, with ``genroute.bench.stats``.

- ``backend_comparisons``: every pair of benchmarked backends on the records both answered (a failed request
  scores 0, as in the summaries), with no verdict below ``MIN_PAIRED_N`` shared records;
- ``compiled_comparisons``: each compiled policy against every single backend (and baseline) on the held-out
  split, refusing a verdict below ``min_n`` held-out records unless forced;
- ``comparison_markdown``: the paired-difference table.

Each of the two lists is one family for Holm's correction (``genroute.bench.multiplicity``): its verdicts hold
the chance of any false win among its comparisons at 5 %; two rows that compare the same two score vectors on the
same records ("best single" and that backend by its name) are one comparison, counted once.

Given the records' inputs (``clusters.input_of``), records that share an input count as one input: n is the number
of distinct inputs, and the minimums above count inputs (``genroute.bench.clusters``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import TYPE_CHECKING

from genroute.bench.clusters import groups_for, sample_size
from genroute.bench.multiplicity import adjust_family, hypothesis
from genroute.bench.report import markdown_row
from genroute.bench.runner import POLICY_TARGET, Outcome
from genroute.bench.stats import MIN_PAIRED_N, PairedComparison, align, compare_paired

if TYPE_CHECKING:
    from genroute.bench.compile import CompileReport

#: Held-out records below which a compiled-policy comparison prints no verdict unless forced.
MIN_VERDICT_N = 100


def scores_by_target(outcomes: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """``{target: {record_id: score}}`` (failed requests score 0)."""
    table: dict[str, dict[str, float]] = {}
    for o in outcomes:
        table.setdefault(o.backend, {})[o.record_id] = o.score if o.ok else 0.0
    return table


def compare_named(a: str, b: str, scores: Mapping[str, Mapping[str, float]], *, min_n: int = MIN_PAIRED_N,
                  force: bool = False, seed: int = 0, n_boot: int = 2000,
                  inputs: Mapping[str, str] | None = None) -> PairedComparison:
    """``a`` vs ``b`` on the records both have scores for (``inputs``: record id -> input key, so that records
    sharing an input count as one; ``clusters.input_of`` makes it)."""
    ids, xs, ys = align(scores[a], scores[b])
    return compare_paired(xs, ys, a=a, b=b, min_n=min_n, force=force, seed=seed, n_boot=n_boot,
                          groups=groups_for(ids, inputs))


def backend_comparisons(outcomes: Sequence[Outcome], *, seed: int = 0, n_boot: int = 2000,
                        min_n: int = MIN_PAIRED_N, force: bool = False,
                        inputs: Mapping[str, str] | None = None) -> list[PairedComparison]:
    """Every pair of targets (backends and ``@policy``), in the order they first appear, on shared records
    (``inputs``: as ``compare_named``), their verdicts corrected over the family (Holm)."""
    scores = scores_by_target(outcomes)
    pairs = [(a, b) for a, b in combinations(scores, 2) if set(scores[a]) & set(scores[b])]
    return _family(pairs, scores, min_n=min_n, force=force, seed=seed, n_boot=n_boot, inputs=inputs)


def compiled_comparisons(report: CompileReport, *, min_n: int = MIN_VERDICT_N, force: bool = False,
                         seed: int = 0, n_boot: int = 2000,
                         inputs: Mapping[str, str] | None = None) -> list[PairedComparison]:
    """Each compiled policy against every other row that is not a compiled policy or the oracle (``inputs``: as
    ``compare_named``), their verdicts corrected over the family (Holm)."""
    scores = {row.name: row.scores for row in report.rows if row.scores}
    compiled = [n for n in scores if n.startswith("compiled")]
    others = [n for n in scores if not n.startswith(("compiled", "oracle")) and n != POLICY_TARGET]
    return _family([(a, b) for a in compiled for b in others], scores, min_n=min_n, force=force, seed=seed,
                   n_boot=n_boot, inputs=inputs)


def _family(pairs: Sequence[tuple[str, str]], scores: Mapping[str, Mapping[str, float]], *, min_n: int,
            force: bool, seed: int, n_boot: int, inputs: Mapping[str, str] | None) -> list[PairedComparison]:
    """``compare_named`` of each pair, corrected as one family (Holm), a comparison two rows state (the same two
    score vectors on the same records: "best single" and that backend by its name) counted once."""
    comparisons = [compare_named(a, b, scores, min_n=min_n, force=force, seed=seed, n_boot=n_boot, inputs=inputs)
                   for a, b in pairs]
    aligned = [align(scores[a], scores[b]) for a, b in pairs]
    return adjust_family(comparisons, [hypothesis(xs, ys, ids) for ids, xs, ys in aligned])


COLUMNS = ("A", "B", "n", "mean A", "mean B", "A − B [95 % CI, unadjusted]", "McNemar p", "sign-flip p",
           "Holm-adjusted p (m)", "smallest detectable", "verdict")


def comparison_rows(comparisons: Sequence[PairedComparison]) -> list[list[str]]:
    """The paired-difference table's cells."""
    rows = []
    for c in comparisons:
        rows.append([
            c.a, c.b, sample_size(c.n, c.n_records),
            f"{c.mean_a:.3f}", f"{c.mean_b:.3f}",
            f"{c.difference:+.3f} [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}]",
            "–" if c.mcnemar_p is None else f"{c.mcnemar_p:.3g}",
            "–" if c.permutation_p is None else f"{c.permutation_p:.3g}",
            "–" if c.adjusted_p is None else f"{c.adjusted_p:.3g} ({c.family_size})",
            "∞" if math.isinf(c.min_detectable) else f"{c.min_detectable:.3f}",
            # A row that repeats an earlier one's comparison (its p and m are that one's) names it.
            c.short if c.repeats is None else f"{c.short} (the same comparison as {c.repeats})",
        ])
    return rows


def comparison_markdown(comparisons: Sequence[PairedComparison]) -> str:
    """The paired differences as a Markdown table."""
    lines = [markdown_row(COLUMNS), "|" + "---|" * len(COLUMNS)]
    lines += [markdown_row(row) for row in comparison_rows(comparisons)]
    return "\n".join(lines) + "\n"


def explain(min_n: int | None = None, *, level: float = 0.95, held_out: bool = True, repeated: bool = False) -> str:
    """The sentence that says how to read the table (``min_n``: below it no verdict; ``held_out``: of what;
    ``repeated``: some input repeats, so n counts inputs)."""
    text = (f"Paired on the same records: A − B with a paired {level * 100:g} % CI (Newcombe's score interval for "
            "0/1 scores, else the bounded t interval of the differences). A win is called only when "
            f"the CI excludes 0 and an exact test agrees at the same level (p < {1 - level:.2g}): McNemar's for 0/1 "
            "scores, else the paired sign-flip permutation test. Otherwise no difference was detected at that n "
            "(\"not resolved\" where the CI excludes 0 and the exact test does not agree), "
            "and \"smallest detectable\" is the difference that n would detect with 80 % power. The verdicts are "
            "corrected for the number of rows: Holm's step-down correction over the m comparisons of this table that "
            "get a verdict (two rows that compare the same scores on the same records, such as best single and that "
            "backend by its name, are one comparison), on the exact tests' p-values, so the chance of any false win among them is at most "
            f"{(1 - level) * 100:.2g} %. A win needs the Holm-adjusted p below {1 - level:.2g} too; the CI shown is "
            "each comparison's own (unadjusted), so a CI that excludes 0 can read \"not resolved after Holm\".")
    if min_n:
        what = "Compiled-policy verdicts need" if held_out else "A verdict needs"
        text += (f" {what} at least {min_n} {'held-out' if held_out else 'shared'} records; below that a "
                 "difference is reported as not resolved.")
    if repeated:
        text += (" Records with the same input (up to case, runs of whitespace and Unicode composition) count as one "
                 "input: each input's mean scores are compared, n is the number of distinct inputs and the minimum "
                 "counts inputs.")
    return text
