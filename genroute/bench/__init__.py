"""The benchmark harness: datasets, scorers, a resumable runner, reports, policy compilation, graduation advice."""

from genroute.bench.advisor import AdvisorSettings, GraduationAdvice, advise
from genroute.bench.cli import add_arguments, bench_main, run_bench_cli
from genroute.bench.compile import CompileReport, compile_policy, stats_from
from genroute.bench.datasets import BenchRecord, load_corpus, load_records, split_ids
from genroute.bench.harness import BenchReport, abench, bench
from genroute.bench.report import Summary, bootstrap_ci, markdown_table, summarize, write_report
from genroute.bench.runner import POLICY_TARGET, Outcome, ResultsLog, arun_bench, load_outcomes
from genroute.bench.scorers import BUILTIN as SCORERS
from genroute.bench.scorers import Scorer, resolve_scorer

__all__ = [
    "POLICY_TARGET", "SCORERS", "AdvisorSettings", "BenchRecord", "BenchReport", "CompileReport",
    "GraduationAdvice", "Outcome", "ResultsLog", "Scorer", "Summary", "abench", "add_arguments", "advise",
    "arun_bench", "bench", "bench_main", "bootstrap_ci", "compile_policy", "load_corpus", "load_outcomes",
    "load_records", "markdown_table", "resolve_scorer", "run_bench_cli", "split_ids", "stats_from",
    "summarize", "write_report",
]
