"""The benchmark as one call: load, (ingest), run, summarise, report, compile, advise."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from genroute.bench.advisor import AdvisorSettings, GraduationAdvice, advise
from genroute.bench.compile import CompileReport, compile_policy
from genroute.bench.datasets import BenchRecord, load_records, sample
from genroute.bench.manifest import RunManifest, check_and_write, file_digest, records_digest, target_digests
from genroute.bench.report import Summary, markdown_table, summarize, write_report
from genroute.bench.runner import POLICY_TARGET, RESULTS_FILE, Outcome, arun_bench, check_targets
from genroute.bench.scorers import resolve_scorer
from genroute.errors import UsageError
from genroute.runtime.portal import Portal

if TYPE_CHECKING:
    from genroute.router.router import Router


class BenchReport(BaseModel):
    """Everything a benchmark run produced."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    out_dir: str
    summaries: tuple[Summary, ...]
    outcomes: tuple[Outcome, ...]
    files: dict[str, str]
    compiled: CompileReport | None = None
    advice: GraduationAdvice | None = None

    def markdown(self) -> str:
        """The main table (and the compile and advisor sections) as Markdown."""
        text = markdown_table(self.summaries)
        if self.compiled is not None:
            text += "\n" + self.compiled.markdown()
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
) -> BenchReport:
    """Benchmark ``backends`` (and the router's policy end to end if ``policy``) on a dataset; write reports.

    Rerunning into the same ``out_dir`` resumes: rows already there are reused (``retry_failed``: except
    failed ones) once ``run.json`` shows they were made with the same data, scorer, seed and configs.
    """
    from_file = isinstance(data, str | Path)
    pool = load_records(data, task=task) if from_file else list(data)  # type: ignore[arg-type]
    records = sample(pool, limit, seed=seed)
    source = str(data) if from_file else None
    out = Path(out_dir)
    chosen = resolve_scorer(scorer, records)
    targets = [*backends, *([POLICY_TARGET] if policy else [])]
    check_targets(router, targets, chosen)
    manifest = RunManifest(
        data=source or "<records>", data_sha256=records_digest(pool), scorer=chosen.name, seed=seed, limit=limit,
        corpus=str(corpus) if corpus is not None else None,
        corpus_sha256=file_digest(corpus) if corpus is not None else None,
        targets=target_digests(router, targets, POLICY_TARGET), policy=policy, concurrency=concurrency,
        command=command)
    check_and_write(out, manifest, results=out / RESULTS_FILE)
    if corpus is not None:
        await ingest_corpus(router, corpus, collection)
    outcomes = await arun_bench(router, records, targets, chosen, out_dir=out, concurrency=concurrency,
                                stream=stream, progress=progress, retry_failed=retry_failed)
    summaries = summarize(outcomes, seed=seed)
    kinds = {name: getattr(b, "kind", "") for name, b in router.backends.items()}
    compiled = None
    if compile and len([t for t in targets if t != POLICY_TARGET]) >= 1 and len(records) >= 2:
        compiled = compile_policy(outcomes, records, out, seed=seed, source=source, embedder=embedder,
                                  min_quality=min_quality, holdout=holdout)
    advice = advise(summaries, advisor, kinds=kinds)
    sections = []
    if command:
        sections.append(("Command", command))
    if compiled is not None:
        sections.append(("Compiled policy (held-out split)", compiled.markdown()))
    if advice is not None:
        sections.append(("Graduation advisor", advice.text))
    failures = _failure_examples(outcomes)
    if failures:
        sections.append(("Failures (first of each type)", failures))
    title = f"genroute bench: {Path(source).name if source else 'records'}"
    files = write_report(out, summaries, title=title, sections=sections)
    files["results"] = out / RESULTS_FILE
    return BenchReport(out_dir=str(out), summaries=tuple(summaries), outcomes=tuple(outcomes),
                       files={k: str(v) for k, v in files.items()}, compiled=compiled, advice=advice)


def bench(router: Router, data: str | Path | Sequence[BenchRecord], **kwargs: Any) -> BenchReport:
    """Sync ``abench``, run on the router's own loop thread (not from inside a running event loop)."""
    Portal.refuse_inside_loop("bench")
    # The router's sync API runs on its private loop, and its engines' clients belong to that loop: a fresh
    # loop (asyncio.run) would use them from the wrong loop and leave them broken for later sync calls.
    return router._portal.call(abench(router, data, **kwargs))  # noqa: SLF001 - the router's sync bridge


async def ingest_corpus(router: Router, corpus: str | Path, collection: str | None) -> None:
    """Ingest a RAG corpus JSONL into the router's knowledge store (already stored chunks are skipped)."""
    from genroute.knowledge.ingest import aingest

    if collection is None:
        raise UsageError("--corpus needs --collection (the RAG backend's collection)", field="collection")
    store = router.resources.knowledge
    if store is None:
        raise UsageError("the config has no `knowledge` section to ingest the corpus into", field="corpus")
    await aingest(store, [Path(corpus)], collection=collection)


def _failure_examples(outcomes: Sequence[Outcome]) -> str:
    seen: dict[tuple[str, str], str] = {}
    for o in outcomes:
        if not o.ok and (o.backend, o.error_type or "") not in seen:
            seen[(o.backend, o.error_type or "")] = f"{o.backend}: {o.error_type}: {o.error}"
    return "\n".join(seen.values())


def command_line(argv: Sequence[str]) -> str:
    """The shell-quoted command that reproduces a run."""
    return "genroute bench " + " ".join(shlex.quote(a) for a in argv)
