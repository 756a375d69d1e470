"""Graduation, end to end and offline: an app serves sentiment through few-shot ICL on the embedded Gemma 3 270M,
gets labeled feedback (DynaSent reviews standing in for users), graduates the task to a local LoRA adapter,
measures it as a shadow on live traffic, decides on promotion with paired statistics, and serves with it.

    python benchmarks/graduation.py [--shared-data ../shared/data]   # 300 feedback / 150 shadow / 50 after
    python benchmarks/graduation.py --train 40 --shadow 20 --after 10 --epochs 1 --max-steps 4   # a smoke run

Phases (disjoint records, seeded): (1) ``--train`` requests served by ICL, each followed by
``router.feedback(result, label=gold)`` with ``capture`` on; (2) ``genroute.graduation.agraduate``: export the
captured examples (deduplicated, validated), LoRA-tune, add the tuned backend as a shadow challenger;
(3) ``--shadow`` requests served by ICL with the tuned model shadowing each (one at a time, so the shadow's
latency is not inflated by the served call) and labeled feedback: paired outcomes; (4) ``adecide``, once, at the
planned end of the shadow phase: promote when the paired quality difference's fixed-horizon 95 % CI lower bound is
above ``-margin`` and it is cheaper; (5) ``--after``
requests served by whatever the router now routes to. Local calls cost $0; costs are cloud-equivalent (the same
tokens on gemini-2.5-flash). Data: ``dynasent_r2.jsonl`` of the shared data (``--shared-data``, see
``benchmarks/shared_data.py``; neutral rows dropped) by default, or ``--data``; ICL examples from
``benchmarks/data/sentiment/examples.jsonl``, which traffic never repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "sentiment"
LABELS = ("negative", "positive")


def choice() -> dict[str, Any]:
    """Constrain answers to the label set (the base model continues text; see benchmarks/quality.py)."""
    return {"max_output_tokens": 16, "response_schema": {"type": "string", "enum": list(LABELS)}}


def router_config(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    engine: dict[str, Any] = {"kind": "local", "max_output_tokens": 64, "n_threads": args.threads}
    icl = {"kind": "icl", "engine": "local", "model": "gemma-3-270m", "collection": "graduation-examples", "k": 4,
           "generation": choice(), "instructions": "Label each review as positive or negative.",
           "example_template": "Review: {{ input }}\nSentiment: {{ output }}",
           "query_template": "Review: {{ input }}\nSentiment:", "stop": ["\nReview:"]}
    return {"engines": {"local": engine}, "backends": {"icl": icl}, "knowledge": {"path": str(work / "chroma")},
            "policy": {"kind": "static", "backend": "icl"},
            "outcomes": {"path": str(work / "outcomes.db"), "scorer": "label_accuracy", "capture": True}}


def traffic(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Binary DynaSent records not in the ICL pool, shuffled (seeded)."""
    pool = [json.loads(line) for line in (DATA / "examples.jsonl").read_text().splitlines() if line.strip()]
    seen_ids = {r["metadata"]["id"] for r in pool}
    seen_text = {" ".join(r["input"].lower().split()) for r in pool}
    if args.data is None:
        import shared_data

        args.data = str(shared_data.resolve(args.shared_data, "dynasent_r2.jsonl") / "dynasent_r2.jsonl")
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("label") in LABELS and r["metadata"].get("id") not in seen_ids
            and " ".join(r["input"].lower().split()) not in seen_text]
    unique = list({" ".join(r["input"].lower().split()): r for r in rows}.values())
    random.Random(args.seed).shuffle(unique)
    need = args.train + args.shadow + args.after
    if len(unique) < need:
        raise SystemExit(f"{args.data} has {len(unique)} usable records; {need} are needed")
    return unique


async def serve(router: Any, rows: list[dict[str, Any]], *, shadows: bool) -> dict[str, list[dict[str, Any]]]:
    """Serve each row, send its label as feedback; one request at a time (shadows drained before the next).

    Returns, per backend that answered (served or shadow), its scored sides."""
    sides: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        result = await router.agenerate(row["input"], task="sentiment")
        if shadows:
            await router.adrain()
        record = await router.afeedback(result, label=row["label"])
        for backend, side in record.outcomes.items():
            sides.setdefault(backend, []).append({
                "backend": backend, "role": side.role, "score": side.score, "latency_s": side.latency_s,
                "cost": side.cloud_equivalent_cost_usd or 0.0, "input_tokens": side.input_tokens})
    return sides


def row(name: str, items: list[dict[str, Any]]) -> str:
    from genroute.bench.stats import quality_ci

    scores = [float(i["score"]) for i in items]
    low, high = quality_ci(scores)
    backends = ", ".join(sorted({i["backend"] for i in items}))
    return (f"| {name} | {backends} | {len(items)} | {statistics.fmean(scores):.3f} [{low:.3f}, {high:.3f}] | "
            f"{statistics.median(i['latency_s'] for i in items):.3f} | "
            f"{statistics.fmean(i['input_tokens'] for i in items):.0f} | "
            f"{statistics.fmean(i['cost'] for i in items) * 1000:.4f} |")


async def main(args: argparse.Namespace) -> int:
    from genroute import Router
    from genroute.graduation import adecide, agraduate
    from genroute.graduation.promote import per_1k, seconds
    from genroute.knowledge.examples import aload_examples
    from genroute.tuning.local_lora import LocalTuneConfig

    started = time.perf_counter()
    rows = traffic(args)
    train, shadow = rows[: args.train], rows[args.train: args.train + args.shadow]
    after = rows[args.train + args.shadow: args.train + args.shadow + args.after]
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="genroute-graduation-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "outcomes.db").unlink(missing_ok=True)
    tune = LocalTuneConfig(epochs=args.epochs, learning_rate=args.learning_rate, threads=args.threads,
                           max_steps=args.max_steps, rank=args.rank, progress=False, seed=args.seed)
    async with Router.from_config(router_config(args, work)) as router:
        await aload_examples(router.resources.knowledge, [DATA / "examples.jsonl"], collection="graduation-examples")
        router._refresh_facts()
        t0 = time.perf_counter()
        before = await serve(router, train, shadows=False)
        t_before = time.perf_counter() - t0
        report = await agraduate(router, "sentiment", out_dir=work / "graduate", name="sentiment_lora", tune=tune,
                                 eval_share=0.0, min_examples=min(20, args.train), seed=args.seed,
                                 engine_options={"max_output_tokens": 64, "n_threads": args.threads},
                                 backend_options={"generation": choice()})
        t0 = time.perf_counter()
        paired = await serve(router, shadow, shadows=True)
        t_shadow = time.perf_counter() - t0
        # One decision, after a shadow phase whose size was fixed in advance: the fixed-horizon CI is valid for it
        # (an application deciding at every refresh keeps the anytime-valid default).
        report = await adecide(router, "sentiment", challenger="sentiment_lora", incumbent="icl",
                               margin=args.margin, min_n=args.min_n, report=report, sequential=False)
        t0 = time.perf_counter()
        served_after = await serve(router, after, shadows=False)
        t_after = time.perf_counter() - t0
    wall = time.perf_counter() - started
    p = report.promotion
    assert p is not None
    table = ["| phase | served by | n | quality (95 % CI) | p50 s | input tokens | cloud-eq. $/1k |",
             "|---|---|---:|---|---:|---:|---:|",
             *(row("before: serving, feedback captured", items) for items in before.values()),
             *(row(f"shadow phase: {items[0]['role']}", items) for items in paired.values()),
             *(row("after promotion" if p.promote else "after (not promoted)", items)
               for items in served_after.values())]
    c = p.comparison
    paired = (f"Shadow phase, paired on the same {p.n} requests: {p.challenger} {c.mean_a:.3f} vs {p.incumbent} "
              f"{c.mean_b:.3f}, difference {c.difference:+.3f}, 95 % CI [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}]"
              + (f", McNemar exact p = {c.mcnemar_p:.3g} ({c.a_only} vs {c.b_only} discordant)"
                 if c.mcnemar_p is not None else "")
              + f"; p50 latency {seconds(p.challenger_latency_p50_s)} vs {seconds(p.incumbent_latency_p50_s)}; "
                f"input tokens {p.challenger_input_tokens:.0f} vs {p.incumbent_input_tokens:.0f}; cloud-equivalent "
                f"{per_1k(p.challenger_cost_usd)} vs {per_1k(p.incumbent_cost_usd)} per 1k.")
    text = "\n".join([*table, "", paired, "", "Report:", "", *[f"- {line}" for line in report.lines], "",
                      f"Phases: feedback {t_before:.0f} s, tuning {report.tuning_wall_s:.0f} s, shadow "
                      f"{t_shadow:.0f} s, after {t_after:.0f} s; wall time {wall:.0f} s. Work dir: {work}"])
    print(text)
    (work / "summary.md").write_text(text + "\n", encoding="utf-8")
    (work / "summary.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    import shared_data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None,
                        help="labeled sentiment JSONL standing in for users (default: dynasent_r2.jsonl of the shared "
                             "data: 509 binary records outside the ICL pool)")
    shared_data.add_option(parser)
    parser.add_argument("--train", type=int, default=300, help="requests whose feedback is captured for tuning")
    parser.add_argument("--shadow", type=int, default=150, help="requests with the tuned model shadowing")
    parser.add_argument("--after", type=int, default=50, help="requests served after the decision")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads (2 on 2 busy cores is far slower)")
    parser.add_argument("--margin", type=float, default=0.05, help="quality loss the promotion tolerates")
    parser.add_argument("--min-n", type=int, default=100, help="paired outcomes needed for a decision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="work directory (default: a new temporary one)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
