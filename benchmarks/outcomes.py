"""Routers judged on public outcome matrices (no model calls): LLMRouter's dcrouter set and MMLU-Pro.

    python benchmarks/outcomes.py                       # both sets; embeddings cached in OUT/embeddings
    python benchmarks/outcomes.py --sets dcrouter --shared-data ../shared/data --limit 200   # a quick check

Each set goes through ``genroute.bench.compile_outcomes`` (what ``genroute bench --outcomes`` runs): a seeded
70/30 split by input text; stats, the cost_aware policy and the learned router (kNN, logistic regression and
an MLP on MiniLM embeddings, with and without the task label; estimator and operating points chosen on a
5-fold cross-validation on the training records) compiled on the 70 %; every policy and baseline scored on the 30 %.

Cost models (neither set has per-query token counts): input tokens = the query's whitespace words (LLMRouter's
own estimate), output tokens = ``--output-tokens`` (256) per request, the same for every candidate.
dcrouter: its candidates' list prices. MMLU-Pro: ``benchmarks/data/router/mmlu_pro_prices.json`` — open
models at $0.01 per 1M tokens per billion parameters, Gemini 1.5 Flash/Pro at their list prices; 28 candidates
(DeepSeek-Coder-V2 left out: it lacks 1,154 outcomes, most of chemistry and engineering).

Prints, per set, the rows, curves and paired comparisons, and the goal lines for RESULTS.md; writes
OUT/<set>/ (compiled.json, curve.png, report.md/html, models).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import shared_data

from genroute.bench.offline import OfflineReport, compile_outcomes
from genroute.bench.outcomes import load_pricing
from genroute.knowledge.embedders import LocalEmbedder

REPO = Path(__file__).resolve().parent.parent
SETS = {
    "dcrouter": ("router/dcrouter_train.jsonl", "router/dcrouter_candidates.json", 0.5, 0.4),
    "mmlu_pro": ("router/mmlu_pro.jsonl.gz", str(REPO / "benchmarks/data/router/mmlu_pro_prices.json"), 0.5, 0.4),
}
#: Candidates left out: DeepSeek-Coder-V2 has no outcome on 1,154 of MMLU-Pro's 8,400 questions (530 of 773
#: chemistry, 578 of 671 engineering); keeping it would drop those records and skew the task mix.
EXCLUDE = {"mmlu_pro": ("DeepSeek-Coder-V2",)}


def goal_lines(name: str, report: OfflineReport, max_share_task: float | None, max_share_text: float | None) -> list[str]:
    """The issue's goals, each with its paired comparison."""
    rows = {r.name: r for r in report.rows}
    best, per_task = rows["best single (train)"], rows["per-task best (train)"]
    lines = [f"{name}: n_eval = {report.n_eval}; best single {best.quality:.3f} at ${best.cost_per_request_usd * 1000:.4f}"
             f"/1k; per-task best {per_task.quality:.3f} at ${per_task.cost_per_request_usd * 1000:.4f}/1k"]
    for comp in report.comparisons:
        share = {"best single (train)": max_share_task if "task" in comp.router else max_share_text}.get(comp.baseline)
        ratio = "–" if comp.cost_ratio is None else f"{comp.cost_ratio:.1%}"
        target = f" (goal: quality >= baseline at <= {share:.0%} cost)" if share else ""
        lines.append(f"  {comp.router} vs {comp.baseline}: quality {comp.quality_difference:+.3f} "
                     f"[{comp.ci[0]:+.3f}, {comp.ci[1]:+.3f}] at {ratio} of its cost{target}")
    for curve in report.curves:
        reach = curve.cost_at_best_single_quality
        lines.append(f"  curve {curve.name}: AIQ {curve.aiq:.3f}, APGR {curve.apgr if curve.apgr is None else round(curve.apgr, 3)}, "
                     f"cost saved at 95% {curve.cost_saved_at_95 if curve.cost_saved_at_95 is None else f'{curve.cost_saved_at_95:.1%}'}, "
                     f"cost at best-single quality "
                     f"{'not reached' if reach is None else f'{reach / best.cost_per_request_usd:.1%} of best single'}")
    return lines


def estimators(text: str) -> list[dict[str, object]]:
    """``knn:K``, ``logreg[:L2]``, ``mlp``, ``blend:K``, ``pairwise[:L2]``, each optionally followed by
    ``@front`` (choose among the training cost–quality front only) -> estimator specs."""
    specs: list[dict[str, object]] = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        item, front, _ = item.partition("@front")
        method, _, value = item.partition(":")
        spec: dict[str, object] = {"method": method}
        if value:
            l2 = method in ("logreg", "pairwise")
            spec["l2" if l2 else "k"] = float(value) if l2 else int(value)
        if front:
            spec["candidates"] = "front"
        specs.append(spec)
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared_data.add_option(parser)
    parser.add_argument("--sets", default="dcrouter,mmlu_pro")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "outcomes"))
    parser.add_argument("--embedding-cache", default=None, help="default: OUT/embeddings (shared by the sets)")
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--usd-per-billion", type=float, default=0.01)
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-learned", action="store_true",
                        help="baselines and cost_aware only (no embeddings, a minute per set)")
    parser.add_argument("--limit", type=int, default=None, help="first N records of each set (a quick check)")
    parser.add_argument("--sample", type=int, default=None,
                        help="a seeded random sample of N records of each set (fewer embeddings to compute)")
    parser.add_argument("--estimators", default=None,
                        help="comma-separated learned estimators, e.g. knn:100,logreg:0.01,blend:40,pairwise,"
                             "knn:250@front (default: the ones compile_outcomes compares)")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime threads of the embedder (the machine is shared: default 1)")
    args = parser.parse_args()
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)} (known: {', '.join(SETS)})")
    data_dir = shared_data.resolve(args.shared_data, *(SETS[n][0] for n in names))
    out = Path(args.out)
    cache = Path(args.embedding_cache) if args.embedding_cache else out / "embeddings"
    summary = []
    for name in names:
        data, prices, share_task, share_text = SETS[name]
        prices_path = Path(prices) if Path(prices).is_absolute() else data_dir / prices
        pricing = load_pricing(prices_path, output_tokens=args.output_tokens,
                               usd_per_1m_per_billion=args.usd_per_billion)
        source: object = data_dir / data
        if args.limit or args.sample:
            import random

            from genroute.bench.outcomes import read_outcome_records

            records = [record for _, record in read_outcome_records(source)]  # type: ignore[arg-type]
            if args.sample and args.sample < len(records):  # seeded, kept in file order
                keep = sorted(random.Random(args.seed).sample(range(len(records)), args.sample))
                records = [records[i] for i in keep]
            source = records[: args.limit] if args.limit else records
        start = time.perf_counter()
        # The MMLU-Pro prices file lists exactly its 29 models; dcrouter's lists more models than the data has.
        candidates = [c for c in pricing.prices if c not in EXCLUDE[name]] if name in EXCLUDE else None
        report = compile_outcomes(source, out_dir=out / name, pricing=pricing, holdout=args.holdout,  # type: ignore[arg-type]
                                  candidates=candidates, seed=args.seed, cache_dir=cache, learned=not args.no_learned,
                                  embedder=None if args.no_learned else LocalEmbedder(intra_op_threads=args.threads),
                                  **({"specs": estimators(args.estimators)} if args.estimators else {}),
                                  title=f"genroute bench --outcomes {name}")
        wall = time.perf_counter() - start
        print(f"\n## {name} ({wall:.0f} s)\n")
        print(report.markdown())
        summary += goal_lines(name, report, share_task, share_text) + [f"  wall time {wall:.0f} s", ""]
    print("\n".join(["", "## Goals", "", *summary]))


if __name__ == "__main__":
    main()
