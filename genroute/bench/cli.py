"""``genroute bench``: argument parsing and the entry point the CLI calls."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from genroute.cli_options import LIBRARY_NAMES, add_quiet, command_failed, shows_progress
from genroute.config_errors import error_at, pydantic_validated, validator_message
from genroute.errors import GenrouteError, UsageError
from genroute.runtime.portal import refuse_inside_loop, run_sync

if TYPE_CHECKING:
    from genroute.bench.advisor import AdvisorSettings
    from genroute.bench.run_report import BenchReport


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``bench`` options to ``parser`` (a sub-command parser of the main CLI)."""
    parser.add_argument("data", nargs="?", help="dataset JSONL: {input, output, label?, metadata?} per line")
    parser.add_argument("--config", help="router config (YAML/TOML/JSON); required unless --outcomes")
    parser.add_argument("--backends", help="comma-separated backend names; required unless --outcomes")
    parser.add_argument("--policy", action="store_true", help="also run the config's policy end to end")
    parser.add_argument("--scorer", default=None,
                        help="exact | normalized_exact | token_f1 | label_accuracy | json_schema | function_call "
                             "| regex[:PATTERN] | judge:BACKEND | module:function (default: from the data)")
    parser.add_argument("--limit", type=int, default=None, help="seeded sample of N records")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out", help="output directory (rerun to resume)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="on resume, also rerun the pairs that failed before")
    parser.add_argument("--task", default=None, help="task name for records without one")
    parser.add_argument("--corpus", default=None, help="RAG corpus JSONL to ingest first")
    parser.add_argument("--collection", default=None, help="collection to ingest the corpus into")
    advisor = parser.add_argument_group("graduation advisor (what it is not told it measures or reports as unknown)")
    advisor.add_argument("--monthly-requests", type=int, default=None, help="expected requests per month")
    advisor.add_argument("--tuning-cost", type=float, default=None, help="tuning cost in USD, if known")
    advisor.add_argument("--tuning-price", type=float, default=None,
                         help="USD per 1M training tokens (default: the pricing table's, for a Vertex tuned model)")
    advisor.add_argument("--training-examples", type=int, default=None, help="tuning examples (Vertex estimate)")
    advisor.add_argument("--training-tokens", type=int, default=None, help="training tokens per epoch (Vertex)")
    advisor.add_argument("--epochs", type=int, default=None, help="tuning epochs (Vertex estimate)")
    advisor.add_argument("--tuning-cpu-seconds", type=float, default=None,
                         help="local tuning CPU time (default: measured, tune_result.json beside the adapter)")
    advisor.add_argument("--cpu-usd-per-hour", type=float, default=None, help="price of a CPU-hour (local tuning)")
    parser.add_argument("--min-verdict-n", type=int, default=100,
                        help="held-out records needed before compiled policies get a verdict (default 100)")
    parser.add_argument("--force-verdict", action="store_true", help="print verdicts below --min-verdict-n")
    parser.add_argument("--min-quality", type=float, default=None,
                        help="cost_aware quality floor for the held-out comparison "
                             "(default: 95%% of each task's best)")
    parser.add_argument("--holdout", type=float, default=0.3, help="share of records held out when compiling")
    parser.add_argument("--cost-weight-rule", default="resolved",
                        help="how the compiled learned policy's cost weight is chosen by cross-validation: resolved "
                             "(default: the cheapest weight not resolved worse than the best at 95 %%), one_se "
                             "(within one paired standard error), best (best mean quality), or fixed (0.1; not with "
                             "--outcomes)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the compile: no stats.json, no policy files (those an earlier run left in --out "
                             "stay as they were, for a router that may serve them, and the report says so)")
    parser.add_argument("--no-stream", action="store_true", help="call generate, not stream (no TTFT)")
    add_quiet(parser)
    matrix = parser.add_argument_group("outcome matrices (no model calls)")
    matrix.add_argument("--outcomes", default=None,
                        help="outcome matrix JSONL(.gz): {input, metadata: {task, id}, outcomes: {candidate: "
                             "{score, cost_usd?}}}; compile on a seeded split and judge on the rest")
    matrix.add_argument("--eval-outcomes", default=None,
                        help="judge on this outcome file instead of a split of --outcomes (shares no record)")
    matrix.add_argument("--prices", default=None,
                        help="JSON {candidate: {input_usd_per_1m, output_usd_per_1m} | {size}} for outcomes "
                             "without cost_usd")
    matrix.add_argument("--output-tokens", type=int, default=256,
                        help="output tokens per request in the cost estimate, for outcomes that record none (input: "
                             "the query's words)")
    matrix.add_argument("--usd-per-billion", type=float, default=None,
                        help="price sized candidates at this USD per 1M tokens per billion parameters")
    matrix.add_argument("--candidates", default=None,
                        help="comma-separated candidates to route between (default: all in the file)")
    matrix.add_argument("--embedding-cache", default=None, help="directory for cached embeddings (default OUT)")
    return parser


#: What to do instead of ``run_bench_cli`` where an event loop runs (a notebook): await its async core.
_INSTEAD = "await genroute.bench.abench(router, data, ...)"


def run_bench_cli(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run ``genroute bench`` from parsed arguments; print the report; 0 on success, 2 on a usage error, 1 on a
    failure (and when a target has no scored row: 2 if each such target failed with a usage or config error)."""
    if args.outcomes is not None:
        return run_outcomes_cli(args)
    if args.data is None or args.config is None or args.backends is None:
        print("genroute bench: error: give DATA, --config and --backends (or --outcomes FILE)", file=sys.stderr)
        return 2
    from genroute.bench.harness import abench, command_line
    from genroute.router.router import Router

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    command = command_line(argv) if argv is not None else None
    try:
        refuse_inside_loop("run_bench_cli", _INSTEAD)  # before the router is built: it would be left open
        advisor = _advisor(args)
        router = Router.from_config(args.config)

        async def main() -> BenchReport:
            async with router:
                return await abench(
                    router, args.data, backends=backends, policy=args.policy, scorer=args.scorer,
                    limit=args.limit, concurrency=args.concurrency, seed=args.seed, out_dir=args.out,
                    task=args.task, corpus=args.corpus, collection=args.collection,
                    compile=not args.no_compile, advisor=advisor, min_quality=args.min_quality,
                    holdout=args.holdout, stream=not args.no_stream, retry_failed=args.retry_failed,
                    progress=shows_progress(args), command=command, min_verdict_n=args.min_verdict_n,
                    force_verdict=args.force_verdict,
                    cost_weight_rule=None if args.cost_weight_rule == "fixed" else args.cost_weight_rule)

        report = run_sync(main(), "run_bench_cli", instead=_INSTEAD)  # a Ctrl-C another thread got wakes the loop
    except GenrouteError as exc:
        return command_failed(exc, parser(), config=args.config)
    print(report.markdown())
    files = report.files
    written = ", ".join(str(files[name]) for name in ("markdown", "html", "png") if files.get(name) is not None)
    # No chart without matplotlib (the bench extra): say so, rather than print "None" where its path would be.
    chart = "" if files.get("png") is not None else ' (no pareto.png: charts need pip install "genroute[bench]")'
    print(f"Reports: {written}{chart}; results: {files['results']}")
    if report.unscored:  # a backend that never answered: the run did not measure what was asked
        from genroute.bench.setup_failures import exit_status as unscored_status

        for unscored in report.unscored:
            print(f"genroute bench: error: {unscored.line()}", file=sys.stderr)
        return unscored_status(report.unscored)
    return 0


def _advisor(args: argparse.Namespace) -> AdvisorSettings:
    """The advisor's settings from the options that give them: each setting's option has its name as ``dest``, or
    the name ``LIBRARY_NAMES`` gives it (``tuning_cost_usd``: ``--tuning-cost``). A bad value is a ``UsageError``
    naming the setting, which ``command_failed`` names as the option typed (``as_typed``, through the same table)."""
    from pydantic import ValidationError

    from genroute.bench.advisor import AdvisorSettings

    dests = {name: LIBRARY_NAMES.get(name, name) for name in AdvisorSettings.model_fields}
    try:
        return pydantic_validated(AdvisorSettings, {name: getattr(args, dest) for name, dest in dests.items()
                                                    if hasattr(args, dest)})
    except ValidationError as exc:
        error = exc.errors()[0]  # its location is empty for the settings as a whole: then no option is named
        raise UsageError(validator_message(error), field=error_at(error) or None) from None


def run_outcomes_cli(args: argparse.Namespace) -> int:
    """``genroute bench --outcomes FILE``: compile and judge routing policies on an outcome matrix."""
    from genroute.bench.offline import compile_outcomes
    from genroute.bench.outcomes import load_pricing

    try:
        pricing = None if args.prices is None else load_pricing(
            args.prices, output_tokens=args.output_tokens, usd_per_1m_per_billion=args.usd_per_billion)
        report = compile_outcomes(args.outcomes, eval_source=args.eval_outcomes, out_dir=args.out,
                                  pricing=pricing, holdout=args.holdout, seed=args.seed,
                                  candidates=[c.strip() for c in args.candidates.split(",") if c.strip()]
                                  if args.candidates else None,
                                  cache_dir=args.embedding_cache, min_n=args.min_verdict_n,
                                  force_verdict=args.force_verdict, cost_weight_rule=args.cost_weight_rule)
    except GenrouteError as exc:
        return command_failed(exc, parser())
    print(report.markdown())
    print(f"Rows: {report.files['compiled']}; report: {report.files['markdown']}, {report.files['html']}; "
          f"curve: {report.files.get('curve', '-')}; compiled policies: {report.files['cost_aware']} (cost_aware, on "
          f"{report.files['stats']})"
          + "".join(f", {report.files[k]} ({what})" for k, what in (("learned-task", "learned"),
                    ("learned-text", "learned"), ("semantic", "semantic")) if k in report.files))
    return 0


def parser() -> argparse.ArgumentParser:
    """``genroute bench``'s argument parser."""
    return add_arguments(argparse.ArgumentParser(prog="genroute bench", description="Benchmark backends."))


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``genroute bench`` as a function of its argument list."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = parser()
    args = command.parse_args(argv)
    if args.min_verdict_n < 0:  # else a negative minimum forced every verdict, as --force-verdict does
        command.error(f"argument --min-verdict-n: must be at least 0, got {args.min_verdict_n}")
    return run_bench_cli(args, argv)
