"""The benchmark harness: datasets, scorers, a resumable runner, reports, policy compilation, graduation advice.

Command line (``genroute bench`` delegates to ``genroute.bench.cli.bench_main``)::

    genroute bench data.jsonl --config genroute.yaml --backends prompt,icl,rag [--policy] [--scorer NAME]
        [--limit N] [--concurrency N] [--seed S] [--out DIR] [--retry-failed]
        [--corpus CORPUS.jsonl --collection NAME] [--min-verdict-n N] [--force-verdict]
        [--monthly-requests N] [--tuning-cost USD | --training-examples N --epochs E [--tuning-price USD]
         | --cpu-usd-per-hour USD]

Python::

    from genroute.bench import abench
    async with await Router.acreate("genroute.yaml") as router:
        report = await abench(router, "data.jsonl", backends=["prompt", "icl"], out_dir="bench-out")
    print(report.markdown())

Every "A vs B" in the report is a paired comparison on the same records (``genroute.bench.stats``): a win only
when the paired 95 % CI excludes 0 and an exact test agrees after Holm's correction over the report table's
comparisons (``genroute.bench.multiplicity``). ``DIR`` receives
``results.jsonl`` (one row per backend and record; rerunning skips rows already there, and ``--retry-failed``
reruns failed ones), ``report.md``, ``report.html`` (self-contained), ``pareto.png``,
``summary.json``, ``run.json`` (a rerun with other data, scorer, seed or backend configs is refused), the
``stats.json`` that the ``cost_aware`` policy reads (``stats_path``) and ``learned.npz`` for ``learned``
(``model_path``). ``report_outcomes(load_outcomes(DIR), records, OUT, kinds=...)`` rebuilds that report from
recorded outcomes alone (no router, no model call).

Outcome matrices (no model calls; ``genroute bench --outcomes FILE [--eval-outcomes FILE]``)::

    from genroute.bench import compile_outcomes
    report = compile_outcomes("matrix.jsonl", out_dir="out")   # or any iterable of outcome records
    print(report.markdown())                                    # also OUT/compiled.json, OUT/curve.png

Function-calling datasets whose records declare their own tools (``metadata.tools``, BFCL-style) are
answered by the ``function_calling`` backends with those tools as schema-only stubs (``record_tools``).
"""

from genroute.bench.advisor import AdvisorSettings, GraduationAdvice, advise
from genroute.bench.cli import add_arguments, bench_main, run_bench_cli
from genroute.bench.compile import CompileReport, compile_policy, stats_from
from genroute.bench.datasets import BenchRecord, load_records, split_ids
from genroute.bench.harness import abench, bench
from genroute.bench.run_report import BenchReport, report_outcomes
from genroute.bench.matrix_stats import matrix_stats, matrix_summaries
from genroute.bench.offline import compile_outcomes
from genroute.bench.offline_report import OfflineReport
from genroute.bench.outcomes import CandidatePricing, OutcomeMatrix, load_matrix, load_pricing
from genroute.bench.report import Summary, markdown_table, summarize, write_report
from genroute.bench.runner import POLICY_TARGET, Outcome, ResultsLog, arun_bench, load_outcomes
from genroute.bench.scorers import BUILTIN as SCORERS
from genroute.bench.scorers import Scorer, resolve_scorer
from genroute.bench.stats import (
    PairedComparison,
    bootstrap_ci,
    compare_paired,
    mcnemar_exact,
    paired_bootstrap_ci,
    quality_ci,
)

__all__ = [
    "POLICY_TARGET", "SCORERS", "AdvisorSettings", "BenchRecord", "BenchReport", "CompileReport",
    "GraduationAdvice", "Outcome", "PairedComparison", "ResultsLog", "Scorer", "Summary", "abench",
    "add_arguments", "advise", "arun_bench", "bench", "bench_main", "bootstrap_ci", "compare_paired",
    "compile_policy", "load_outcomes", "load_records", "markdown_table", "mcnemar_exact",
    "paired_bootstrap_ci", "quality_ci", "report_outcomes", "resolve_scorer", "run_bench_cli", "split_ids",
    "stats_from", "summarize", "write_report", "OfflineReport", "OutcomeMatrix", "CandidatePricing",
    "compile_outcomes", "load_matrix", "load_pricing", "matrix_stats", "matrix_summaries",
]
