"""Graduating a task from few-shot to a tuned model on live traffic: export -> tune -> challenger -> decide.

Each step is a span (``genroute.graduate.<step>``) and a line of the report. ``agraduate`` runs the first three
on a router whose outcome store holds captured, labeled traffic and leaves the tuned backend as a challenger
(shadow or split); traffic then accumulates outcomes, and ``adecide`` promotes it when the quality difference's
95 % lower bound (of an anytime-valid confidence sequence, so it may be run at every refresh; of a fixed-horizon CI
with ``sequential=False``) is above ``-margin`` and it is cheaper, or reports why not (paired in shadow mode, the
two arms unpaired in split mode: ``promote.py``). The advisor line uses what was measured: the traffic volume and token
counts in the store and the tuning run's own CPU time; a monthly volume and a pay-back period only from at least
``MIN_VOLUME_WINDOW_S`` of request times (``payback.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import threading
import time
from collections import Counter
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field

from genroute.config_errors import pydantic_validated, validator_message
from genroute.errors import UsageError
from genroute.jsonl import check_output_dir
from genroute.graduation.export import TuningSet, export_tuning_set
from genroute.bench.sequential import split_sequence_for
from genroute.graduation.payback import advise
from genroute.graduation.promote import Promotion, check_amount, check_rule, decide_promotion
from genroute.graduation.trained import tuned_inputs
from genroute.public_model import PublicModel
from genroute.runtime.pricing import TRAINING_PRICE_CAVEAT

if TYPE_CHECKING:
    from genroute.outcomes.records import OutcomeRecord
    from genroute.outcomes.shared import SharedOutcomeStore
    from genroute.outcomes.store import OutcomeStore
    from genroute.router.router import Router
    from genroute.tuning.local_lora import LocalTuneConfig
    from genroute.tuning.vertex import VertexTuningSettings


_log = logging.getLogger(__name__)


class GraduationReport(PublicModel):
    """What each step did, one line each."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    lines: tuple[str, ...] = ()
    tuning_set: TuningSet | None = None
    adapter_path: str | None = None
    challenger: str | None = None
    tuning_cpu_s: float | None = None
    tuning_wall_s: float | None = None
    promotion: Promotion | None = None
    advice: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    def text(self) -> str:
        """The report as text."""
        return "\n".join(self.lines) + "\n"


def _store(router: Router) -> OutcomeStore | SharedOutcomeStore:
    recorder = router._executor.outcomes
    if recorder is None:
        raise UsageError("graduation needs an `outcomes` section with capture on", field="outcomes")
    return recorder.store


async def agraduate(router: Router, task: str, *, out_dir: str | Path, name: str | None = None,
                    tune: LocalTuneConfig | None = None, mode: Literal["shadow", "split"] = "shadow",
                    share: float = 1.0, eval_share: float = 0.2, min_examples: int = 20, seed: int = 0,
                    engine_options: dict[str, Any] | None = None, backend_options: dict[str, Any] | None = None,
                    register: bool = True, vertex: VertexTuningSettings | None = None,
                    config_path: str | Path | None = None, credentials: Any = None) -> GraduationReport:
    """Export ``task``'s captured examples, tune on them, add the tuned model as a challenger.

    Local LoRA on the embedded model by default (``tune``); with ``vertex`` settings a Vertex AI tuning job whose
    endpoint is written into ``config_path`` (as ``genroute tune`` does). ``register=False`` leaves the router and
    the config file as they are (a Vertex AI job's backend entry is in the report's ``extra["backend"]``):
    ``genroute graduate`` writes the backend and its challenger policy into the config file at once instead.
    """
    from genroute.tuning.data import load_examples
    from genroute.tuning.local_lora import (ADAPTER_FILE, LocalTuneConfig, check_adapter_unserved,
                                            tune_local_examples)

    # Before minutes of tuning: a challenger that could not be registered, or nowhere to write, is refused now.
    check_output_dir(out_dir, field="out_dir")
    check_challenger(router, vertex.name if vertex is not None else (name or f"{task}_tuned"), task=task, mode=mode,
                     share=share, new=register)
    if vertex is not None:
        return await _agraduate_vertex(router, task, out_dir=Path(out_dir), settings=vertex, mode=mode,
                                       share=share, eval_share=eval_share, min_examples=min_examples, seed=seed,
                                       config_path=config_path, credentials=credentials, register=register)

    name = name or f"{task}_tuned"
    out = Path(out_dir)
    # Graduating again under a new name into the same directory would replace an earlier challenger's adapter.
    check_adapter_unserved({n: e.lora_path for n, e in router.resources.engines.items()},
                           out / "adapter" / ADAPTER_FILE, field="out_dir")
    tracer = router.telemetry.tracer
    lines: list[str] = []
    with tracer.start_as_current_span("genroute.graduate", attributes={"genroute.task": task}):
        tuning_set = await _export(router, task, out, eval_share=eval_share, seed=seed, min_examples=min_examples)
        lines.append(tuning_set.line())
        with tracer.start_as_current_span("genroute.graduate.tune") as span:
            examples = load_examples(tuning_set.train_path)  # checked as `genroute tune` checks its files
            config = tune or LocalTuneConfig(progress=False)
            cpu0, wall0 = _cpu_s(), time.perf_counter()
            stop = threading.Event()
            try:
                result = await asyncio.to_thread(tune_local_examples, examples, out / "adapter", config=config,
                                                 stop=stop)
            except asyncio.CancelledError:
                # The thread trains on regardless (Ctrl-C, a cancelled task): stop it, or it would run for minutes
                # more (asyncio.run waits for it) and then write an adapter nobody asked for.
                stop.set()
                raise
            cpu_s, wall_s = _cpu_s() - cpu0, time.perf_counter() - wall0
            span.set_attributes({"genroute.graduate.cpu_s": cpu_s, "genroute.graduate.train_tokens": result.train_tokens})
            lines.append(f"tune: local LoRA on {result.train_examples} examples ({result.validation_examples} "
                         f"validation), {result.steps} steps, {result.train_tokens} training tokens, "
                         f"{wall_s:.0f} s wall / {cpu_s:.0f} CPU-s, validation loss "
                         f"{_loss(result.initial_validation_loss)} -> {_loss(result.validation_loss)}; "
                         f"{result.adapter_path} ({result.adapter_bytes / 1e6:.1f} MB)")
        if register:
            with tracer.start_as_current_span("genroute.graduate.register") as span:
                register_local(router, name, result.adapter_path, task=task, mode=mode, share=share,
                               engine_options=engine_options, backend_options=backend_options)
                span.set_attributes({"genroute.backend": name, "genroute.graduate.mode": mode})
                lines.append(f"register: {name} is the challenger for task {task!r} ({mode}, share {share:.0%})")
    return GraduationReport(task=task, lines=tuple(lines), tuning_set=tuning_set,
                            adapter_path=str(result.adapter_path), challenger=name, tuning_cpu_s=cpu_s,
                            tuning_wall_s=wall_s)


async def _export(router: Router, task: str, out: Path, *, eval_share: float, seed: int,
                  min_examples: int) -> TuningSet:
    with router.telemetry.tracer.start_as_current_span("genroute.graduate.export") as span:
        records = await _store(router).records(task=task)
        tuning_set = await asyncio.to_thread(export_tuning_set, records, task, out, eval_share=eval_share,
                                             seed=seed, min_examples=min_examples)
        span.set_attributes({"genroute.graduate.train": tuning_set.train, "genroute.graduate.eval": tuning_set.eval})
    return tuning_set


async def _agraduate_vertex(router: Router, task: str, *, out_dir: Path, settings: VertexTuningSettings,
                            mode: Literal["shadow", "split"], share: float, eval_share: float, min_examples: int,
                            seed: int, config_path: str | Path | None, credentials: Any,
                            register: bool) -> GraduationReport:
    """``agraduate`` with a Vertex AI tuning job: cost = training tokens x epochs x the list training price."""
    from genroute.backends.tuned import TunedBackend, TunedConfig
    from genroute.tuning.config_file import tuned_entry
    from genroute.tuning.vertex import prepare_data, tune_vertex, vertex_engine

    if config_path is not None:  # the engine to tune with is chosen before the export writes anything
        await asyncio.to_thread(vertex_engine, config_path, settings.engine)
    tracer = router.telemetry.tracer
    with tracer.start_as_current_span("genroute.graduate", attributes={"genroute.task": task}):
        tuning_set = await _export(router, task, out_dir, eval_share=eval_share, seed=seed, min_examples=min_examples)
        with tracer.start_as_current_span("genroute.graduate.tune") as span:
            wall0 = time.perf_counter()
            result = await tune_vertex(tuning_set.train_path, settings, config_path=config_path,
                                       credentials=credentials, register=register)
            wall_s = time.perf_counter() - wall0
            # Vertex bills the tokens of the training rows it was sent (the validation split is not trained on;
            # each row's system line is), estimated here at 4 characters per token.
            system = len(settings.system or "")
            chars = sum(len(e.input) + len(e.output) + system
                        for e in prepare_data(tuning_set.train_path, settings).train)
            tokens = chars / 4 * (settings.epochs or 1)
            given = settings.tuning_usd_per_1m_tokens
            # The table's prices could not be checked against the published page; the caller's is theirs to vouch for.
            usd_per_1m, price_text = given, "as given"
            if given is None:
                table = router.resources.pricing.training_price(settings.base_model)
                usd_per_1m, price_text = (None, "") if table is None else (table[1],
                                                                           f"{table[0]}, {TRAINING_PRICE_CAVEAT}")
            cost = None if usd_per_1m is None else tokens * usd_per_1m / 1e6
            span.set_attributes({"genroute.graduate.job": result.job, "genroute.graduate.wall_s": wall_s})
            if cost is not None:  # as a call's cost is on its span; its tokens are estimated
                span.set_attributes({"gen_ai.usage.cost.amount": cost, "gen_ai.usage.cost.currency": "USD",
                                     "genroute.cost.estimated": True, "genroute.cost.price_unverified": given is None})
        serve = result.endpoint or result.model or ""
        engine = settings.engine or next(n for n, e in router.resources.engines.items()
                                         if e.provider == "gcp.vertex_ai")  # the one tune_vertex tuned with
        lines = [tuning_set.line(),
                 f"tune: Vertex AI job {result.job} {result.state} in {wall_s:.0f} s -> {serve}; ~{tokens:,.0f} "
                 f"training tokens (estimated, {settings.epochs or 1} epoch(s))"
                 + (f" x ${usd_per_1m:g}/1M ({price_text}) = ${cost:.4f}" if cost is not None else
                    f"; no training price known for {settings.base_model} (give tuning_usd_per_1m_tokens, "
                    "--tuning-price)")]
        if register:
            with tracer.start_as_current_span("genroute.graduate.register"):
                config = TunedConfig(kind="tuned", engine=engine, model=serve, base_model=settings.base_model,
                                     tasks=[task], system=settings.system)
                router.add_challenger(settings.name, TunedBackend(settings.name, config, router.resources), task=task,
                                      mode=mode, share=share)
                lines.append(f"register: {settings.name} is the challenger for task {task!r} ({mode}, share "
                             f"{share:.0%})")
    entry = tuned_entry(engine=engine, model=serve, base_model=settings.base_model, system=settings.system,
                        tuning_job=result.job, tasks=settings.tasks)
    return GraduationReport(task=task, lines=tuple(lines), tuning_set=tuning_set, challenger=settings.name,
                            tuning_wall_s=wall_s, extra={"tuning_cost_usd": cost, "job": result.job, "backend": entry})


def register_local(router: Router, name: str, adapter: str | Path, *, task: str, mode: Literal["shadow", "split"],
                   share: float, engine_options: dict[str, Any] | None = None,
                   backend_options: dict[str, Any] | None = None) -> None:
    """Add a tuned backend serving ``adapter`` on the local engine, as ``task``'s challenger.

    Everything is checked before the router changes; a refused call leaves it as it was (``UsageError`` naming the
    argument)."""
    from genroute.backends.tuned import TunedBackend, TunedConfig
    from genroute.engines.local import LocalEngine
    from genroute.engines.local_config import LocalEngineConfig
    from genroute.tuning.local_lora import BASE_MODEL_NAME

    check_challenger(router, name, task=task, mode=mode, share=share, new=True)
    if not isinstance(adapter, str | PathLike) or not Path(adapter).is_file():  # was registered, to fail when used
        raise UsageError(f"no adapter file at {adapter!r:.200}", field="adapter")
    engine_name = f"{name}_engine"
    if engine_name in router.resources.engines:
        raise UsageError(f"engine {engine_name!r} already exists", field="name")
    engine_config = _options(LocalEngineConfig, engine_options, "engine_options",
                             {"lora_path": str(adapter), "prompt_format": "gemma"})
    config = _options(TunedConfig, backend_options, "backend_options",
                      {"kind": "tuned", "engine": engine_name, "model": BASE_MODEL_NAME,
                       "base_model": BASE_MODEL_NAME, "tasks": [task]})
    router.resources.engines[engine_name] = LocalEngine(engine_name, engine_config)
    try:
        router.add_challenger(name, TunedBackend(name, config, router.resources), task=task, mode=mode, share=share)
    except BaseException:
        # Never used: its pool has started no thread and no model is loaded, so dropping it frees everything.
        del router.resources.engines[engine_name]
        raise


def check_challenger(router: Router, name: Any, *, task: Any, mode: Any, share: Any, new: bool) -> None:
    """``UsageError`` naming ``name``/``task``/``mode``/``share`` if they would not make a challenger (``new``:
    ``name`` must not be a backend of ``router`` yet)."""
    from genroute.policies.base import BackendInfo
    from genroute.router.router import check_router

    check_router(router)  # anything else was an AttributeError
    router._challenger_config({"task": task, "backend": name, "mode": mode, "share": share}, backend_arg="name")
    if new and name in router.backends:
        raise UsageError(f"backend {name!r} already exists", field="name")
    if name not in router.backends:  # the policy must take one more backend (a budget needs its cost estimate)
        router.policy.validate_against({**router.catalogue, name: BackendInfo(name=name, kind="tuned", tasks=(task,))})


def _options(model: Any, options: Any, field: str, fixed: dict[str, Any]) -> Any:
    """``model`` validated from the caller's ``options`` with ``fixed`` on top; ``UsageError`` naming ``field``."""
    from collections.abc import Mapping

    from pydantic import ValidationError

    if options is not None and not isinstance(options, Mapping):
        raise UsageError(f"must be a mapping, not {type(options).__name__}", field=field)
    try:
        return pydantic_validated(model, {**(options or {}), **fixed})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = validator_message(error)
        raise UsageError(f"{where}: {message}" if where else message, field=field) from None


async def adecide(router: Router, task: str, *, challenger: str, incumbent: str | None = None,
                  margin: float = 0.05, min_n: int = 100, promote: bool = True,
                  tuning_cost_usd: float | None = None, cpu_usd_per_hour: float | None = None,
                  report: GraduationReport | None = None,
                  mode: Literal["shadow", "split"] | None = None, sequential: bool = True) -> GraduationReport:
    """Decide on the outcomes in the store; promote the challenger when the rule says so.

    ``mode``: ``shadow`` compares paired outcomes, ``split`` the two arms unpaired; by default the mode of the
    router's ``challenger`` policy for ``task`` (shadow without one). ``sequential`` (default): the rule reads the
    anytime-valid 95 % confidence sequence, so the decision may be run again at every refresh (a split's: of its arms
    matched, or their union at a configured share below 10 % or above 90 %: ``split_sequence_for``); ``False``: the
    fixed-horizon 95 % CI, valid for one look planned in advance. The advisor's tuning cost: ``tuning_cost_usd`` if
    given, else a Vertex job's priced tokens, else the local run's measured CPU time x ``cpu_usd_per_hour`` (without
    a price it reports the CPU time and no pay-back)."""
    from genroute.graduation.promote import check_names
    from genroute.router.router import check_router

    check_router(router)
    check_names(task=task, challenger=challenger)
    check_rule(margin, min_n)
    check_amount(tuning_cost_usd, field="tuning_cost_usd")
    check_amount(cpu_usd_per_hour, field="cpu_usd_per_hour")
    check_pair(router, challenger, incumbent)
    configured, share = challenger_mode(router.policy, task, challenger)   # the split's sequence: from its share
    mode, split_sequence = mode or configured, split_sequence_for(share if configured == "split" else None)
    tracer = router.telemetry.tracer
    report = report or GraduationReport(task=task, challenger=challenger)
    with tracer.start_as_current_span("genroute.graduate.decide", attributes={"genroute.task": task}) as span:
        if mode == "split" and sequential:
            split_sequence = await _pinned_sequence(router, task, challenger, split_sequence, share)
        records = await _store(router).records(task=task)
        incumbent = incumbent or _incumbent(records, challenger)
        tuned_on = await asyncio.to_thread(tuned_inputs, router, (challenger, incumbent), report.tuning_set)
        promotion = decide_promotion(records, task, incumbent=incumbent, challenger=challenger, margin=margin,
                                     min_n=min_n, mode=mode, tuned_on=tuned_on, sequential=sequential,
                                     split_sequence=split_sequence)
        span.set_attributes({"genroute.graduate.n": promotion.n, "genroute.graduate.promote": promotion.promote,
                             "genroute.graduate.tuned_on": promotion.tuned_on,
                             "genroute.graduate.rule": promotion.rule,
                             "genroute.graduate.ci_low": promotion.comparison.ci[0],
                             "genroute.graduate.ci_high": promotion.comparison.ci[1]})
        if promotion.confidence_sequence is not None:
            span.set_attributes({"genroute.graduate.cs_low": promotion.confidence_sequence[0],
                                 "genroute.graduate.cs_high": promotion.confidence_sequence[1]})
        if promotion.promote and promote:
            await router.apromote(task, challenger)
    if tuning_cost_usd is None:
        tuning_cost_usd = report.extra.get("tuning_cost_usd")
    if tuning_cost_usd is None and cpu_usd_per_hour is not None and report.tuning_cpu_s is not None:
        tuning_cost_usd = report.tuning_cpu_s / 3600 * cpu_usd_per_hour
    advice = advise(records, promotion, tuning_cost_usd=tuning_cost_usd, tuning_cpu_s=report.tuning_cpu_s)
    lines = (*report.lines, promotion.line(),
             f"promote: {challenger} now answers task {task!r} first ({incumbent} as fallback)"
             if promotion.promote and promote else f"promote: not promoted; {incumbent} keeps task {task!r}",
             f"advisor: {advice}")
    return report.model_copy(update={"lines": lines, "promotion": promotion, "advice": advice})


async def _pinned_sequence(router: Router, task: str, challenger: str, chosen: Literal["matched", "union"],
                           share: float | None) -> Literal["matched", "union"]:
    """The split's sequence its first look chose, kept in the router's state store: a share changed since across the
    10 % line (``split_sequence_for``) would switch sequences between looks, and their guarantee holds for one."""
    pinned = await router.state.pin(json.dumps(["split_sequence", task, challenger]), chosen)
    if pinned != chosen:
        _log.warning("the split share of challenger %r for task %r (%s) now picks the %s sequence, but its experiment "
                     "started on the %s one, which it keeps: switched between looks, neither would be anytime-valid",
                     challenger, task, "not set" if share is None else f"{share:.0%}", chosen, pinned)
    return "union" if pinned == "union" else "matched"


def check_pair(router: Router, challenger: Any, incumbent: Any) -> None:
    """``UsageError`` naming ``challenger`` / ``incumbent`` unless each is a backend of ``router`` and they differ: a
    misspelt name would otherwise be decided on no outcomes ("only 0 paired outcomes") as if traffic were short."""
    for field, name in (("challenger", challenger), ("incumbent", incumbent)):
        if name is not None and (not isinstance(name, str) or name not in router.backends):
            raise UsageError(f"{name!r} is not a backend of the router (backends: {', '.join(router.backends)})",
                             field=field)
    if incumbent == challenger:
        raise UsageError(f"{challenger!r} is the challenger: the incumbent must be another backend", field="incumbent")


def challenger_mode(policy: Any, task: str, challenger: str) -> tuple[Literal["shadow", "split"], float | None]:
    """The mode and share of the ``challenger`` policy for ``task`` and ``challenger`` in ``policy`` (or nested)."""
    from genroute.policies.challenger import ChallengerPolicy

    while policy is not None:
        if isinstance(policy, ChallengerPolicy) and policy.config.task == task \
                and policy.config.backend == challenger:
            return policy.config.mode, policy.config.share
        policy = getattr(policy, "inner", None)
    return "shadow", None


def _incumbent(records: list[OutcomeRecord], challenger: str) -> str:
    served = Counter(str(r.metadata.get("served")) for r in records
                     if r.metadata.get("served") not in (None, challenger))
    if not served:
        raise UsageError("no served outcomes to compare the challenger with", field="incumbent")
    return served.most_common(1)[0][0]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
