"""What a benchmark run reports, from outcomes already recorded (no model call): ``report_outcomes``.

The summaries and per-label recall, the paired differences, the compiled policies on the held-out split (or why none
was compiled), the graduation advice, and the files: ``report.md``/``.html``, ``summary.json``, ``stats.json``, the
outcome matrix. ``genroute.bench.harness`` runs the benchmark and hands its outcomes here; ``benchmarks/`` scripts
report outcomes recorded elsewhere the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from genroute.bench.advisor import AdvisorSettings, GraduationAdvice, advise
from genroute.bench.clusters import input_of
from genroute.bench.compile import CompileReport, bench_stats, cloud_basis, compile_policy
from genroute.bench.datasets import BenchRecord, input_groups
from genroute.bench.matrix_export import export_matrix
from genroute.bench.paired import (
    MIN_VERDICT_N, backend_comparisons, comparison_markdown, compiled_comparisons, explain,
)
from genroute.bench.per_label import breakdowns, per_label_markdown, per_label_overview
from genroute.bench.report import TABLE_LEGEND, Summary, markdown_table, summarize, uniform_note, write_report
from genroute.bench.runner import POLICY_TARGET, RESULTS_FILE, Outcome
from genroute.bench.setup_failures import Unscored, unscored_markdown, unscored_targets
from genroute.bench.stats import MIN_PAIRED_N, PairedComparison
from genroute.config_errors import check_list
from genroute.graduation.trained import TunedInfo
from genroute.policies.cost_weight import CostWeightRule
from genroute.public_model import PublicModel

_log = logging.getLogger("genroute.bench")


class BenchReport(PublicModel):
    """Everything a benchmark run produced."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    out_dir: str
    summaries: tuple[Summary, ...]
    outcomes: tuple[Outcome, ...]
    files: dict[str, str]
    compiled: CompileReport | None = None
    advice: GraduationAdvice | None = None
    comparisons: tuple[PairedComparison, ...] = ()
    compiled_comparisons: tuple[PairedComparison, ...] = ()
    min_verdict_n: int = MIN_VERDICT_N
    compile_note: str | None = Field(default=None, description=(
        "Why no policy was compiled, when one was asked for, and the files an earlier run's compile left in out_dir "
        "(kept as they were: a router may serve them), if any."))
    empty_note: str = Field(default="", description="Backends that answered some records with no text at all.")
    unscored: tuple[Unscored, ...] = Field(default=(), description="Targets with no scored row (every row failed, "
                                                                   "or it was stopped on a set-up error).")
    own_examples_note: str = Field(default="", description="Records whose input an ICL backend holds among its "
                                   "examples (each answered with that example left out).")
    compiled_on_note: str = Field(default="", description="Records whose input the benchmarked policy was compiled "
                                  "from (its @policy row measures fit there).")

    def markdown(self) -> str:
        """The main table, the paired differences, the compile and advisor sections as Markdown."""
        text = markdown_table(self.summaries)
        if "markdown" in self.files:  # the legend is long: the terminal gets where to read it
            text += f"\nWhat each column is: *Reading the table* in {self.files['markdown']}.\n"
        if labels := {s.backend: s.labels for s in self.summaries if s.labels is not None}:
            text += "\n" + per_label_overview(labels)
        if self.compiled_on_note:
            text += "\n" + self.compiled_on_note + "\n"
        if self.own_examples_note:
            text += "\n" + self.own_examples_note + "\n"
        if self.unscored:
            text += "\nNo scored row:\n\n" + unscored_markdown(self.unscored) + "\n"
        if self.empty_note:
            text += "\n" + self.empty_note + "\n"
        if self.comparisons:
            text += "\n" + comparison_markdown(self.comparisons)
        if self.compiled is not None:
            text += "\n" + compiled_markdown(self.compiled, self.compiled_comparisons, self.min_verdict_n)
        elif self.compile_note:
            text += "\n" + self.compile_note + "\n"
        if self.advice is not None:
            text += "\n" + self.advice.text + "\n"
        return text


def report_outcomes(
    outcomes: Sequence[Outcome],
    records: Sequence[BenchRecord],
    out_dir: str | Path,
    *,
    kinds: dict[str, str],
    source: str | None = None,
    seed: int = 0,
    compile: bool = True,  # noqa: A002 - as abench
    advisor: AdvisorSettings | None = None,
    tuned_info: TunedInfo | None = None,
    training_price: tuple[str, float] | None = None,
    min_quality: float | None = None,
    holdout: float = 0.3,
    command: str | None = None,
    embedder: Any = None,
    min_verdict_n: int = MIN_VERDICT_N,
    force_verdict: bool = False,
    cost_weight_rule: CostWeightRule | str | Mapping[str, Any] | None = "resolved",
    own_examples: str = "",
    compiled_on: str = "",
) -> BenchReport:
    """What ``abench`` reports after its run, from outcomes already recorded (no model call): the summaries,
    paired differences, compiled policies on the held-out split and the graduation advice; writes the reports
    (and the compiled files) into ``out_dir``. ``kinds``: backend name -> kind, for the advisor; ``own_examples``:
    the section on records among an ICL backend's examples (``own_examples_note``); ``compiled_on``: the one on
    records the policy was compiled from (``policy_inputs_note``).
    """
    outcomes = check_list(outcomes, Outcome, field="outcomes")
    records = check_list(records, BenchRecord, field="records")
    out = Path(out_dir)
    unscored = unscored_targets(outcomes, len(records))
    dead = {u.backend for u in unscored}
    live = [o for o in outcomes if o.backend not in dead]  # a target that never answered compares with nothing
    per_label = breakdowns(live, records)  # recall per gold label, when the scorer's golds are labels
    summaries = [s.model_copy(update={"labels": per_label.get(s.backend)}) for s in summarize(outcomes, seed=seed)]
    label_md = per_label_markdown(per_label)
    compiled, skipped = None, None
    backends = {o.backend for o in live} - {POLICY_TARGET}
    if compile and not backends:
        skipped = "Not compiled: no backend has a scored row (see *No scored row*)."
    elif compile and len(backends) == 1:  # its policy would route every request to it, and compare it with itself
        skipped = f"Not compiled: {min(backends)} is the only backend with a scored row, and a routing policy chooses "
        skipped += "between two or more."
    elif compile and len(input_groups(records)) < 2:
        # One record, or the same prompt asked n times (to measure variance), has nothing to hold out: report it,
        # not fail it after every call was made (one record was left uncompiled without a word).
        skipped = ("Not compiled: a held-out split needs two records with different inputs, and "
                   + ("this run has one record." if len(records) < 2 else "every record has the same input."))
    elif compile:
        compiled = compile_policy(outcomes, records, out, seed=seed, source=source, embedder=embedder,
                                  min_quality=min_quality, holdout=holdout, cost_weight_rule=cost_weight_rule)
    stats: Path | None = Path(compiled.stats_path) if compiled is not None else None
    if compiled is None:  # an earlier run's compiled files in --out are not this run's, but a router may serve them
        # (cost_aware.json names stats.json by its path): left as they are, and named as another run's
        earlier = earlier_compiled(out, with_stats=not compile or (out / "cost_aware.json").exists())
        if skipped is not None and "stats.json" not in earlier:
            # stats.json is written whenever a compile was asked for, one backend (or one record) as two: a script
            # over runs finds the same files every time (unless a cost_aware.json an earlier run left reads it)
            stats = bench_stats(live, records, source=source, seed=seed,
                                use_cloud_equivalent=cloud_basis(live)).save(out / "stats.json")
        if earlier:
            are, they, were, them, do = ("are", "they", "were", "them", "do") if len(earlier) > 1 else \
                ("is", "it", "was", "it", "does")
            skipped = (f"{skipped or 'Not compiled (--no-compile):'} {', '.join(earlier)} in the output directory "
                       f"{are} an earlier run's, left as {they} {were} (a router may serve {them}); {they} {do} not "
                       "describe this run.")
    inputs = input_of((r.id, r.input) for r in records)  # repeats of one input are one input in every "A vs B"
    comparisons = backend_comparisons(live, seed=seed, inputs=inputs)
    held_out = (compiled_comparisons(compiled, min_n=min_verdict_n, force=force_verdict, seed=seed, inputs=inputs)
                if compiled is not None else [])
    advice = advise([s for s in summaries if s.backend not in dead], advisor, kinds=kinds, outcomes=live, seed=seed,
                    tuned_info=tuned_info, training_price=training_price, inputs=inputs)
    sections = [("Reading the table", TABLE_LEGEND)]
    if advice is not None and advice.trained_on:
        leaked = (f"{advice.tuned_backend} was tuned on the inputs of {advice.trained_on} of the {len(records)} "
                  "records (its tune_result.json lists them): its scores on those records, in the tables below, "
                  "measure recall of its training data, not quality on new requests; the graduation advisor leaves "
                  "them out. Benchmark a tuned model on records it was not tuned on.")
        sections.append(("Tuned on benchmark records", leaked))
        _log.warning("%s", leaked)
    if compiled_on:
        sections.append(("Policy compiled from benchmark records", compiled_on))
    if own_examples:
        sections.append(("Benchmark records among the ICL examples", own_examples))
    if unscored:
        sections.append(("No scored row", unscored_markdown(unscored)))
    if label_md:
        sections.append(("Recall per gold label", label_md))
    uniform = uniform_note([s for s in summaries if s.backend not in dead])
    if uniform:
        sections.append(("Every record scored alike", uniform))
        _log.warning("%s", uniform)
    if command:
        sections.append(("Command", _code(command)))
    if comparisons:
        sections.append(("Paired differences (all records)",
                         explain(MIN_PAIRED_N, held_out=False, repeated=_repeated(comparisons)) + "\n\n"
                         + comparison_markdown(comparisons)))
    if compiled is not None:
        sections.append(("Compiled policy (held-out split)", compiled_markdown(compiled, held_out, min_verdict_n)))
    elif skipped:
        sections.append(("Compiled policy (held-out split)", skipped))
    if advice is not None:
        sections.append(("Graduation advisor", advice.text))
    empty = empty_answers(outcomes)
    if empty:
        sections.append(("Empty answers", empty))
    failures = _failure_examples(outcomes)
    if failures:
        sections.append(("Failures (first of each type)", _code(failures)))
    title = f"genroute bench: {Path(source).name if source else 'records'}"
    files = write_report(out, summaries, title=title, sections=sections, records=records, outcomes=outcomes)
    if stats is not None:
        files["stats"] = stats
    if (out / RESULTS_FILE).is_file():  # not when reporting outcomes recorded elsewhere
        files["results"] = out / RESULTS_FILE
        # What `genroute compile --outcomes` reads: as the compile here, without a target that never answered.
        files["outcomes"] = export_matrix(live, records, out)
    return BenchReport(out_dir=str(out), summaries=tuple(summaries), outcomes=tuple(outcomes),
                       files={k: str(v) for k, v in files.items()}, compiled=compiled, advice=advice,
                       comparisons=tuple(comparisons), compiled_comparisons=tuple(held_out),
                       min_verdict_n=min_verdict_n, compile_note=skipped, empty_note=empty, unscored=tuple(unscored),
                       own_examples_note=own_examples, compiled_on_note=compiled_on)


def earlier_compiled(out: Path, *, with_stats: bool) -> list[str]:
    """The policy files an earlier run compiled into ``out`` (and its ``stats.json`` if ``with_stats``): kept by a run
    that compiles none of its own (a router may serve them), which names them as an earlier run's."""
    names = ("stats.json", "cost_aware.json", "learned.json", "learned.npz") if with_stats else \
        ("cost_aware.json", "learned.json", "learned.npz")
    return [name for name in names if (out / name).exists()]


def compiled_markdown(compiled: CompileReport, comparisons: Sequence[PairedComparison], min_n: int) -> str:
    """The held-out comparison, its n against the minimum for a verdict, and the paired differences."""
    records = compiled.n_held_out
    # The comparisons count distinct inputs when some held-out input repeats: the minimum applies to those.
    n = comparisons[0].n if comparisons else records
    size = f"{n}" if n == records else f"{n} distinct inputs ({records} records)"
    if n < min_n and not any(c.decision != "no_verdict" for c in comparisons):
        status = (f"**No verdict:** the held-out split has n = {size}{' records' if n == records else ''}, below "
                  f"the minimum of {min_n} for deciding between policies (benchmark more records, or force one "
                  "with --force-verdict). The differences below are printed for information only.")
    elif n < min_n:
        status = (f"Held-out n = {size}, below the minimum of {min_n} for a verdict: the verdicts below were forced "
                  "(--force-verdict) and may not hold on more data.")
    else:
        status = f"Held-out n = {size} (minimum for a verdict: {min_n})."
    text = compiled.markdown() + "\n" + status + "\n"
    if comparisons:
        text += "\n" + explain(min_n, repeated=_repeated(comparisons)) + "\n\n" + comparison_markdown(comparisons)
    return text


def _repeated(comparisons: Sequence[PairedComparison]) -> bool:
    return any(c.n_records is not None for c in comparisons)


def _code(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}\n{text}\n{fence}"


def empty_answers(outcomes: Sequence[Outcome]) -> str:
    """Backends that answered with no text and no tool call on some records: scored as wrong like any other
    answer, but a sign of a template the model stops at (an empty string), not of what it knows."""
    counts: dict[str, list[int]] = {}
    for o in outcomes:
        if o.ok:
            seen = counts.setdefault(o.backend, [0, 0, 0])
            empty = not o.answer.strip() and not o.tool_calls
            seen[0] += empty
            seen[1] += 1
            seen[2] += empty and o.thinking_tokens > 0
    lines = [f"- {b}: {n} of {total} answers were empty (the model stopped before writing anything"
             + (f"; {thought} of them thought and wrote nothing)" if thought else ")")
             for b, (n, total, thought) in sorted(counts.items()) if n]
    if not lines:
        return ""
    note = ("\n".join(lines) + "\n\nThey are scored as wrong. Check the backend's template and "
            "`max_output_tokens`: a base model such as the embedded Gemma continues text, so a few-shot format "
            "(ICL's `Input:` / `Output:` lines) works better than an instruction.")
    if any(thought for _, _, thought in counts.values()):
        # Gemini 2.5 thinks by default and its thoughts count within maxOutputTokens: a limit sized for the answer
        # alone is spent thinking (finish reason max_tokens, no text), which no template change mends.
        note += (" An answer that thought and wrote nothing spent its `max_output_tokens` thinking (Gemini counts "
                 "thought tokens within it): raise `max_output_tokens`, or cap thinking with "
                 "`generation.thinking_config.thinking_budget` (0 turns it off).")
    return note


def _failure_examples(outcomes: Sequence[Outcome]) -> str:
    seen: dict[tuple[str, str], str] = {}
    for o in outcomes:
        if not o.ok and (o.backend, o.error_type or "") not in seen:
            seen[(o.backend, o.error_type or "")] = f"{o.backend}: {o.error_type}: {o.error}"
    return "\n".join(seen.values())
