"""OpenTelemetry instrumentation following the GenAI semantic conventions.

Library code uses the OTel API only: with no SDK configured every call here is a cheap no-op.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from genroute.types import Usage

if TYPE_CHECKING:
    from google.genai import types

TRACER_NAME = "genroute"

#: Recommended buckets from the GenAI metrics semantic conventions.
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


#: Carries nothing: setting it on entry and resetting it on exit is Python's only test of whether a block ends in
#: the Context it began in (a reset elsewhere raises ValueError, even in a copy holding the same values).
_ENTERED: ContextVar[bool] = ContextVar("genroute_span_entered", default=False)


class CurrentSpan:
    """A span made current for a block that may end in another context.

    A stream's spans stay open across its yields; a stream abandoned without ``aclose`` is finalized by the
    event loop in a fresh context, and one closed by ``Router.close`` in the closing task's. There
    OpenTelemetry's ``start_as_current_span`` would fail to detach its token and log an ERROR traceback. Here
    the span is ended wherever the block ends, and detached only in the context that attached it (elsewhere
    nothing of it is current, so there is nothing to undo).
    """

    def __init__(self, tracer: trace.Tracer, name: str, *, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
                 attributes: dict[str, Any] | None = None) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._attributes = attributes

    def __enter__(self) -> trace.Span:
        from opentelemetry import context

        self.span = self._tracer.start_span(self._name, kind=self._kind, attributes=self._attributes,
                                            record_exception=False, set_status_on_exception=False)
        self._token = context.attach(trace.set_span_in_context(self.span))
        self._mark = _ENTERED.set(True)
        return self.span

    def __exit__(self, *exc: Any) -> None:
        from opentelemetry import context

        try:
            _ENTERED.reset(self._mark)
        except (ValueError, RuntimeError):
            pass  # another context, where none of it is current: nothing to undo
        else:
            context.detach(self._token)
        self.span.end()


def capture_from_env() -> bool:
    """Whether the standard env var opts in to recording prompts and completions."""
    return os.environ.get(CAPTURE_ENV, "").strip().lower() in {"1", "true", "yes"}


class Telemetry:
    """The tracer, meter and instruments one router uses."""

    def __init__(
        self,
        *,
        capture_content: bool | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        from genroute import __version__

        self.capture_content = capture_from_env() if capture_content is None else capture_content
        self.tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider=tracer_provider)
        meter = self.meter = metrics.get_meter(TRACER_NAME, __version__, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Measures number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.cost = meter.create_counter(
            "genroute.cost", unit="USD", description="Cost of model calls in USD",
        )

    def record_call(self, attrs: dict[str, Any], usage: Usage | None, duration_s: float) -> None:
        """Record the duration and token metrics of one model call."""
        self.duration.record(duration_s, attrs)
        if usage is not None:
            self.tokens.record(usage.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            self.tokens.record(usage.output_tokens + usage.thinking_tokens, {**attrs, "gen_ai.token.type": "output"})


def usage_of(response: types.GenerateContentResponse) -> Usage | None:
    """Token usage reported by a response, if any."""
    meta = response.usage_metadata
    if meta is None:
        return None
    return Usage(
        input_tokens=meta.prompt_token_count or 0,
        output_tokens=meta.candidates_token_count or 0,
        cached_input_tokens=meta.cached_content_token_count or 0,
        thinking_tokens=meta.thoughts_token_count or 0,
    )


def usage_attributes(usage: Usage) -> dict[str, int]:
    """GenAI semconv attributes for ``usage``."""
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens + usage.thinking_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
    }


def error_type(exc: BaseException) -> str:
    """The ``error.type`` attribute value for an exception."""
    return type(exc).__name__
