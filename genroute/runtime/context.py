"""RunContext: what a backend gets while it runs — instrumented engine calls, deadline, accounting."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import aclosing, contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import detach
from opentelemetry.trace import SpanKind, Status, StatusCode

from genroute.construct import user_content
from genroute.errors import BackendUnavailable, ConfigError, GenrouteError
from genroute.registry import described
from genroute.runtime.billing import Charges, Meter, charging, counts_output, filled_usage, metering
from genroute.runtime.messages import output_messages, request_attributes
from genroute.runtime.received import CapturedReceived, Received
from genroute.runtime.request_settings import overridden
from genroute.runtime.span_settings import span_attributes
from genroute.runtime.telemetry import (CurrentSpan, Telemetry, attach, block_reason, error_type, reason_name,
                                       usage_attributes, usage_of)
from genroute.types import NO_USAGE, GenerateRequest, Usage, with_history

if TYPE_CHECKING:
    from google.genai import types

    from genroute.engines.base import Engine
    from genroute.runtime.embeddings import RequestEmbeddings
    from genroute.runtime.pricing import ModelPrice, Pricing


class RunContext:
    """Per-rung state: wraps every engine call in a GenAI span and sums usage and cost."""

    # What a rung starts with (class attributes: a rung sets its own only when it changes them).
    usage: Usage = NO_USAGE
    cost_usd: float = 0.0
    cloud_equivalent_cost_usd: float | None = None
    #: Whether part of ``cost_usd`` is an estimate (a call lost, cut short or reporting no usage).
    cost_estimated: bool = False
    #: The part of ``cost_usd`` paid for storing context caches this rung created.
    cache_storage_cost_usd: float = 0.0
    #: What vectors this rung reused from the request's other rungs or shadows cost them (not in ``cost_usd``).
    reused_cost_usd: float = 0.0
    #: How long making those vectors took (not in this rung's own clock): a shadow's latency adds it.
    reused_embedding_s: float = 0.0
    #: The model that answered (the response's version), once a call answered.
    model: str | None = None
    time_to_first_token_s: float | None = None
    #: The request's embeddings (its policy's, earlier rungs', other shadows'), for this rung to reuse and add to;
    #: ``None``: none made yet (``request_embeddings`` makes them).
    embeddings: RequestEmbeddings | None = None
    #: Stop sequences the backend adds for its own prompt format (an ICL backend's ``stop``): a request's own
    #: ``generation.stop_sequences`` replace the backend's settings, not these.
    format_stops: tuple[str, ...] = ()

    def __init__(
        self,
        request: GenerateRequest,
        backend: str,
        *,
        telemetry: Telemetry,
        pricing: Pricing,
        deadline: float | None = None,
        bounded: bool = False,
    ) -> None:
        self.request = request
        self.backend = backend
        self.telemetry = telemetry
        self.pricing = pricing
        self.deadline = deadline
        #: Whether the caller cancels the rung at ``deadline`` (a router's timer), so that engines that can
        #: (``Engine.caller_bounded``) need no timer of their own for it.
        self.bounded = bounded

    @property
    def tracer(self) -> trace.Tracer:
        """The genroute tracer, for backend-specific spans (retrieval, execute_tool)."""
        return self.telemetry.tracer

    @property
    def capture_content(self) -> bool:
        """Whether prompts, completions and tool payloads may be recorded."""
        return self.telemetry.capture_content

    def request_embeddings(self) -> RequestEmbeddings:
        """The request's embeddings, for a rung that embeds its input (made here if none were yet: the executor
        hands them to the request's next rungs and shadows)."""
        embeddings = self.embeddings
        if embeddings is None:
            from genroute.runtime.embeddings import RequestEmbeddings

            embeddings = self.embeddings = RequestEmbeddings()
        return embeddings

    def remaining_s(self) -> float | None:
        """Seconds left before the request's deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    async def generate(
        self,
        engine: Engine,
        model: str,
        contents: list[types.Content] | str,
        config: types.GenerateContentConfig | None = None,
        *,
        price_as: str | None = None,
    ) -> types.GenerateContentResponse:
        """One instrumented, accounted engine call; attempts lost on the way are charged too.

        ``contents``: the turns, or a ``str`` for one user turn (``Prepared.contents``)."""
        try:  # what the call is charged at, checked once per pair before anything is sent
            charged = self.pricing.sendable[engine, price_as or model]
        except KeyError:
            charged = self.pricing.require_charged(engine, price_as or model)
        if self.request.history:  # the conversation's earlier turns, before whatever the backend sends
            contents = with_history(self.request.history, contents)
        contents = _turns(engine, contents)
        if self.request.generation is not None:  # the request's own settings over the backend's (a copy)
            config = overridden(config, self.request.generation, self.format_stops, engine.max_stop_sequences,
                                engine.seed_range)
        telemetry = self.telemetry
        attrs, name = telemetry.call(engine.provider, model)
        # The span is current for the call and ended here, in the coroutine that began it (no context probe).
        span = telemetry.tracer.start_span(name, kind=SpanKind.CLIENT,
                                           attributes=attrs if config is None else span_attributes(attrs, config),
                                           record_exception=False, set_status_on_exception=False)
        token = attach(span)
        try:
            start = time.perf_counter()
            meter = Meter()
            try:
                with meter:
                    # The ABC's signature has neither a str turn nor bounded=: each is sent only to an engine whose
                    # class says it takes it (takes_text, caller_bounded), which its type cannot state.
                    response = await (
                        engine.generate(model, contents, config,  # type: ignore[arg-type]
                                        timeout_s=self.remaining_s(), bounded=True)  # type: ignore[call-arg]
                        if self.bounded and engine.caller_bounded else
                        engine.generate(model, contents,  # type: ignore[arg-type]
                                        config, timeout_s=self.remaining_s()))
                try:
                    usage = usage_of(response)
                except AttributeError:  # not a GenerateContentResponse (None, a str, a dict): the engine's mistake
                    raise not_an_answer(engine, response, "generate") from None
            except BaseException as exc:
                self._fail(span, attrs, exc, start)
                self._charge_unanswered(span, attrs, model, meter.attempts, meter.estimated, charged,
                                        contents, config)
                raise
            # Charged at the usage the response reports (an estimate where it leaves a count out), with the
            # attempts the meter collected before it.
            estimated = meter.estimated
            meta = response.usage_metadata
            # A count left out (usage is None exactly when meta is).
            if meta is None or usage is None or meta.prompt_token_count is None or not counts_output(meta):
                usage, guessed = filled_usage(usage, response, contents, config)
                estimated = estimated or guessed
            calls = (usage, *meter.attempts) if meter.attempts else (usage,)
            self._answered(engine, span, attrs, model, response, start, calls, estimated, charged, contents, config)
            return response
        finally:
            if token is not None:
                detach(token)
            span.end()

    async def stream(
        self,
        engine: Engine,
        model: str,
        contents: list[types.Content] | str,
        config: types.GenerateContentConfig | None = None,
        *,
        price_as: str | None = None,
    ) -> AsyncGenerator[types.GenerateContentResponse, None]:
        """An instrumented, accounted streaming engine call; records time to first token.

        However the stream ends (completed, cut, failed, or its consumer stopped reading) it is charged at the
        usage received so far (the latest chunk's usage, plus an estimate for text that arrived after it, or
        the input estimate when no chunk carried usage), and attempts lost before the first chunk on top.
        """
        try:  # what the call is charged at, checked once per pair before anything is sent
            charged = self.pricing.sendable[engine, price_as or model]
        except KeyError:
            charged = self.pricing.require_charged(engine, price_as or model)
        if self.request.history:  # as in generate
            contents = with_history(self.request.history, contents)
        contents = _turns(engine, contents)
        if self.request.generation is not None:  # as in generate
            config = overridden(config, self.request.generation, self.format_stops, engine.max_stop_sequences,
                                engine.seed_range)
        attrs, name = self.telemetry.call(engine.provider, model)
        with CurrentSpan(self.tracer, name, kind=SpanKind.CLIENT,
                         attributes=span_attributes(attrs, config, stream=True)) as span:
            start = time.perf_counter()
            meter = Meter()
            received = CapturedReceived() if self.telemetry.capture_content else Received()
            complete = False
            try:
                # As in generate: a str turn and bounded= go only to an engine whose class says it takes them.
                stream = (engine.stream(model, contents, config,  # type: ignore[arg-type]
                                        timeout_s=self.remaining_s(), bounded=True)  # type: ignore[call-arg]
                          if self.bounded and engine.caller_bounded_stream else
                          engine.stream(model, contents,  # type: ignore[arg-type]
                                        config, timeout_s=self.remaining_s()))
                async with aclosing(stream) as responses:
                    while True:
                        with metering(meter):  # around each step only: never across our own yield
                            response = await anext(responses, _END)
                        if response is _END:
                            break
                        if self.time_to_first_token_s is None:
                            self.time_to_first_token_s = time.perf_counter() - start
                            span.set_attribute("gen_ai.response.time_to_first_chunk", self.time_to_first_token_s)
                        try:
                            received.add(response)
                        except AttributeError:  # not a GenerateContentResponse: the engine's mistake
                            raise not_an_answer(engine, response, "stream") from None
                        yield response
                # Ended with no chunk, or none with candidates or promptFeedback: an empty answer here, where
                # generate()'s is refused.
                if not received.answered:
                    raise no_answer(engine, "stream")
                complete = True
            except GenrouteError as exc:
                self._fail(span, attrs, exc, start)
                raise
            finally:
                usage, estimated = received.usage(contents, config, complete=complete)
                calls, estimated = [usage, *meter.attempts], estimated or meter.estimated
                if complete and received.last is not None:
                    self._answered(engine, span, attrs, model, received.last, start, calls, estimated, charged,
                                   contents, config, received)
                else:
                    self._charge_unanswered(span, attrs, model, calls, estimated, charged, contents, config)

    @contextmanager
    def charged(self) -> Iterator[None]:
        """Charge this rung for what calls inside the block cost outside engine calls (a retrieval's or an
        example selection's embedding), so that its cost, the request's and its budget settle include them."""
        charges = Charges()
        try:
            with charging(charges):
                yield
        finally:
            self.cost_usd += charges.cost_usd
            self.cost_estimated = self.cost_estimated or charges.estimated
            if charges.reused_usd:
                self.reused_cost_usd += charges.reused_usd
            if charges.reused_s:
                self.reused_embedding_s += charges.reused_s

    def charge_cache(self, engine: Engine, model: str, tokens: int, ttl_s: float, *, estimated: bool = False) -> float:
        """Charge this rung for a context cache of ``tokens`` it made: their storage for ``ttl_s`` (priced per
        token-hour) and, where the engine's provider bills it (``Engine.cache_input_billed``), their creation at the
        input price; return that cost. ``estimated``: ``tokens`` is an estimate."""
        priced = engine.pricing_model(model)
        if priced is None:
            return 0.0
        storage = self.pricing.storage_cost(priced, tokens, ttl_s)
        cost = storage + (self.pricing.cost(priced, Usage(input_tokens=tokens)) if engine.cache_input_billed else 0.0)
        self.cost_usd += cost
        self.cache_storage_cost_usd += storage
        self.cost_estimated = self.cost_estimated or (estimated and cost > 0)
        if cost and self.telemetry.metered:
            self.telemetry.count_cost(cost, {"gen_ai.operation.name": "create_cached_content",
                                             "gen_ai.provider.name": engine.provider, "gen_ai.request.model": model},
                                      estimated=estimated)
        return cost

    def _fail(self, span: trace.Span, attrs: dict[str, Any], exc: BaseException, start: float) -> None:
        if not isinstance(exc, GenrouteError):  # a cancellation: no error of the call's own
            return
        kind = error_type(exc)
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
        if self.telemetry.metered:
            self.telemetry.record_call({**attrs, "error.type": kind}, None, time.perf_counter() - start)

    def _charge(self, span: trace.Span, calls: Sequence[Usage], estimated: bool,
                charged: tuple[ModelPrice | None, str | None], answer: dict[str, Any] | None = None
                ) -> tuple[Usage, float]:
        """Add the usage of ``calls`` (the answer and any lost attempts, each priced on its own) and its cost to
        this rung and to the call's span (with ``answer``'s attributes, in one go); return the summed usage and
        its cost."""
        usage = calls[0] if len(calls) == 1 else sum(calls, NO_USAGE)
        if not estimated and usage.is_zero:
            if answer:
                span.set_attributes(answer)
            return usage, 0.0
        # A local model is free, unless the config's `pricing` names it (its compute, say); its reference model
        # (if any) prices its cloud equivalent.
        price, reference = charged  # Pricing.charged_at, as the call found it before it was sent
        cost = 0.0 if price is None else price.cost(usage) if len(calls) == 1 else sum(
            price.cost(call) for call in calls)
        self.usage = usage if self.usage is NO_USAGE else self.usage + usage
        self.cost_usd += cost
        self.cost_estimated = self.cost_estimated or estimated
        extra = None
        if reference:
            extra = sum(self.pricing.cost(reference, call) for call in calls)
            self.cloud_equivalent_cost_usd = (self.cloud_equivalent_cost_usd or 0.0) + extra
        if span.is_recording():
            # Token counts only when they are the provider's: an estimate is marked on the cost, never reported
            # as gen_ai.usage.* (the conventions forbid invented counts there).
            span_attrs: dict[str, Any] = {
                "genroute.cost.estimated": True, "gen_ai.usage.cost.amount": cost, "gen_ai.usage.cost.currency": "USD",
            } if estimated else usage_attributes(usage, cost)
            if extra is not None:
                span_attrs["genroute.cloud_equivalent.cost.amount"] = extra
                span_attrs["genroute.cloud_equivalent.model"] = reference
            if answer:
                span_attrs.update(answer)
            span.set_attributes(span_attrs)
        return usage, cost

    def _charge_unanswered(self, span: trace.Span, attrs: dict[str, Any], model: str,
                           calls: Sequence[Usage], estimated: bool, charged: tuple[ModelPrice | None, str | None],
                           contents: list[types.Content] | str, config: types.GenerateContentConfig | None) -> None:
        """Charge a call that gave no whole answer (failed, cut or cancelled) for ``calls``; count the cost."""
        if self.telemetry.capture_content and span.is_recording():
            span.set_attributes(self.telemetry.clipped(request_attributes(contents, config)))
        cost = self._charge(span, calls, estimated, charged)[1]
        if cost and self.telemetry.metered:
            self._count_cost(cost, attrs, model, estimated)

    def _count_cost(self, cost: float, attrs: dict[str, Any], model: str, estimated: bool,
                    answered: dict[str, Any] | None = None) -> None:
        """Add ``cost`` to the cost counter: at the answered call's metric attributes (``answered``), or at the
        call's own, estimates apart (so that a dashboard can tell billed usage from genroute's estimates)."""
        if answered is not None and not estimated:
            self.telemetry.cost.add(cost, answered)
        else:
            self.telemetry.count_cost(cost, {**attrs, "gen_ai.response.model": self.model or model},
                                      estimated=estimated)

    def _answered(self, engine: Engine, span: trace.Span, attrs: dict[str, Any], model: str,
                  response: types.GenerateContentResponse, start: float, calls: Sequence[Usage], estimated: bool,
                  charged: tuple[ModelPrice | None, str | None], contents: list[types.Content] | str,
                  config: types.GenerateContentConfig | None, received: Received | None = None) -> None:
        """Account an answered call: its response's attributes on its span, its usage charged, its metrics
        (``received``: what a stream delivered, for the answer it captures)."""
        self.model = response_model = response.model_version or model
        telemetry = self.telemetry
        answer: dict[str, Any] | None = None
        if span.is_recording():  # what no exporter reads is not built
            answer = {"gen_ai.response.model": response_model}
            candidates = response.candidates
            if candidates:
                reasons = [reason_name(c.finish_reason) for c in candidates if c.finish_reason is not None]
                if reasons:
                    answer["gen_ai.response.finish_reasons"] = reasons
            else:  # a blocked prompt: no candidate, and the block reason is why the answer ended
                blocked = block_reason(response)
                if blocked is not None:
                    answer["gen_ai.response.finish_reasons"] = [blocked]
            if telemetry.capture_content:
                answer.update(telemetry.clipped({
                    **request_attributes(contents, config),
                    "gen_ai.output.messages": output_messages(
                        received.candidates() if isinstance(received, CapturedReceived) else candidates)}))
        usage, cost = self._charge(span, calls, estimated, charged, answer)
        if telemetry.metered:
            points = telemetry.answered_attributes(engine.provider, model, response_model)
            if cost:
                self._count_cost(cost, attrs, model, estimated, points[0])
            # No token points for an estimate: the conventions forbid invented counts (its cost is marked).
            telemetry.record_call(points[0], None if estimated else usage, time.perf_counter() - start, points[1:])


#: What ``anext`` gives at a stream's end: an engine's ``None`` chunk is a mistake to name, not its end.
_END: Any = object()


def not_an_answer(engine: Engine, response: object, method: str) -> ConfigError:
    """The error for an engine whose ``generate`` answered, or whose ``stream`` yielded, ``response``, which is not a
    ``google.genai`` ``GenerateContentResponse``: it was an ``AttributeError`` from genroute's accounting
    (``'str' object has no attribute 'usage_metadata'``), naming neither the engine nor its class. The engine is
    named as a backend or a policy is (``registry.described``): a plugin's kind, entry point and package, else its
    class."""
    return ConfigError(f"engine {engine.name!r} ({described(type(engine))}) "
                       f"{'answered' if method == 'generate' else 'yielded'} {type(response).__name__} from "
                       f"{method}(), not a google.genai.types.GenerateContentResponse", field=f"engines.{engine.name}")


def no_answer(engine: Engine, method: str) -> BackendUnavailable:
    """The error for an engine whose ``generate`` answered a response with neither candidates nor
    ``promptFeedback``, or whose ``stream`` ended without yielding one that has either (no chunk, or only chunks of
    usage): no answer, where the other method of the same
    engine may give one (an empty stream was an empty answer while an empty ``generate`` was refused). A
    ``BackendUnavailable``, as a malformed body from Gemini is (the next rung is tried), naming the engine and its
    class or plugin."""
    what = ("answered a response with neither candidates nor promptFeedback from generate()" if method == "generate"
            else "ended its stream() without yielding a response with candidates or promptFeedback")
    return BackendUnavailable(f"malformed response body: engine {engine.name!r} ({described(type(engine))}) {what}")


def _turns(engine: Engine, contents: list[types.Content] | str) -> list[types.Content] | str:
    """``contents`` as ``engine`` takes them: a ``str`` (one user turn) as it is only by an engine that takes text."""
    return [user_content(contents)] if not engine.takes_text and isinstance(contents, str) else contents
