"""AUTO-mode function calling on the local model: forced calls ("always") vs the model's choice ("choose").

    python benchmarks/local_tool_choice.py --data ../shared/data/bfcl_v4.jsonl --n 60 --dev 20

Per category (BFCL ``irrelevance``, where the right reply is no call, and ``simple_python``, one call), the
records are shuffled with a fixed seed and split: the first ``--dev`` calibrate ``call_bias`` (the log-odds
added to calling over answering) among ``--biases`` — the best balanced accuracy among the biases that lose at
most ``--tolerance`` on the call categories against ``always``; the next ``--n`` — never seen by the calibration — compare
``always`` (the old behaviour: AUTO always calls) with ``choose`` at the calibrated bias, paired per record,
with BFCL's own AST scoring (``function_call`` scorer) through ``genroute.bench``. Prints accuracy per category
and mode and a paired bootstrap CI of each difference.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute import Router
from genroute.bench import abench
from genroute.bench.datasets import load_records
from genroute.bench.record_tools import placeholder
from genroute.bench.multiplicity import adjust_family
from genroute.bench.stats import compare_paired

REPO = Path(__file__).resolve().parent.parent


def split(records: list[Any], categories: list[str], dev: int, n: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(calibration, evaluation) records: per category, ``dev`` then ``n`` from one seeded shuffle."""
    calibration, evaluation = [], []
    for category in categories:
        pool = sorted((r for r in records if r.metadata.get("category") == category), key=lambda r: r.id)
        random.Random(seed).shuffle(pool)
        if len(pool) < dev + n:
            raise SystemExit(f"{category}: {len(pool)} records, need {dev + n} (use --data ../shared/data/...)")
        calibration += pool[:dev]
        evaluation += pool[dev:dev + n]
    return calibration, evaluation


def config(modes: dict[str, dict[str, Any]], threads: int | None) -> dict[str, Any]:
    """One engine and one function-calling backend per mode (``name -> engine settings``)."""
    engines, backends = {}, {}
    for name, settings in modes.items():
        engines[name] = {"kind": "local", "max_output_tokens": 96, **({"n_threads": threads} if threads else {}),
                         **settings}
        # One step: BFCL scores the first turn; the harness gives the backend each record's own tools.
        backends[name] = {"kind": "function_calling", "engine": name, "model": "gemma-3-270m",
                          "tools": ["placeholder"], "max_steps": 1, "on_max_steps": "answer",
                          "generation": {"max_output_tokens": 96}}
    return {"engines": engines, "backends": backends, "policy": {"kind": "static", "backend": next(iter(modes))}}


async def run(records: list[Any], modes: dict[str, dict[str, Any]], out: Path, args: argparse.Namespace
              ) -> dict[str, dict[str, float]]:
    """Scores per mode: ``{mode: {record_id: score}}``."""
    async with Router.from_config(config(modes, args.threads), tools={"placeholder": placeholder}) as router:
        report = await abench(router, records, backends=list(modes), scorer="function_call", out_dir=out,
                              concurrency=1, seed=args.seed, compile=False, stream=False,
                              progress=not args.quiet, command=" ".join(sys.argv))
    scores: dict[str, dict[str, float]] = {mode: {} for mode in modes}
    for outcome in report.outcomes:
        scores[outcome.backend][outcome.record_id] = outcome.score
    return scores


def by_category(scores: dict[str, float], records: list[Any]) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for r in records:
        if r.id in scores:
            ids.setdefault(r.metadata["category"], []).append(r.id)
    return ids


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "benchmarks" / "data" / "bfcl" / "eval.jsonl"))
    parser.add_argument("--categories", default="irrelevance,simple_python")
    parser.add_argument("--n", type=int, default=60, help="evaluation records per category")
    parser.add_argument("--dev", type=int, default=20, help="calibration records per category")
    parser.add_argument("--biases", default="3,4.5,6", help="call_bias values tried on the calibration records")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="how much accuracy on call categories a bias may lose against always")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/local_tool_choice")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    categories = args.categories.split(",")
    calibration, evaluation = split(load_records(args.data), categories, args.dev, args.n, args.seed)
    biases = [float(b) for b in args.biases.split(",")]
    best = biases[0]
    if len(biases) > 1:
        # "always" is calibrated alongside: a bias may not give up calls the forced mode gets right.
        modes = {"always": {"auto_calls": "always"},
                 **{f"choose_{b:g}".replace(".", "_"): {"auto_calls": "choose", "call_bias": b} for b in biases}}
        dev_scores = await run(calibration, modes, Path(args.out) / "calibration", args)
        print(f"calibration ({args.dev} per category): accuracy per category, balanced = their mean")
        per_mode = {}
        for mode, scores in dev_scores.items():
            cats = by_category(scores, calibration)
            per_mode[mode] = {c: sum(scores[i] for i in ids) / len(ids) for c, ids in cats.items()}
            per = per_mode[mode]
            print(f"  {mode:10s} " + ", ".join(f"{c} {v:.3f}" for c, v in per.items())
                  + f"; balanced {sum(per.values()) / len(per):.3f}")
        calls = [c for c in categories if c != "irrelevance"]
        floor = {c: per_mode["always"][c] - args.tolerance for c in calls}
        keep = [b for b in biases if all(per_mode[f"choose_{b:g}".replace(".", "_")][c] >= floor[c] for c in calls)]
        candidates = keep or [max(biases)]
        best = max(candidates, key=lambda b: sum(per_mode[f"choose_{b:g}".replace(".", "_")].values()))
        print(f"  chosen call_bias {best:g}: best balanced accuracy among biases within {args.tolerance} of "
              f"always on {', '.join(calls)}" + ("" if keep else " (none was: the largest bias)"))
    print(f"evaluation ({args.n} per category, disjoint from calibration): always vs choose (call_bias {best:g})")
    modes = {"always": {"auto_calls": "always"}, "choose": {"auto_calls": "choose", "call_bias": best}}
    scores = await run(evaluation, modes, Path(args.out) / "evaluation", args)
    groups = {**by_category(scores["always"], evaluation),
              "both": [i for i in scores["always"] if i in scores["choose"]]}
    # The categories and both together are one family: verdicts corrected over it (Holm), as in the bench report.
    family = adjust_family([compare_paired([scores["choose"][i] for i in ids], [scores["always"][i] for i in ids],
                                           a="choose", b="always") for ids in groups.values()])
    for (category, ids), cmp in zip(groups.items(), family, strict=True):
        print(f"  {category:14s} n={len(ids):3d}  always {cmp.mean_b:.3f}  choose {cmp.mean_a:.3f}  "
              f"{cmp.verdict}")


if __name__ == "__main__":
    asyncio.run(main())
