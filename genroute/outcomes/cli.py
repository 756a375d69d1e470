"""``genroute compile --outcomes FILE``: the cost_aware stats file (with a policy config on it) and the learned
model from outcome records.

``FILE`` is an outcome store (``.db``) or an outcome-matrix JSONL file (the ``outcomes.jsonl`` a benchmark writes,
a public matrix, or ``OutcomeStore.export_jsonl``): the same compile step whatever the records came from.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from genroute.cli_options import command_failed
from genroute.errors import GenrouteError, UsageError
from genroute.jsonl import output_dir

if TYPE_CHECKING:
    from genroute.outcomes.records import OutcomeRecord
    from genroute.policies.stats import BenchStats

_log = logging.getLogger("genroute.compile")


def compile_main(argv: Sequence[str]) -> int:
    """Run ``genroute compile``; 0 on success, 2 on a usage error, 1 on a failure."""
    # The docstring's reST quoting (``x``) is noise in a terminal.
    parser = argparse.ArgumentParser(prog="genroute compile", description=__doc__.replace("``", "`"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", required=True, help="outcome store (.db) or outcome-matrix JSONL")
    parser.add_argument("--out", required=True, help="directory for stats.json, cost_aware.json (and learned.npz)")
    parser.add_argument("--min-n", type=int, default=1, help="leave out entries scored on fewer records")
    parser.add_argument("--task", default=None, help="only records of this task")
    parser.add_argument("--no-learned", action="store_true", help="do not train learned.npz")
    parser.add_argument("--cost-weight-rule", default="resolved",
                        help="how learned.npz's cost weight is chosen by cross-validation: resolved (default: the "
                             "cheapest weight not resolved worse than the best at 95 %%), one_se, best, or fixed (0.1)")
    args = parser.parse_args(list(argv))
    if args.min_n < 1:  # else taken as 1
        parser.error(f"argument --min-n: must be at least 1, got {args.min_n}")
    try:
        return _compile(args)
    except GenrouteError as exc:
        return command_failed(exc, parser)


def _compile(args: argparse.Namespace) -> int:
    from genroute.outcomes.outcome_files import read_outcome_file
    from genroute.outcomes.records import scoring_cost
    from genroute.outcomes.stats import outcome_stats, scored_sides, training_rows, unmeasured, uses_cloud_equivalent
    from genroute.policies.cost_weight import as_rule

    rule = None if args.cost_weight_rule == "fixed" else as_rule(args.cost_weight_rule, field="--cost-weight-rule")

    records = read_outcome_file(args.outcomes, field="--outcomes")
    if args.task is not None:
        records = [r for r in records if r.task == args.task]
    if not records:  # nothing to compile: what an earlier run wrote to --out stays as it was
        raise UsageError(f"no outcome records{f' of task {args.task!r}' if args.task else ''} in {args.outcomes}",
                         field="--task" if args.task else "--outcomes")
    if not any(r.outcomes for r in records):  # e.g. a bench's results.jsonl: rows, read past as empty records
        raise UsageError(f"no record in {args.outcomes} has an outcome (`outcomes`: {{backend: {{score, ...}}}}); "
                         "genroute bench's results.jsonl holds rows, not outcome records: compile the outcomes.jsonl "
                         "beside it", field="--outcomes")
    _refuse_costless(records, args.outcomes)
    out = output_dir(args.out, field="--out")
    stats = outcome_stats(records, min_n=args.min_n, source=str(args.outcomes))
    from genroute.knowledge.examples import input_keys

    # The inputs it was compiled from, as keys: a `genroute bench --policy` on them says its policy was compiled there.
    stats = stats.with_input_keys(input_keys(r.input for r in records if r.input))
    path = stats.save(out / "stats.json")
    entries = sum(len(by) for by in stats.tasks.values())
    print(f"{len(records)} records -> {path} ({entries} task/backend entries)")
    for task, by in sorted(stats.tasks.items()):
        for backend, entry in sorted(by.items()):
            print(f"  {task} / {backend}: n={entry.n} quality={entry.quality:.3f} "
                  f"${entry.cost_per_request_usd:.6f}/request"
                  + (f" (over the {entry.cost_n} with a recorded cost)" if entry.cost_n is not None else "")
                  + (" latency not recorded" if entry.latency_p50_s is None else f" p50={entry.latency_p50_s:.3f}s")
                  + (f" (over the {entry.latency_n} with a recorded latency)" if entry.latency_n else ""))
    _warn_small(stats)
    cloud = uses_cloud_equivalent(records)
    for task, scored in sorted(scored_sides(records).items()):
        for backend, sides in sorted(scored.items()):
            if len(sides) >= args.min_n and (why := unmeasured(sides, cloud)) is not None:
                print(f"  {task} / {backend}: left out: {why} (a missing cost is unknown, not free)")
    from genroute.policies.cost_aware_compiled import drop_stale, write_cost_aware_config

    if entries:
        # stats_path alone gives cost_aware a floor of 0 (the cheapest backend): the config holds each task's floor.
        backends = sorted({b for by in stats.tasks.values() for b in by})
        policy = write_cost_aware_config(out / "cost_aware.json", path, backends)
        print(f"{policy}: a cost_aware policy config on it (each task's floor at 95 % of its best quality)")
    else:
        _said_stale(drop_stale(out / "cost_aware.json"))
    judged = [scoring_cost(r) for r in records if scoring_cost(r)]
    if judged:  # the judge's calls are no backend's cost per request, but they were paid
        print(f"  scoring (judge calls): ${sum(judged):.6f} on {len(judged)} records")
    rows = training_rows(records)
    if args.no_learned:
        _said_stale(drop_stale(out / "learned.npz"))
        return 0
    if len({r["backend"] for r in rows}) < 2 or len({r["record_id"] for r in rows}) < 2:
        print("learned.npz not trained: it needs records with their input and two or more scored backends")
        _said_stale(drop_stale(out / "learned.npz"))
        return 0
    from genroute.policies.learned import train

    report = train(rows, out / "learned.npz", cost_weight_rule=rule)
    from genroute.bench.intervals import share_claim

    accuracy = share_claim(report.routing_accuracy or 0.0, report.n_test, baseline=report.majority_routing_accuracy,
                           baseline_name="always the most common best backend")
    print(f"{report.model_path}: {report.method} on {report.n_train} records, routing accuracy "
          f"{accuracy} held out; "
          + (report.cost_weight_choice.summary() if report.cost_weight_choice else
             f"fixed cost weight {report.cost_weight:g}"))
    return 0


def _refuse_costless(records: Sequence[OutcomeRecord], source: object) -> None:
    """``UsageError`` naming ``--outcomes`` when no scored outcome records a cost (a published matrix): every entry
    would be left out (a missing cost is unknown, not free), so it compiled an empty stats.json, exit 0, beside
    "learned.npz not trained: it needs records with their input and two or more scored backends"."""
    from genroute.outcomes.stats import has_cost, uses_cloud_equivalent

    cloud = uses_cloud_equivalent(records)
    if not any(has_cost(side, cloud) for r in records for side in r.outcomes.values() if side.score is not None):
        raise UsageError(f"nothing to compile from {source}: no scored outcome records a "
                         f"{'cloud_equivalent_cost_usd' if cloud else 'cost_usd'} (a missing cost is unknown, not "
                         "free), as in a published matrix; `genroute bench --outcomes FILE` compiles one on quality "
                         "alone, or priced with --prices", field="--outcomes")


def _warn_small(stats: BenchStats) -> None:
    """Warn of each task whose backends were scored on fewer records than a paired verdict needs: its floor and its
    choice in cost_aware.json rest on a difference those records cannot resolve (bench says "no verdict" there)."""
    from genroute.bench.stats import MIN_PAIRED_N

    for task, by in sorted(stats.tasks.items()):
        if len(by) > 1 and (n := min(entry.n for entry in by.values())) < MIN_PAIRED_N:
            _log.warning("task %s: its backends were scored on as few as %d records, below the %d a paired verdict "
                         "needs: the compiled choice between them is not resolved (record more outcomes, or compile "
                         "with --min-n %d to leave such entries out)", task, n, MIN_PAIRED_N, MIN_PAIRED_N)


def _said_stale(removed: Sequence[object]) -> None:
    for path in removed:
        print(f"{path}: removed, an earlier compile's that this one's records no longer back")
