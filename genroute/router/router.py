"""Router: the one API applications call — generate, agenerate, stream, astream."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from genroute.admission import Admission, Instruments
from genroute.admission.breaker import skip_open
from genroute.admission.build import gate_configs, router_gates
from genroute.errors import BackendError, DeadlineExceeded, GenrouteError, StreamInterrupted, UsageError
from genroute.policies.base import Policy, PolicyContext, decided
from genroute.router.executor import Executor
from genroute.router.exploring import note_explore
from genroute.router.inflight import InFlight, RouterStream
from genroute.router.health import Checks
from genroute.router.lifecycle import Lifecycle
from genroute.router.build import (check_arguments, check_providers, default_policy, release_on_collect,
                                   require_prices, require_engine_limits, warn_unused_prices)
from genroute.router.deciding import CostedDecisions
from genroute.runtime.deadlines import deadline_at
from genroute.router.scope import RootSpan, ended_by, parse_request, within_deadline
from genroute.runtime.billing import Charges, charging
from genroute.runtime.portal import Portal, refuse_inside_loop, run_sync
from genroute.runtime.telemetry import CAPTURE_MAX_CHARS, Telemetry
from genroute.router.learning import Learning, backend_info, check_seconds
from genroute.router.output_headroom import history_input_usd, raised_output_usd
from genroute.router.refresh_record import RefreshRecord
from genroute.router.refreshing import Refreshing
from genroute.state import StateStore, build_state
from genroute.types import Decision, GenerateChunk, GenerateRequest, GenerateResult, RequestFields, RequestInput

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from genroute.backends.base import Backend
    from genroute.config import RouterConfig
    from genroute.outcomes.settings import OutcomeSettings, ScrubHook
    from genroute.policies.stats import BenchStats
    from genroute.runtime.resources import Resources
    from genroute.router.ledger import Ledger
    from genroute.router.validators import Validator
    from genroute.state import StateConfig
    from genroute.state.promotions import Promotion


class Router(Lifecycle, Learning, Refreshing, Checks):
    """Routes each request to a backend chosen by a policy, and records why, how long and how much."""

    #: The config file the router was built from (``None``: a mapping, a ``RouterConfig`` or code): where a
    #: ``ConfigError`` found at a request (a local model file, when it first loads) is located by a benchmark.
    _config_file: str | None = None

    def __init__(
        self,
        backends: Mapping[str, Backend],
        policy: Policy | None = None,
        *,
        resources: Resources | None = None,
        validators: Mapping[str, Validator] | None = None,
        capture_content: bool | None = None,
        capture_max_chars: int = CAPTURE_MAX_CHARS,
        timeout_s: float | None = None,
        stats: BenchStats | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        outcomes: OutcomeSettings | Mapping[str, Any] | None = None,
        scrub: ScrubHook | None = None,
        state: StateStore | Mapping[str, Any] | StateConfig | None = None,
        rate_limits: Sequence[Mapping[str, Any]] = (),
        breakers: Mapping[str, Any] | None = None,
    ) -> None:
        from genroute.outcomes.settings import settings_from
        from genroute.runtime.resources import Resources
        from genroute.router.outcome_setup import check_shadows, unsafe_backends

        check_arguments(backends, policy, resources, scrub, capture_content, stats, capture_max_chars, validators)
        # Before any part is bound or any store opened: a bad setting given in code refuses with nothing done.
        self.outcome_settings = settings_from(outcomes)
        gate_config = gate_configs(rate_limits, breakers)
        if not backends:
            raise UsageError("a router needs at least one backend", field="backends")
        self.backends = dict(backends)
        self.resources = resources or Resources({})
        require_prices(self.backends, self.resources.pricing)  # unknown models would silently cost 0
        require_engine_limits(self.backends)  # a sixth stop on Gemini would be a 400 at the first request
        warn_unused_prices(self.backends, self.resources)  # a misspelt key would silently not price its model
        self.policy = policy or default_policy(self.backends)
        if timeout_s is not None:
            check_seconds(timeout_s, "timeout_s")
        self.timeout_s = timeout_s
        for engine in self.resources.engines.values():  # most requests have this long: sized once, not per call
            engine.expect_deadline(timeout_s)
        check_providers(tracer_provider, meter_provider)
        self.telemetry = Telemetry(capture_content=capture_content, capture_max_chars=capture_max_chars,
                                   tracer_provider=tracer_provider,
                                   meter_provider=meter_provider)
        # Flushed at close: batching processors and periodic readers would otherwise lose the last requests.
        self._providers = [p for p in (tracer_provider, meter_provider) if p is not None]
        self.catalogue = {name: backend_info(name, b) for name, b in self.backends.items()}
        self.resources.use_telemetry(self.telemetry)  # embeddings outside rungs join this router's spans and metrics
        with charging(Charges()) as built:  # what embedding semantic routes costs
            self.policy.bind(self.resources)
            if self.resources.knowledge is not None:  # the store writes the routes policies asked for; they read
                self.resources.knowledge.routes.sync()
        #: What building the router cost: embedding semantic routes (0 for the offline embedder, or when every
        #: utterance was stored already), and whether that figure is an estimate.
        self.build_cost_usd, self.build_cost_estimated = built.cost_usd, built.estimated
        self.policy.validate_against(self.catalogue)
        self._unsafe = unsafe_backends(self.backends)
        check_shadows(self.policy, self._unsafe)  # a shadow must never repeat a tool's side effects
        self.context = PolicyContext(catalogue=self.catalogue, stats=stats)
        #: Where admission keeps its counts (``state`` config: process memory unless Redis is configured).
        self.state = build_state(state)
        self._owns_state = not isinstance(state, StateStore)
        self._instruments = Instruments(self.telemetry.meter)
        # Every router counts them (outcome writes use the store too, with or without admission gates).
        self.state.on_fallback, self.state.on_replay = self._instruments.fell_back, self._instruments.replayed
        self._gate_config = gate_config
        self._build_gates()
        self._gated = self._admission(self.policy)
        note_explore(self)
        self._executor = Executor(self.backends, self.policy, telemetry=self.telemetry,
                                  pricing=self.resources.pricing, validators=validators, timeout_s=timeout_s,
                                  unsafe_shadows=frozenset(self._unsafe), admission=self._gated)
        if self.outcome_settings is not None:
            from genroute.router.outcome_setup import build_recorder, engine_secrets

            self._executor.outcomes = build_recorder(self.outcome_settings, self._executor, scrub=scrub,
                                                     secrets=engine_secrets(self.resources), state=self.state)
        self._portal = Portal()
        release_on_collect(self, self._portal)  # its loop thread (if the sync API starts one) ends with us
        self._inflight = InFlight()
        self._closed = False
        self._close_lock, self._shut, self._shut_by = threading.Lock(), threading.Event(), 0.0
        self._refresher: asyncio.Task[None] | None = None
        self._promotions_seen: dict[str, Promotion] = {}
        self._promotions_read = False  # from_config and acreate read them as they build the router
        #: Whether requests start the refresher: outcomes to refresh from, or promotions to read from a shared store.
        self._refreshes = (self.outcome_settings is not None and self.outcome_settings.refresh_every_s is not None
                           ) or self.state.promotions_every_s is not None
        self._decisions = CostedDecisions()
        self._refresh_record = RefreshRecord(self.telemetry.meter)  # the last scheduled refresh, for health

    @classmethod
    def from_config(
        cls,
        source: str | Path | Mapping[str, Any] | RouterConfig,
        *,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        validators: Mapping[str, Validator] | None = None,
        **kwargs: Any,
    ) -> Router:
        """Build a router from a YAML/TOML/JSON file, a mapping or a ``RouterConfig``.

        Blocking: called inside a running event loop it blocks that loop until the router is built (files, imports,
        models, Chroma) and logs one warning per process; in async code use ``await Router.acreate(...)``."""
        from genroute.router.build import build_router

        return build_router(cls, source, tools=tools, validators=validators, **kwargs)

    @classmethod
    async def acreate(
        cls,
        source: str | Path | Mapping[str, Any] | RouterConfig,
        *,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        validators: Mapping[str, Validator] | None = None,
        **kwargs: Any,
    ) -> Router:
        """``from_config`` for async code: file reads, imports, credentials, embedding and store reads run in
        worker threads, so the event loop keeps serving while the router is built."""
        from genroute.router.build import abuild_router

        return await abuild_router(cls, source, tools=tools, validators=validators, **kwargs)

    # -- the API ---------------------------------------------------------------------------------------

    async def agenerate(self, input: RequestInput = None, /, **fields: Unpack[RequestFields]) -> GenerateResult:
        """Answer one request (async)."""
        request = self._request(input, fields)
        with self._inflight:
            async with self._root_span(request, same_context=True) as (span, decision, start, deadline, ledger):
                answers = self._executor.run(request, decision, span, start, deadline, ledger,
                                             bounded=deadline is not None)
                try:
                    with deadline_at(deadline) as block:  # no deadline: no timer
                        return await anext(answers)  # type: ignore[arg-type]  # not live: its one item is the result
                except TimeoutError:
                    if not block.expired():  # a backend's own TimeoutError: not the request's deadline
                        raise
                    error = self._expired(request, decision, ledger)
                    ledger.charge(error)  # what the timed-out attempts cost the provider still counts
                    raise error from None
                except BackendError as exc:
                    if not ended_by(deadline, exc):
                        raise
                    raise self._expired(request, decision, ledger, exc) from exc
                finally:
                    await answers.aclose()

    def generate(self, input: RequestInput = None, /, **fields: Unpack[RequestFields]) -> GenerateResult:
        """Answer one request (sync; not from inside a running event loop)."""
        return run_sync(self.agenerate(input, **fields), "generate", portal=self._portal)

    def astream(self, input: RequestInput = None, /, **fields: Unpack[RequestFields]) -> RouterStream[GenerateChunk]:
        """Stream one answer (async): text chunks, then a ``done`` chunk carrying the full result."""
        return self._inflight.stream(self._astream(input, fields))

    async def _astream(self, input: str | GenerateRequest | None, fields: RequestFields
                       ) -> AsyncIterator[GenerateChunk]:
        request = self._request(input, fields)
        async with self._root_span(request) as (span, decision, start, deadline, ledger):

            def expired(sent: bool) -> GenrouteError:
                # What the attempts the deadline cut cost still counts (the executor recorded them).
                error = self._expired(request, decision, ledger) if not sent else StreamInterrupted(
                    f"request deadline of {request.timeout_s or self.timeout_s}s exceeded after output was sent",
                    backend=ledger.running(decision))
                ledger.charge(error, span)
                return error

            try:
                # aclosing: a caller that stops early closes every inner stream now, in this context.
                chunks = self._executor.stream(request, decision, span, start, deadline, ledger,
                                               bounded=deadline is not None)  # within_deadline bounds its steps
                async with aclosing(chunks) as chunks, aclosing(within_deadline(chunks, deadline, expired)) as steps:
                    async for chunk in steps:
                        if type(chunk) is GenerateChunk:
                            yield chunk
                            continue
                        try:
                            yield GenerateChunk(done=True, result=chunk)
                        except GeneratorExit:  # closed after its last chunk: read to its end, not closed early
                            return
            except BackendError as exc:
                if ended_by(deadline, exc):
                    raise self._expired(request, decision, ledger, exc) from exc
                raise

    def stream(self, input: RequestInput = None, /, **fields: Unpack[RequestFields]) -> Iterator[GenerateChunk]:
        """Stream one answer (sync; not from inside a running event loop).

        One thread reads a stream: a ``next`` (or ``close``) from a second thread while another waits for a chunk
        raises ``UsageError``; hand the chunks to other threads yourself (a ``queue.Queue``), or start a stream per
        thread.
        """
        refuse_inside_loop("stream", "read astream() with `async for`")  # a stream is not awaited
        request = self._request(input, fields)
        return self._portal.iterate(self.astream(request), owner=self)  # held until the stream ends

    async def adecide(self, input: RequestInput = None, /, **fields: Unpack[RequestFields]) -> Decision:
        """What the policy would decide for this request, without running anything (nor reading shared state:
        open breakers are those this process last saw).

        A semantic or learned policy embeds the request to decide, in a worker thread: what that cost is the
        decision's ``cost_usd`` (``cost_estimated`` if part of it is an estimate), on the embedding's span too. A
        preview is not a request: it is not spent in the router's budgets.
        """
        request = self._request(input, fields)
        charges = Charges()
        with charging(charges):
            decision = await self._adecide(request, preview=True)
        if charges.cost_usd or charges.estimated:
            decision = decision.model_copy(update={"cost_usd": charges.cost_usd,
                                                   "cost_estimated": charges.estimated})
        return decision

    def decide(self, input: RequestInput = None, /, **fields: Unpack[RequestFields]) -> Decision:
        """``adecide`` (sync; not from inside a running event loop)."""
        return run_sync(self.adecide(input, **fields), "decide", portal=self._portal)

    def replacing(self, backends: Mapping[str, Backend]) -> Router:
        """This router with the named backends swapped for ``backends``; nothing else is rebuilt or re-read.

        The copy shares this router's policy, telemetry, validators, resources and loop thread (the benchmark
        uses it to give a function-calling backend one record's tools). Close this router, not the copy, and keep
        it referenced while the copy is in use (its loop thread stops when it is collected); the swapped-in
        backends are the caller's to close. One whose model has no price, or whose engine cannot honour its generation
        settings, is refused (``ConfigError`` naming the field), as when a router is built.
        """
        import copy

        check_arguments(backends)
        unknown = sorted(set(backends) - set(self.backends))
        if unknown:
            raise UsageError(f"unknown backend {unknown[0]!r}", field="backends")
        require_prices(backends, self.resources.pricing)  # as when the router was built: refused now, not priced 0
        require_engine_limits(backends)  # ... nor refused at the copy's first request
        clone = object.__new__(type(self))  # a shallow copy: ``copy.copy`` of a router is refused (``__reduce_ex__``)
        clone.__dict__.update(self.__dict__)
        clone.backends = {**self.backends, **backends}
        clone.catalogue = {**self.catalogue, **{name: backend_info(name, b) for name, b in backends.items()}}
        clone.context = PolicyContext(catalogue=clone.catalogue, stats=self.context.stats,
                                      budgets=self.context.budgets)
        clone._executor = copy.copy(self._executor)  # shares resolved validators and the shadow task set
        clone._executor.backends = clone.backends
        note_explore(clone)  # its own decisions, not this router's
        return clone

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Refused: pickling a router, or copying it (``copy.copy`` shared its loop thread, so closing the copy
        closed this router), would need its loop thread, connections and engines, which stay in this process."""
        raise UsageError("a Router is not pickled or copied: it owns a loop thread, connections and engines in "
                         "this process; build one in each process (Router.from_config, e.g. in a worker's "
                         "initializer) or use router.replacing({...}) for a variant of this one", field="router")

    # -- internals -------------------------------------------------------------------------------------

    def _request(self, input: str | GenerateRequest | None, fields: RequestFields) -> GenerateRequest:
        request = parse_request(input, fields, self)
        self._refuse_closed()
        return request

    def _decide(self, request: GenerateRequest, context: PolicyContext | None = None,
                policy: Policy | None = None) -> Decision:
        if request.backend is not None:
            return Decision.single("override", request.backend, f"explicit backend={request.backend!r}")
        policy = policy or self.policy  # decide_with, inlined: every request decides here
        decision = policy.decide(request, context or self.context)
        return decision if type(decision) is Decision else decided(policy, decision)

    async def _adecide(self, request: GenerateRequest, deadline: float | None = None, *,
                       preview: bool = False) -> Decision:
        # What the policy may know of the shared state is read here and handed in: policies stay pure. The policy
        # and its admission are read once: a promotion while this request decides applies to the next one. A
        # preview reads no shared state and holds nothing in the budgets (it is not a request).
        policy, admission = self.policy, None if preview else self._gated
        context = self.context
        if self._breakers is not None:
            health = self._breakers.view() if preview else await self._breakers.health()
            context = dataclasses.replace(context, health=health)
        if admission is not None and policy.reads_state and request.backend is None:  # no gates: no state to read
            context = await admission.context(request, context)
        if policy.blocking and request.backend is None:  # it embeds the request: off the loop, costed
            decision = await self._decisions.run(lambda: self._decide(request, context, policy), request, deadline,
                                                 lambda: self._expired_deciding(request), policy=policy,
                                                 admission=admission)
        else:
            decision = self._decide(request, context, policy)
        return skip_open(decision, context.health)  # open breakers: those rungs are not tried

    def _build_gates(self) -> None:
        """The router's own gates (breakers, rate limits) for its current backends."""
        targets = {name: (b.config.engine, b.config.model) for name, b in self.backends.items()}
        rate_limits, breakers = self._gate_config
        self._gates, self._breakers = router_gates(targets, self.state, self._instruments,
                                                   rate_limits=rate_limits, breakers=breakers)

    @property
    def admission(self) -> Admission:
        """The gates every attempt passes; ``budget(name).usage(key)`` reads a budget's spend (none: it says so)."""
        return self._gated if self._gated is not None else Admission((), self.state, self._instruments)

    def _admission(self, policy: Policy) -> Admission | None:
        """The gates every attempt passes: breakers, rate limits, then the policy's (a budget's); None if none."""
        gates = [*self._gates, *policy.gates(self.state)]
        return Admission(gates, self.state, self._instruments, raised_output=self._raised_output) if gates else None

    def _raised_output(self, request: GenerateRequest, backend: str) -> float:
        """USD the request's own ``max_output_tokens`` above ``backend``'s could add (a budget holds it too)."""
        generation, history = request.generation, request.history
        chosen, pricing = self.backends.get(backend), self.resources.pricing
        return (0.0 if generation is None else raised_output_usd(chosen, pricing, generation)) + \
            (0.0 if not history else history_input_usd(chosen, pricing, history))

    def _expired_deciding(self, request: GenerateRequest) -> DeadlineExceeded:
        return DeadlineExceeded(f"request deadline of {request.timeout_s or self.timeout_s}s exceeded "
                                f"while the {self.policy.name!r} policy decided")

    def _expired(self, request: GenerateRequest, decision: Decision, ledger: Ledger,
                 cause: GenrouteError | None = None) -> DeadlineExceeded:
        """The request's ``DeadlineExceeded`` (naming the rung running), with what ``cause`` (if any) cost."""
        error = DeadlineExceeded(f"request deadline of {request.timeout_s or self.timeout_s}s exceeded",
                                 backend=ledger.running(decision))
        if cause is not None:
            error.cost_usd, error.usage, error.cost_estimated = cause.cost_usd, cause.usage, cause.cost_estimated
        return error

    def _root_span(self, request: GenerateRequest, *, same_context: bool = False) -> RootSpan:
        if self._refreshes:
            self._start_refresher()
        return RootSpan(self.telemetry, request, self.timeout_s, self._adecide, costed=self.policy.blocking,
                        same_context=same_context)


def check_router(router: Any) -> None:
    """``UsageError`` naming ``router`` unless it is a genroute ``Router`` (anything else was an ``AttributeError``)."""
    if not isinstance(router, Router):
        raise UsageError(f"must be a genroute Router, not {type(router).__name__}", field="router")
