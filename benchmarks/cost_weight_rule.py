"""The learned policy's compiled cost weight under each selection rule, on recorded per-record outcomes (no model
calls): what ``genroute bench`` compiles after a run, re-compiled from its ``results.jsonl``.

    python benchmarks/cost_weight_rule.py [--runs DIR [--prefix P]] [--tasks bfcl,nlupp] [--limit 340]

By default it reads the outcomes of the 2026-12-05 340-record runs kept in the repository,
``benchmarks/data/q340/<task>/`` (``results.jsonl.gz`` and ``run.json``; see the README there). ``--runs DIR``
reads another ``benchmarks/quality.py --out DIR`` directory: ``DIR/<task>/results.jsonl``; with ``--prefix P``,
runs made one task at a time with ``--out DIR/P<task>``: ``DIR/P<task>/<task>/results.jsonl``. The records are
``benchmarks/data/<task>/eval.jsonl`` sampled as that run sampled them (``--limit``, ``--seed``; refused when the
data differ from the run's, by ``run.json``'s digest). Each rule compiles on the
same seeded training split and is judged on the same held-out records: the compiled learned policy against the
best single backend chosen on the training split, paired (95 % CI: Newcombe's for 0/1 scores, else a bootstrap of
2,000 resamples), with the cost ratio and a paired CI of the cost difference. ``fixed`` is the cost weight 0.1 compiled before the rules existed.
A task's comparisons (every rule against the best single and against ``fixed``; two rules that chose the same weight
make one comparison, counted once) are one family: a verdict is
"resolved" only when the CI excludes 0 and the exact test's Holm-adjusted p is below 0.05 (as ``genroute bench``
reports them; before, a CI that excluded 0 was called resolved).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute.bench.stats import PairedComparison

REPO = Path(__file__).resolve().parent.parent
RULES = ("fixed", "best", "one_se", "resolved")


@dataclass
class RuleRow:
    """One rule's compile on a task: the learned policy against the best single and against ``fixed``."""

    rule: str
    weight: str
    learned: Any
    best: Any
    cmp: PairedComparison
    cost_ci: tuple[float, float]
    seconds: float
    vs_fixed: PairedComparison | None = None
    fixed_cost: float = 0.0
    #: What ``cmp`` and ``vs_fixed`` test (``multiplicity.hypothesis``): two rules that chose one weight repeat one.
    hypotheses: list[Hashable] = field(default_factory=list)


def run_task(task: str, args: argparse.Namespace, embedder: object) -> list[str]:
    from genroute.bench.clusters import text_groups
    from genroute.bench.compile import compile_policy
    from genroute.bench.multiplicity import adjust_family, hypothesis
    from genroute.bench.stats import compare_paired, paired_bootstrap_ci
    from quality_report import recorded_run

    _, _, records, outcomes = recorded_run(args.runs, task, prefix=args.prefix, data=args.data, limit=args.limit,
                                           seed=args.seed)
    rows: list[RuleRow] = []
    details: list[str] = []
    before = None  # the fixed weight's row: "after - before", paired
    for rule in args.rules:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = compile_policy(outcomes, records, tmp, seed=args.seed, embedder=embedder,
                                    cost_weight_rule=None if rule == "fixed" else rule)
            seconds = time.perf_counter() - start
        by_name = {r.name: r for r in report.rows}
        learned, best = by_name["compiled learned"], by_name["best single (train)"]
        ids = sorted(best.scores)
        a, b = [learned.scores[i] for i in ids], [best.scores[i] for i in ids]
        text = {r.id: r.input for r in records}
        groups = text_groups([text[i] for i in ids])  # records sharing an input are one input, as in the bench
        row = RuleRow(rule=rule, learned=learned, best=best, seconds=seconds,
                      weight=f"{report.learned_cost_weight:.3g}" if report.learned_cost_weight is not None else "–",
                      cmp=compare_paired(a, b, a="learned", b="best single", seed=args.seed, groups=groups),
                      cost_ci=paired_bootstrap_ci([learned.costs[i] for i in ids], [best.costs[i] for i in ids],
                                                  seed=args.seed, groups=groups),
                      hypotheses=[hypothesis(a, b, ids)])
        if rule == "fixed":
            before = learned
        if before is not None and rule != "fixed":
            fixed = [before.scores[i] for i in ids]
            row.vs_fixed = compare_paired(a, fixed, a=rule, b="fixed", seed=args.seed, groups=groups)
            row.hypotheses.append(hypothesis(a, fixed, ids))
            row.fixed_cost = before.cost_per_request_usd
        rows.append(row)
        choice = report.learned_cost_weight_choice
        if choice is not None:
            details.append(f"{task} {rule}: out of fold (n = {choice['n']}) chosen {choice['quality']:.3f} at "
                           f"${choice['cost_usd'] * 1000:.4f}/1k; best {choice['best_quality']:.3f} at "
                           f"${choice['best_cost_usd'] * 1000:.4f}/1k (weight {choice['best_weight']:.3g}); "
                           f"paired SE {choice['standard_error']:.3f}")
    # The task's comparisons (each rule against the best single, and against the fixed weight) are one family:
    # a verdict needs the CI to exclude 0 and the exact test's Holm-adjusted p below 0.05, as in the bench report;
    # two rules that chose the same weight make the same comparison, counted once.
    family = adjust_family([c for row in rows for c in (row.cmp, row.vs_fixed) if c is not None],
                           [key for row in rows for key in row.hypotheses])
    for row in rows:
        row.cmp = family.pop(0)
        row.vs_fixed = family.pop(0) if row.vs_fixed is not None else None
    lines: list[str] = []
    for row in rows:
        cmp, learned, best = row.cmp, row.learned, row.best
        share = learned.cost_per_request_usd / best.cost_per_request_usd if best.cost_per_request_usd else float("nan")
        picks = ", ".join(f"{k} {v}" for k, v in sorted(learned.picks.items()))
        vs_fixed = "–"
        if row.vs_fixed is not None:
            d = row.vs_fixed
            vs_fixed = (f"{d.difference:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}] {_verdict(d)}, cost "
                        f"{learned.cost_per_request_usd / row.fixed_cost:.0%} of fixed")
        lines.append(f"| {task} | {row.rule} | {row.weight} | {cmp.n} | {learned.quality:.3f} | "
                     f"{best.quality:.3f} | {cmp.difference:+.3f} [{cmp.ci[0]:+.3f}, {cmp.ci[1]:+.3f}] "
                     f"{_verdict(cmp)} | {share:.0%} | [{row.cost_ci[0] * 1000:+.4f}, {row.cost_ci[1] * 1000:+.4f}] | "
                     f"{vs_fixed} | {picks} | {row.seconds:.0f} s |")
        print(lines[-1], flush=True)
    for line in details:
        print(f"<!-- {line} -->")
    return lines


def _verdict(c: PairedComparison) -> str:
    """resolved / not resolved after Holm's correction over the task's comparisons, with the adjusted p and m."""
    adjusted = "–" if c.adjusted_p is None else f"{c.adjusted_p:.3g}"
    holm = f"(Holm p = {adjusted}, m = {c.family_size})"
    return f"resolved {holm}" if c.decision == "win" else f"not resolved {holm}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=REPO / "benchmarks" / "data" / "q340",
                        help="a quality.py --out directory (default: the 340-record runs kept in the repository)")
    parser.add_argument("--prefix", default="",
                        help="runs made one task at a time, each with --out DIR/<prefix><task>")
    parser.add_argument("--data", type=Path, default=REPO / "benchmarks" / "data")
    parser.add_argument("--tasks", default="sentiment,banking77,xquad,bfcl,nlupp")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--limit", type=int, default=340)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: a temporary one)")
    args = parser.parse_args()
    args.rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in args.rules if r not in RULES]
    if unknown:
        parser.error(f"unknown rule(s) {', '.join(unknown)} (known: {', '.join(RULES)})")
    from genroute.bench.embedding_cache import CachedEmbedder
    from genroute.knowledge.embedders import LocalEmbedder

    cache = args.cache or Path(tempfile.mkdtemp(prefix="cwr-emb-"))
    embedder = CachedEmbedder(LocalEmbedder(intra_op_threads=1), cache)
    print("| task | rule | cost weight (held-out model) | n held out | learned | best single | learned − best single "
          "[95 % CI] | cost share of best single | cost difference $/1k [95 % CI] | vs fixed 0.1 (before) [95 % CI] | "
          "routed to | compile |")
    print("|---|---|---|---:|---:|---:|---|---:|---|---|---|---:|")
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        run_task(task, args, embedder)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
