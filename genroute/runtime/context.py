"""RunContext: what a backend gets while it runs — instrumented engine calls, deadline, accounting."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from genroute.errors import GenrouteError
from genroute.runtime.telemetry import CurrentSpan, Telemetry, error_type, usage_attributes, usage_of
from genroute.types import GenerateRequest, Usage

if TYPE_CHECKING:
    from google.genai import types

    from genroute.engines.base import Engine
    from genroute.runtime.pricing import Pricing


class RunContext:
    """Per-rung state: wraps every engine call in a GenAI span and sums usage and cost."""

    def __init__(
        self,
        request: GenerateRequest,
        backend: str,
        *,
        telemetry: Telemetry,
        pricing: Pricing,
        deadline: float | None = None,
    ) -> None:
        self.request = request
        self.backend = backend
        self.telemetry = telemetry
        self.pricing = pricing
        self.deadline = deadline
        self.usage = Usage()
        self.cost_usd = 0.0
        self.cloud_equivalent_cost_usd: float | None = None
        self.model: str | None = None
        self.time_to_first_token_s: float | None = None

    @property
    def tracer(self) -> trace.Tracer:
        """The genroute tracer, for backend-specific spans (retrieval, execute_tool)."""
        return self.telemetry.tracer

    @property
    def capture_content(self) -> bool:
        """Whether prompts, completions and tool payloads may be recorded."""
        return self.telemetry.capture_content

    def remaining_s(self) -> float | None:
        """Seconds left before the request's deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    async def generate(
        self,
        engine: Engine,
        model: str,
        contents: list[types.Content],
        config: types.GenerateContentConfig | None = None,
        *,
        price_as: str | None = None,
    ) -> types.GenerateContentResponse:
        """One instrumented, accounted engine call."""
        with self._span(engine, model, config) as (span, attrs):
            start = time.perf_counter()
            try:
                response = await engine.generate(model, contents, config, timeout_s=self.remaining_s())
            except GenrouteError as exc:
                self._fail(span, attrs, exc, start)
                raise
            self._account(engine, span, attrs, model, response, start, price_as=price_as)
            return response

    async def stream(
        self,
        engine: Engine,
        model: str,
        contents: list[types.Content],
        config: types.GenerateContentConfig | None = None,
        *,
        price_as: str | None = None,
    ) -> AsyncIterator[types.GenerateContentResponse]:
        """An instrumented, accounted streaming engine call; records time to first token."""
        with self._span(engine, model, config, stream=True) as (span, attrs):
            start = time.perf_counter()
            last = None
            try:
                stream = engine.stream(model, contents, config, timeout_s=self.remaining_s())
                async with aclosing(stream) as responses:  # type: ignore[type-var]
                    async for response in responses:
                        if self.time_to_first_token_s is None:
                            self.time_to_first_token_s = time.perf_counter() - start
                            span.set_attribute("gen_ai.response.time_to_first_chunk", self.time_to_first_token_s)
                        if response.usage_metadata is not None or last is None:
                            last = response
                        yield response
            except GenrouteError as exc:
                self._fail(span, attrs, exc, start)
                raise
            if last is not None:
                self._account(engine, span, attrs, model, last, start, price_as=price_as)

    def _span(self, engine: Engine, model: str, config: Any, *, stream: bool = False) -> Any:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "generate_content",
            "gen_ai.provider.name": engine.provider,
            "gen_ai.request.model": model,
        }
        span_attrs = dict(attrs)
        if config is not None:
            for key, attr in (("temperature", "gen_ai.request.temperature"),
                              ("max_output_tokens", "gen_ai.request.max_tokens"),
                              ("top_p", "gen_ai.request.top_p"), ("top_k", "gen_ai.request.top_k")):
                value = getattr(config, key, None)
                if value is not None:
                    span_attrs[attr] = value
        if stream:
            span_attrs["genroute.stream"] = True
        return _SpanScope(self.tracer, f"generate_content {model}", span_attrs, attrs)

    def _fail(self, span: trace.Span, attrs: dict[str, Any], exc: BaseException, start: float) -> None:
        kind = error_type(exc)
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
        self.telemetry.record_call({**attrs, "error.type": kind}, None, time.perf_counter() - start)

    def _account(self, engine: Engine, span: trace.Span, attrs: dict[str, Any], model: str,
                 response: types.GenerateContentResponse, start: float, *, price_as: str | None) -> None:
        usage = usage_of(response) or Usage()
        priced = engine.pricing_model(price_as or model)
        cost = self.pricing.cost(priced, usage)
        self.usage = self.usage + usage
        self.cost_usd += cost
        self.model = response.model_version or model
        reference = getattr(engine, "reference_model", None)
        if priced is None and reference:
            extra = self.pricing.cost(reference, usage)
            self.cloud_equivalent_cost_usd = (self.cloud_equivalent_cost_usd or 0.0) + extra
            span.set_attribute("genroute.cloud_equivalent.cost.amount", extra)
            span.set_attribute("genroute.cloud_equivalent.model", reference)
        span.set_attributes(usage_attributes(usage))
        span.set_attribute("gen_ai.usage.cost.amount", cost)
        span.set_attribute("gen_ai.usage.cost.currency", "USD")
        span.set_attribute("gen_ai.response.model", self.model)
        reasons = [str(getattr(c.finish_reason, "value", c.finish_reason)).lower()
                   for c in (response.candidates or []) if c.finish_reason is not None]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        if self.capture_content:
            span.set_attribute("gen_ai.output.messages", _dump(response.candidates))
        call_attrs = {**attrs, "gen_ai.response.model": self.model}
        self.telemetry.record_call(call_attrs, usage, time.perf_counter() - start)
        if cost:
            self.telemetry.cost.add(cost, call_attrs)


class _SpanScope:
    """Starts a CLIENT span as current and yields it with the metric attributes."""

    def __init__(self, tracer: trace.Tracer, name: str, span_attrs: dict[str, Any], attrs: dict[str, Any]) -> None:
        self._cm = CurrentSpan(tracer, name, kind=SpanKind.CLIENT, attributes=span_attrs)
        self._attrs = attrs

    def __enter__(self) -> tuple[trace.Span, dict[str, Any]]:
        return self._cm.__enter__(), self._attrs

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def _dump(value: Any) -> str:
    try:
        return json.dumps([v.model_dump(mode="json", exclude_none=True) for v in value or []])
    except Exception:  # content capture must never break a request
        return str(value)
