"""``benchmarks/quality.py``'s report rebuilt from recorded per-record outcomes, without the model: per task the
backend table, the paired differences, the compiled policies on the held-out split and the graduation advice,
then the cross-task tables quality.py ends with.

    python benchmarks/quality_report.py [--runs DIR [--prefix P]] [--tasks sentiment,bfcl] [--cost-weight-rule R]

By default it reads the 2026-12-05 340-record runs kept in the repository, ``benchmarks/data/q340/<task>/`` (see
the README there); ``--runs``/``--prefix`` as in ``cost_weight_rule.py``. Each task's records are
``benchmarks/data/<task>/eval.jsonl`` sampled with the run's own limit and seed (``run.json``; refused when the
data differ from the run's, by its digest). Backend kinds are their names, as quality.py names them; the tuned
adapter's training time is the run directory's ``tune_result.json``, when there is one. Those runs compiled the
learned policy with the fixed cost weight 0.1, since replaced by a rule: ``--cost-weight-rule fixed`` gives their
tables, the default ``resolved`` what ``genroute bench`` compiles now.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "benchmarks" / "data"
#: The per-record outcomes of the 2026-12-05 runs behind RESULTS.md's "All five tasks at n = 340".
RUNS = DATA / "q340"
TASKS = "sentiment,banking77,xquad,bfcl,nlupp"


def recorded_run(runs: Path, task: str, *, prefix: str = "", data: Path = DATA, limit: int | None = None,
                 seed: int | None = None) -> tuple[Path, dict[str, Any], list[Any], list[Any]]:
    """(run directory, its run.json, the records it scored, its outcomes) of one task's recorded run.

    ``prefix``: runs made one task at a time with ``quality.py --out DIR/<prefix><task>``; without it ``runs`` is
    one ``quality.py --out`` directory. ``limit``/``seed`` default to the run's own.
    """
    from genroute.bench.datasets import load_records, sample
    from genroute.bench.manifest import records_digest
    from genroute.bench.runner import load_outcomes

    run_dir = runs / f"{prefix}{task}" / task if prefix else runs / task
    manifest_path = run_dir / "run.json"
    if not manifest_path.is_file():
        raise SystemExit(f"{task}: no run.json in {run_dir} (--runs DIR, --prefix P)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    pool = load_records(data / task / "eval.jsonl", task=task)
    if manifest["data_sha256"] != records_digest(pool):
        raise SystemExit(f"{task}: {data / task / 'eval.jsonl'} is not the data of {run_dir} (digest)")
    records = sample(pool, manifest["limit"] if limit is None else limit,
                     seed=manifest["seed"] if seed is None else seed)
    # In the order the run reported them (target by target, record by record), not the order calls ended in.
    known = {o.key: o for o in load_outcomes(run_dir)}
    targets = [*manifest["targets"], *sorted({backend for backend, _ in known} - set(manifest["targets"]))]
    return run_dir, manifest, records, [known[(t, r.id)] for t in targets for r in records if (t, r.id) in known]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=RUNS,
                        help="a quality.py --out directory (default: the 340-record runs kept in the repository)")
    parser.add_argument("--prefix", default="",
                        help="runs made one task at a time, each with --out DIR/<prefix><task>")
    parser.add_argument("--data", type=Path, default=DATA, help="task sets: DIR/TASK/eval.jsonl")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--cost-weight-rule", default="resolved",
                        help="resolved (default), one_se, best, or fixed (the 0.1 the recorded runs compiled with)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the reports and compiled files go (default: a temporary directory)")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: a temporary one)")
    args = parser.parse_args()

    from genroute.bench.advisor import TunedInfo
    from genroute.bench.embedding_cache import CachedEmbedder
    from genroute.bench.run_report import report_outcomes
    from genroute.knowledge.embedders import LocalEmbedder
    from quality import backends_table, compiled_table, paired_table

    rule = None if args.cost_weight_rule == "fixed" else args.cost_weight_rule
    out = args.out or Path(tempfile.mkdtemp(prefix="quality-report-"))
    embedder = CachedEmbedder(LocalEmbedder(intra_op_threads=1), args.cache or out / "embeddings")
    reports = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        run_dir, manifest, records, outcomes = recorded_run(args.runs, task, prefix=args.prefix, data=args.data)
        kinds = {o.backend: o.backend for o in outcomes}
        tune_result = run_dir / "tune_result.json"
        tuned = TunedInfo(where="local", base_model="gemma-3-270m",
                          tune_result=str(tune_result) if tune_result.is_file() else None)
        report = report_outcomes(outcomes, records, out / task, kinds=kinds, seed=manifest["seed"],
                                 source=str(args.data / task / "eval.jsonl"), embedder=embedder,
                                 tuned_info=tuned if "tuned" in kinds else None, cost_weight_rule=rule,
                                 command=manifest.get("command"))
        print(f"## {task}: {len(records)} records, {len(outcomes)} outcomes ({run_dir.name}/run.json: limit "
              f"{manifest['limit']}, seed {manifest['seed']})\n\n{report.markdown()}", flush=True)
        reports.append((task, report))
    advice = [f"- {task}: {r.advice.text}" for task, r in reports if r.advice is not None]
    print("# Summary\n\n" + backends_table(reports)
          + "\nPaired differences on the same records (a win only when the 95 % CI excludes 0 and the exact test "
            "(McNemar's for 0/1 scores) agrees after Holm's correction over the task's comparisons of that split):"
            "\n\n" + paired_table(reports)
          + "\nCompiled policies against every single backend, on each task's held-out split:\n\n"
          + compiled_table(reports)
          + ("\nGraduation advisor:\n\n" + "\n".join(advice) + "\n" if advice else ""))
    print(f"(reports and compiled files in {out})", file=sys.stderr)


if __name__ == "__main__":
    main()
