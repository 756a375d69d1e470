"""OpenTelemetry instrumentation following the GenAI semantic conventions.

Library code uses the OTel API only: with no SDK configured every call here is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.context import attach as attach_context
from opentelemetry.context import detach
from opentelemetry.trace import INVALID_SPAN, set_span_in_context

from genroute.construct import replaced
from genroute.types import Usage, built_usage

if TYPE_CHECKING:
    from google.genai import types
    from opentelemetry.context import Context

TRACER_NAME = "genroute"

#: Recommended buckets from the GenAI metrics semantic conventions.
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

_MAX_CACHED_ATTRIBUTES = 512


#: Carries nothing: setting it on entry and resetting it on exit is Python's only test of whether a block ends in
#: the Context it began in (a reset elsewhere raises ValueError, even in a copy holding the same values).
_ENTERED: ContextVar[bool] = ContextVar("genroute_span_entered", default=False)


class CurrentSpan:
    """A span made current for a block that may end in another context.

    A stream's spans stay open across its yields; a stream abandoned without ``aclose`` is finalized by the
    event loop in a fresh context, and one closed by ``Router.close`` in the closing task's. There
    OpenTelemetry's ``start_as_current_span`` would fail to detach its token and log an ERROR traceback. Here
    the span is ended wherever the block ends, and detached only in the context that attached it (elsewhere
    nothing of it is current, so there is nothing to undo). A block that always ends where it began (a plain
    coroutine's, ``same_context=True``) skips that test.
    """

    __slots__ = ("_tracer", "_name", "_kind", "_attributes", "_probe", "span", "_token", "_mark")

    def __init__(self, tracer: trace.Tracer, name: str, *, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
                 attributes: dict[str, Any] | None = None, same_context: bool = False) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._probe = not same_context

    def __enter__(self) -> trace.Span:
        span = self.span = self._tracer.start_span(self._name, kind=self._kind, attributes=self._attributes,
                                                   record_exception=False, set_status_on_exception=False)
        self._token = attach(span)
        if self._probe and self._token is not None:
            self._mark = _ENTERED.set(True)
        return span

    def __exit__(self, *exc: Any) -> None:
        if self._token is None:  # nothing was made current
            self.span.end()
            return
        if self._probe:
            try:
                _ENTERED.reset(self._mark)
            except (ValueError, RuntimeError):  # another context, where none of it is current: nothing to undo
                self.span.end()
                return
        detach(self._token)
        self.span.end()


def attach(span: trace.Span) -> Token[Context] | None:
    """Make ``span`` current; its token for ``detach``, or None for the API's no-op span of no trace (no tracer
    provider and no caller's span): what is current already is that, so there is nothing to change."""
    return None if span is INVALID_SPAN else attach_context(set_span_in_context(span))


#: How many characters of one captured text (a span attribute: messages, a tool's arguments or result, a query)
#: are kept by default: the SDK keeps attribute values whole unless the application set a limit, and a tool that
#: returned 50 MB would put 50 MB on a span.
CAPTURE_MAX_CHARS = 32_768


def clip_captured(text: str, max_chars: int) -> str:
    """``text`` cut to its first ``max_chars`` characters, then a marker saying how many more there were."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}…[genroute: {len(text) - max_chars} more chars cut]"


def capture_from_env() -> bool:
    """Whether the standard env var opts in to recording prompts and completions."""
    return os.environ.get(CAPTURE_ENV, "").strip().lower() in {"1", "true", "yes"}


#: The global meter provider's genroute meter and the instruments made on it, by name: one set for every router
#: (their points are told apart by their attributes, as the SDK would merge same-named instruments anyway). Until the
#: application sets a global provider, the API hands out a stand-in that keeps every meter and instrument asked of
#: it, for good, to forward them once one is set: routers built and closed one after another (per tenant, per job)
#: would each leave theirs there.
_global_meter: tuple[metrics.MeterProvider, metrics.Meter, dict[str, Any]] | None = None
_global_lock = threading.Lock()


def router_meter(meter_provider: metrics.MeterProvider | None) -> metrics.Meter:
    """The meter a router records on: ``meter_provider``'s, else the global provider's (the same for every router)."""
    global _global_meter
    from genroute import __version__

    if meter_provider is not None:
        return metrics.get_meter(TRACER_NAME, __version__, meter_provider=meter_provider)
    provider = metrics.get_meter_provider()
    with _global_lock:
        if _global_meter is None or _global_meter[0] is not provider:  # the first, or the application set one since
            _global_meter = (provider, provider.get_meter(TRACER_NAME, __version__), {})
        return _global_meter[1]


def instrument(create: Any, name: str, **options: Any) -> Any:
    """``create(name, **options)`` (a meter's ``create_counter``, ``create_histogram``...); on the global
    provider's meter (``router_meter``) made once, then shared."""
    found = _global_meter
    if found is None or found[1] is not create.__self__:
        return create(name, **options)
    with _global_lock:
        made = found[2].get(name)
        if made is None:
            made = found[2][name] = create(name, **options)
        return made


class Telemetry:
    """The tracer, meter and instruments one router uses."""

    def __init__(
        self,
        *,
        capture_content: bool | None = None,
        capture_max_chars: int = CAPTURE_MAX_CHARS,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        from genroute import __version__

        self.capture_content = capture_from_env() if capture_content is None else capture_content
        self.capture_max_chars = capture_max_chars
        self.tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider=tracer_provider)
        meter = self.meter = router_meter(meter_provider)
        self.duration = instrument(
            meter.create_histogram, "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.tokens = instrument(
            meter.create_histogram, "gen_ai.client.token.usage", unit="{token}",
            description="Measures number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.cost = instrument(
            meter.create_counter, "genroute.cost", unit="USD", description="Cost of model calls in USD",
        )
        self._noop_meter = isinstance(meter, metrics.NoOpMeter)

        # Attribute dicts that are the same for every call to a model, built once (the SDK copies what it keeps).
        self._attributes: dict[tuple[str, ...], Any] = {}

    def clipped(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """Captured ``attributes`` with each text cut to ``capture_max_chars`` (see ``clip_captured``)."""
        limit = self.capture_max_chars
        return {k: clip_captured(v, limit) if isinstance(v, str) else v for k, v in attributes.items()}

    @property
    def metered(self) -> bool:
        """Whether anything reads this router's metrics; if not, their points are not built (per request).

        Nothing does through the API's no-op meter, nor through its stand-in for the global meter provider
        until an application sets one: that stand-in forwards to a real instrument from then on, so this is
        asked on each call, not once."""
        return not self._noop_meter and getattr(self.duration, "_real_instrument", True) is not None

    def call(self, provider: str, model: str) -> tuple[dict[str, Any], str]:
        """What every span and metric point of a ``generate_content`` call to ``model`` carries (a shared dict:
        read it, never change it), and its span's name."""
        try:
            return self._attributes[provider, model]
        except KeyError:
            return self._cache((provider, model), (
                {"gen_ai.operation.name": "generate_content", "gen_ai.provider.name": provider,
                 "gen_ai.request.model": model}, f"generate_content {model}"))

    def answered_attributes(self, provider: str, model: str, response_model: str
                            ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The metric attributes of an answered call: its own, and those of its input and output token points."""
        try:
            return self._attributes[provider, model, response_model]
        except KeyError:
            base = {**self.call(provider, model)[0], "gen_ai.response.model": response_model}
            return self._cache((provider, model, response_model), (
                base, {**base, "gen_ai.token.type": "input"}, {**base, "gen_ai.token.type": "output"}))

    def _cache(self, key: tuple[str, ...], value: Any) -> Any:
        if len(self._attributes) >= _MAX_CACHED_ATTRIBUTES:  # model names come from configs: this rarely fills
            self._attributes.clear()
        self._attributes[key] = value
        return value

    def count_cost(self, cost: float, attrs: dict[str, Any], *, estimated: bool) -> None:
        """Add ``cost`` to the cost counter at ``attrs``, estimates apart (so that a dashboard can tell billed usage
        from genroute's estimates)."""
        self.cost.add(cost, {**attrs, "genroute.cost.estimated": True} if estimated else attrs)

    def record_call(self, attrs: dict[str, Any], usage: Usage | None, duration_s: float,
                    tokens: tuple[dict[str, Any], dict[str, Any]] | None = None) -> None:
        """Record the duration and token metrics of one model call (``tokens``: the input and output points'
        attributes, else built from ``attrs``)."""
        self.duration.record(duration_s, attrs)
        if usage is not None:
            if tokens is None:
                tokens = {**attrs, "gen_ai.token.type": "input"}, {**attrs, "gen_ai.token.type": "output"}
            self.tokens.record(usage.input_tokens, tokens[0])
            self.tokens.record(usage.output_tokens + usage.thinking_tokens, tokens[1])


def _resolve(done: asyncio.Future[None]) -> None:
    """Mark ``done`` done, unless it already is (cancelled)."""
    if not done.done():
        done.set_result(None)


def usage_of(response: types.GenerateContentResponse) -> Usage | None:
    """Token usage reported by a response, if any.

    Input is the prompt plus the tool-use prompt (what a server-side tool such as Google Search or URL context
    read): Gemini counts them apart, not one within the other, and bills both as input. Its audio part is read from
    the split by modality Gemini gives for a prompt with media (``audio_tokens``)."""
    meta = response.usage_metadata
    if meta is None:
        return None
    prompt, output, cached = meta.prompt_token_count or 0, meta.candidates_token_count or 0, \
        meta.cached_content_token_count or 0
    thinking, tool_use = meta.thoughts_token_count or 0, meta.tool_use_prompt_token_count or 0
    # No provider means a count below zero: one is read as a count left out (estimated where billed), never as tokens
    # that would lower a bill, and dropped from the response here, where its counts are read first (its other
    # readers, ``filled_usage``, read them after). One test: ints OR'ed are negative exactly when one of them is.
    if (prompt | output | cached | thinking | tool_use | (meta.total_token_count or 0)) < 0:
        response.usage_metadata = counts_kept(meta)
        return usage_of(response)
    input_tokens = prompt + tool_use
    usage = built_usage(  # the SDK validated these counts (ints or None)
        input_tokens=input_tokens,
        output_tokens=output,
        # Parts of the input: a provider's larger count is held to it, as pricing reads it, so that a sum of
        # usages costs what its calls cost.
        cached_input_tokens=cached if cached <= input_tokens else input_tokens,
        thinking_tokens=thinking,
        audio_input_tokens=0,
        cached_audio_input_tokens=0,
        # The audio part of the answer (a speech or native-audio model), from its split by modality.
        audio_output_tokens=min(_audio(meta.candidates_tokens_details), output)
        if meta.candidates_tokens_details else 0,
    )
    # A list or None (a text prompt may come without one); Gemini sends it whenever it splits the cached content.
    if meta.prompt_tokens_details:
        audio, cached_audio = audio_tokens(meta)
        if audio:
            audio = min(audio, input_tokens)
            return replaced(usage, audio_input_tokens=audio,
                            cached_audio_input_tokens=min(cached_audio, audio, usage.cached_input_tokens))
    return usage


def counts_kept(meta: types.GenerateContentResponseUsageMetadata) -> types.GenerateContentResponseUsageMetadata:
    """``meta`` without its negative counts (a modality's among them)."""
    update: dict[str, Any] = {}
    for name in type(meta).model_fields:
        value = getattr(meta, name)
        if isinstance(value, int) and value < 0:
            update[name] = None
        elif isinstance(value, list) and any((d.token_count or 0) < 0 for d in value):
            update[name] = [d for d in value if (d.token_count or 0) >= 0]
    return meta.model_copy(update=update) if update else meta


def audio_tokens(meta: types.GenerateContentResponseUsageMetadata) -> tuple[int, int]:
    """The audio tokens of a response's input (prompt, cached content included, and tool-use prompt) and of its cached
    content, from the ``promptTokensDetails``, ``toolUsePromptTokensDetails`` and ``cacheTokensDetails`` lists of
    ``ModalityTokenCount`` (a cached audio token is in the prompt's split too; without a prompt split, the cache's
    is all that is known of it)."""
    cached = _audio(meta.cache_tokens_details)
    prompt = _audio(meta.prompt_tokens_details) if meta.prompt_tokens_details else cached
    return max(prompt, cached) + _audio(meta.tool_use_prompt_tokens_details), cached


def _audio(details: list[types.ModalityTokenCount] | None) -> int:
    # MediaModality is a str enum: equal to its name; a negative count is read as none (``counted``)
    return sum(max(d.token_count or 0, 0) for d in details or () if d.modality == "AUDIO")


@functools.lru_cache(maxsize=_MAX_CACHED_ATTRIBUTES)  # the enum's members, and any string a server invents
def reason_name(reason: Any) -> str:
    """A finish reason (the SDK's enum, or a string) as a lower-case string, semconv style (``"stop"``)."""
    return str(getattr(reason, "value", reason)).lower()


def block_reason(response: types.GenerateContentResponse) -> str | None:
    """Why the provider blocked the prompt (``promptFeedback.blockReason``, lower-case: ``"safety"``,
    ``"prohibited_content"``...), or None."""
    feedback = response.prompt_feedback
    reason = None if feedback is None else feedback.block_reason
    return None if reason is None else reason_name(reason)


def usage_attributes(usage: Usage, cost: float) -> dict[str, Any]:
    """GenAI semconv attributes for ``usage`` and its USD ``cost`` (one dict display: a call span's end)."""
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens + usage.thinking_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
        "gen_ai.usage.cost.amount": cost, "gen_ai.usage.cost.currency": "USD",
    }


async def flush_providers(providers: list[Any], timeout_s: float) -> None:
    """``force_flush`` each provider on its own daemon thread, waiting at most ``timeout_s`` in all.

    The SDK's batch span processor exports inline on flush and ignores the timeout, so an exporter stuck
    on a hanging collector would hold ``close`` (and, in the default executor, interpreter exit) for its
    full retry budget; a daemon thread lets ``close`` return on time and the export finish or fail later.
    """
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    for provider in providers:
        flush = getattr(provider, "force_flush", None)  # the API's no-op providers have none
        if flush is None:
            continue
        done: asyncio.Future[None] = loop.create_future()

        def run(flush: Any = flush, done: asyncio.Future[None] = done) -> None:
            try:
                flush(int(timeout_s * 1000))
            except Exception:  # telemetry must never fail a close
                pass
            finally:
                try:
                    loop.call_soon_threadsafe(_resolve, done)
                except RuntimeError:  # the loop is gone: nobody is waiting any more
                    pass

        threading.Thread(target=run, name="genroute-telemetry-flush", daemon=True).start()
        waits.append(done)
    if waits:
        await asyncio.wait(waits, timeout=timeout_s)


def error_type(exc: BaseException) -> str:
    """The ``error.type`` attribute value for an exception."""
    return type(exc).__name__
