"""The benchmark as one call: load, (ingest), run, then report (``genroute.bench.run_report``: summarise, compare,
compile, advise, write the files)."""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from genroute.bench.advisor import AdvisorSettings
from genroute.bench.corpus import corpus_store, ingest_corpus
from genroute.bench.datasets import BenchRecord, check_holdout, check_quality_floor, check_records, load_records, sample
from genroute.bench.manifest import (
    RunManifest, check_and_write, file_digest, records_digest, scorer_digest, target_digests, target_prices,
)
from genroute.bench.own_examples import own_examples_note
from genroute.bench.paired import MIN_VERDICT_N
from genroute.bench.policy_inputs import policy_inputs_note
from genroute.bench.run_report import BenchReport, report_outcomes
from genroute.bench.runner import (
    POLICY_TARGET, RESULTS_FILE, arun_bench, check_concurrency, check_flags, check_targets, load_outcomes,
    target_names,
)
from genroute.bench.score_checks import check_min_n, check_seed
from genroute.bench.scorers import check_golds, resolve_scorer
from genroute.errors import UsageError
from genroute.graduation.trained import tuned_info
from genroute.jsonl import output_dir
from genroute.policies.cost_weight import CostWeightRule, as_rule
from genroute.runtime.portal import run_sync

if TYPE_CHECKING:
    from genroute.router.router import Router

#: Imported from here by earlier callers; ``genroute.bench.run_report`` defines them.
__all__ = ["BenchReport", "abench", "bench", "command_line", "report_outcomes"]


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


def command_line(argv: Sequence[str]) -> str:
    """The shell-quoted command that reproduces a run."""
    return "genroute bench " + " ".join(shlex.quote(a) for a in argv)
