"""The benchmark as one call: load, (ingest), run, summarise, report, compile, advise."""

from __future__ import annotations

import functools
import logging
import shlex
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from pydantic import ConfigDict, Field

from genroute.bench.advisor import AdvisorSettings, GraduationAdvice, advise
from genroute.bench.clusters import input_of
from genroute.bench.compile import CompileReport, compile_policy
from genroute.bench.corpus import corpus_store, ingest_corpus
from genroute.bench.datasets import (
    BenchRecord, check_holdout, check_quality_floor, check_records, input_groups, load_records, sample,
)
from genroute.bench.manifest import (
    RunManifest, check_and_write, file_digest, records_digest, scorer_digest, target_digests, target_prices,
)
from genroute.bench.matrix_export import export_matrix
from genroute.bench.own_examples import own_examples_note
from genroute.bench.policy_inputs import policy_inputs_note
from genroute.bench.per_label import breakdowns, per_label_markdown, per_label_overview
from genroute.bench.paired import (
    MIN_VERDICT_N, backend_comparisons, comparison_markdown, compiled_comparisons, explain,
)
from genroute.bench.report import TABLE_LEGEND, Summary, markdown_table, summarize, uniform_note, write_report
from genroute.bench.runner import (
    POLICY_TARGET, RESULTS_FILE, Outcome, arun_bench, check_concurrency, check_flags, check_targets,
    load_outcomes, target_names,
)
from genroute.bench.score_checks import check_min_n, check_seed
from genroute.bench.scorers import check_golds, resolve_scorer
from genroute.bench.setup_failures import Unscored, unscored_markdown, unscored_targets
from genroute.bench.stats import MIN_PAIRED_N, PairedComparison
from genroute.config_errors import check_list
from genroute.errors import UsageError
from genroute.graduation.trained import TunedInfo, tuned_info
from genroute.jsonl import output_dir
from genroute.policies.cost_aware_compiled import drop_stale
from genroute.policies.cost_weight import CostWeightRule, as_rule
from genroute.public_model import PublicModel
from genroute.runtime.portal import run_sync

if TYPE_CHECKING:
    from genroute.router.router import Router

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
    compile_note: str | None = Field(default=None, description="Why no policy was compiled, when one was asked for.")
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


async def abench(
    router: Router,
    data: str | Path | Sequence[BenchRecord],
    *,
    backends: Sequence[str],
    policy: bool = False,
    scorer: str | None = None,
    limit: int | None = None,
    concurrency: int = 4,
    seed: int = 0,
    out_dir: str | Path = "bench-out",
    task: str | None = None,
    corpus: str | Path | None = None,
    collection: str | None = None,
    compile: bool = True,  # noqa: A002 - the verb the issue uses
    advisor: AdvisorSettings | None = None,
    min_quality: float | None = None,
    holdout: float = 0.3,
    stream: bool = True,
    progress: bool = True,
    command: str | None = None,
    embedder: Any = None,
    retry_failed: bool = False,
    min_verdict_n: int = MIN_VERDICT_N,
    force_verdict: bool = False,
    cost_weight_rule: CostWeightRule | str | Mapping[str, Any] | None = "resolved",
) -> BenchReport:
    """Benchmark ``backends`` (and the router's policy end to end if ``policy``) on a dataset; write reports.

    Rerunning into the same ``out_dir`` resumes: rows already there are reused (``retry_failed``: except
    failed ones) once ``run.json`` shows they were made with the same data, scorer, seed and configs.
    A backend that fails its first records on a set-up error is stopped (``setup_failures``); every target with no
    scored row is named in ``BenchReport.unscored`` and left out of the comparisons and compiled policies, and a
    rerun runs its failed rows again (its configuration may have been fixed meanwhile).
    Every "A vs B" in the report is paired on the same records; compiled policies get a verdict only when the
    held-out split has at least ``min_verdict_n`` records, unless ``force_verdict``. ``cost_weight_rule``: how
    the compiled learned policy's cost weight is chosen (``compile_policy``).
    """
    from genroute.router.router import check_router

    check_router(router)
    # A closed router fails every call: its run would fill results.jsonl (and stats.json) with failures.
    router._refuse_closed()  # noqa: SLF001 - the check every router method makes (bench's sync twin's too)
    rule = as_rule(cost_weight_rule)  # checked before anything runs or is written
    targets = [*target_names(backends), *([POLICY_TARGET] if policy else [])]
    check_seed(seed)
    check_min_n(min_verdict_n, "min_verdict_n")
    check_holdout(holdout)
    check_quality_floor(min_quality)
    check_concurrency(concurrency)
    check_flags(policy=policy, compile=compile, stream=stream, progress=progress, retry_failed=retry_failed,
                force_verdict=force_verdict)
    if command is not None and not isinstance(command, str):  # a pydantic ValidationError from the run manifest
        raise UsageError(f"must be text, not {type(command).__name__}", field="command")
    if advisor is not None and not isinstance(advisor, AdvisorSettings):
        raise UsageError(f"must be AdvisorSettings, not {type(advisor).__name__}", field="advisor")
    if corpus is not None:
        corpus_store(router, corpus, collection)
    from_file = isinstance(data, str | Path)
    pool = load_records(data, task=task) if isinstance(data, str | Path) else check_records(data)
    records = sample(pool, limit, seed=seed)
    source = str(data) if from_file else None
    chosen = resolve_scorer(scorer, records)
    check_golds(chosen, records)
    check_targets(router, targets, chosen)
    out = output_dir(out_dir, field="out_dir")  # made once the run is known to be possible
    manifest = RunManifest(
        data=source or "<records>", data_sha256=records_digest(pool), scorer=chosen.name, seed=seed, limit=limit,
        corpus=str(corpus) if corpus is not None else None,
        corpus_sha256=file_digest(corpus) if corpus is not None else None,
        scorer_sha256=scorer_digest(router, chosen),
        targets=target_digests(router, targets, POLICY_TARGET), prices=target_prices(router, targets, POLICY_TARGET),
        policy=policy, concurrency=concurrency, command=command)
    # Targets with no scored row yet (a set-up error) may have their set-up fixed: their rows are all rerun.
    results = out / RESULTS_FILE
    scored = {o.backend for o in load_outcomes(out) if o.ok} if results.is_file() else set()
    check_and_write(out, manifest, results=results, scored=scored)
    if corpus is not None:
        await ingest_corpus(router, corpus, collection)
    outcomes = await arun_bench(router, records, targets, chosen, out_dir=out, concurrency=concurrency,
                                stream=stream, progress=progress, retry_failed=retry_failed)
    kinds = {name: getattr(b, "kind", "") for name, b in router.backends.items()}
    tuned = _tuned_details(router, targets, kinds)
    own = await own_examples_note(router, targets, records)
    compiled_on = policy_inputs_note(router.policy, records) if policy else ""
    return report_outcomes(outcomes, records, out, kinds=kinds, source=source, seed=seed, own_examples=own,
                           compiled_on=compiled_on,
                           compile=compile and any(t != POLICY_TARGET for t in targets), advisor=advisor,
                           min_quality=min_quality, holdout=holdout, command=command, embedder=embedder,
                           min_verdict_n=min_verdict_n, force_verdict=force_verdict, cost_weight_rule=rule,
                           **tuned)


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
    if skipped is not None:  # an earlier run's policies (say before a smaller --limit) no longer back this report
        drop_stale(*(out / name for name in ("cost_aware.json", "learned.json", "learned.npz")))
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
    if (out / RESULTS_FILE).is_file():  # not when reporting outcomes recorded elsewhere
        files["results"] = out / RESULTS_FILE
        # What `genroute compile --outcomes` reads: as the compile here, without a target that never answered.
        files["outcomes"] = export_matrix(live, records, out)
    return BenchReport(out_dir=str(out), summaries=tuple(summaries), outcomes=tuple(outcomes),
                       files={k: str(v) for k, v in files.items()}, compiled=compiled, advice=advice,
                       comparisons=tuple(comparisons), compiled_comparisons=tuple(held_out),
                       min_verdict_n=min_verdict_n, compile_note=skipped, empty_note=empty, unscored=tuple(unscored),
                       own_examples_note=own_examples, compiled_on_note=compiled_on)


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


def _tuned_details(router: Router, targets: Sequence[str], kinds: dict[str, str]) -> dict[str, Any]:
    """The tuned backend's engine (Vertex or a local LoRA), its base model and its training price."""
    tuned = next((t for t in targets if kinds.get(t) == "tuned"), None)
    if tuned is None:
        return {}
    info = tuned_info(router, tuned)
    if info.where == "local":
        return {"tuned_info": info}
    price = router.resources.pricing.training_price(info.base_model) if info.base_model else None
    return {"tuned_info": info, "training_price": price}


P = ParamSpec("P")
T = TypeVar("T")


def _sync_twin(twin: Callable[Concatenate[Router, P], Coroutine[Any, Any, T]], name: str
               ) -> Callable[Concatenate[Router, P], T]:
    """``twin`` run on its router's own loop thread, with the twin's parameters (for type checkers and
    ``inspect.signature`` alike) and result."""

    def run(router: Router, /, *args: P.args, **kwargs: P.kwargs) -> T:
        # The router's sync API runs on its private loop, and its engines' clients belong to that loop: a fresh
        # loop (asyncio.run) would use them from the wrong loop and leave them broken for later sync calls.
        from genroute.router.router import check_router

        check_router(router)  # before its loop thread is asked for
        return run_sync(twin(router, *args, **kwargs), name, portal=router._portal)  # noqa: SLF001

    functools.update_wrapper(run, twin)
    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"Sync ``{twin.__name__}``, on the router's own loop thread (not from inside a running event loop)."
    return run


bench = _sync_twin(abench, "bench")


def empty_answers(outcomes: Sequence[Outcome]) -> str:
    """Backends that answered with no text and no tool call on some records: scored as wrong like any other
    answer, but a sign of a template the model stops at (an empty string), not of what it knows."""
    counts: dict[str, list[int]] = {}
    for o in outcomes:
        if o.ok:
            seen = counts.setdefault(o.backend, [0, 0])
            seen[0] += not o.answer.strip() and not o.tool_calls
            seen[1] += 1
    lines = [f"- {b}: {n} of {total} answers were empty (the model stopped before writing anything)"
             for b, (n, total) in sorted(counts.items()) if n]
    if not lines:
        return ""
    return ("\n".join(lines) + "\n\nThey are scored as wrong. Check the backend's template and "
            "`max_output_tokens`: a base model such as the embedded Gemma continues text, so a few-shot format "
            "(ICL's `Input:` / `Output:` lines) works better than an instruction.")


def _failure_examples(outcomes: Sequence[Outcome]) -> str:
    seen: dict[tuple[str, str], str] = {}
    for o in outcomes:
        if not o.ok and (o.backend, o.error_type or "") not in seen:
            seen[(o.backend, o.error_type or "")] = f"{o.backend}: {o.error_type}: {o.error}"
    return "\n".join(seen.values())


def command_line(argv: Sequence[str]) -> str:
    """The shell-quoted command that reproduces a run."""
    return "genroute bench " + " ".join(shlex.quote(a) for a in argv)
