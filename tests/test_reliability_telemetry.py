"""Telemetry never hurts requests: OTLP export works, and a dead or hanging collector changes nothing.

The standard OTLP/HTTP exporters (the ``otlp`` extra) send to ``genroute.testing.otlp.OtlpReceiver``,
which decodes the protobuf. With the collector healthy, the GenAI attributes arrive. With it down
(a closed port) or hanging (accepting and never answering), every request still succeeds with the same
answer, usage and cost, because the BatchSpanProcessor exports off the request path. What could not be
exported is counted by the OTel SDK's own self-observability metrics (``otel.sdk.exporter.span.exported``
and ``otel.sdk.processor.span.processed`` with ``error.type``, enabled by
``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED=true``) and is never raised to the caller. Those counters and the
``meter_provider=`` argument of the exporters and the batch processor need opentelemetry-sdk and the
OTLP/HTTP exporter 1.42 or newer (the floor in the ``dev`` and ``otlp`` extras).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from genroute import Router
from genroute.runtime.telemetry import DURATION_BUCKETS
from genroute.testing.otlp import OtlpReceiver

from .conftest import gemini_config

REQUESTS = 30
HANG_CAP_S = 60.0  # a hang check, not a timing


@dataclass
class Pipeline:
    """Providers exporting over OTLP/HTTP, plus an in-memory reader of the SDK's own export metrics."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    selfmon: InMemoryMetricReader

    @property
    def providers(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def sdk_counts(self, metric: str) -> dict[str | None, int]:
        """Sum of a self-observability counter per ``error.type`` (``None``: exported fine)."""
        counts: dict[str | None, int] = {}
        data = self.selfmon.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        for p in m.data.data_points:
                            key = p.attributes.get("error.type")
                            counts[key] = counts.get(key, 0) + int(p.value)
        return counts

    def shutdown(self) -> None:
        # Bounded: an exporter stuck on a dead collector must not stall the test session.
        def stop() -> None:
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown(timeout_millis=2000)
        worker = threading.Thread(target=stop, daemon=True)
        worker.start()
        worker.join(3)


def _pipeline(endpoint: str, *, timeout_s: float, queue: int = 2048) -> Pipeline:
    selfmon = InMemoryMetricReader()
    internal = MeterProvider(metric_readers=[selfmon])
    spans = OTLPSpanExporter(endpoint=endpoint + "/v1/traces", timeout=timeout_s, meter_provider=internal)
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(
        spans, max_queue_size=queue, schedule_delay_millis=20, max_export_batch_size=min(queue, 64),
        meter_provider=internal))
    metrics = OTLPMetricExporter(endpoint=endpoint + "/v1/metrics", timeout=timeout_s, meter_provider=internal)
    reader = PeriodicExportingMetricReader(metrics, export_interval_millis=60_000)  # exported at flush
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    return Pipeline(tracer_provider, meter_provider, selfmon)


@pytest.fixture(autouse=True)
def _sdk_self_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@contextlib.contextmanager
def _closed_port() -> Iterator[str]:
    """An address whose connections are refused while the block runs: a socket bound there that never listens. (A
    port bound, closed and then used could be taken meanwhile by another process of a shared machine, listening.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def _run(server: Any, providers: dict[str, Any]) -> list[tuple[str, Any, float]]:
    """REQUESTS requests (every third a stream) under a hang cap; their (text, usage, cost)."""
    results: list[tuple[str, Any, float]] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with Router.from_config(gemini_config(server), **providers) as router:
                for i in range(REQUESTS):
                    if i % 3 == 2:
                        final = list(router.stream(f"q{i}"))[-1].result
                    else:
                        final = router.generate(f"q{i}")
                    results.append((final.text, final.usage, final.cost_usd))
        except BaseException as exc:  # reported below: telemetry must never surface here
            failure.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(HANG_CAP_S)
    assert not worker.is_alive(), "requests hung behind telemetry export"
    assert not failure, f"a request failed because of telemetry: {failure[0]!r}"
    return results


def _baseline(server: Any) -> list[tuple[str, Any, float]]:
    return _run(server, {})  # no SDK at all: the API's no-op providers


def test_spans_and_metrics_arrive_over_otlp_with_the_genai_attributes(gemini_server, receiver):
    pipeline = _pipeline(receiver.endpoint, timeout_s=5)
    gemini_server.reply_text("Paris.", usage=(12, 3))
    with Router.from_config(gemini_config(gemini_server), **pipeline.providers) as router:
        assert router.generate("Capital of France?").text == "Paris."
    # close() flushed both providers: everything is at the receiver now, nothing waits on a timer
    root = receiver.spans("genroute.generate")[0]
    assert root.attributes["genroute.policy"] == "static" and root.attributes["genroute.backend"] == "chat"
    assert root.attributes["gen_ai.usage.cost.currency"] == "USD" and root.attributes["gen_ai.usage.cost.amount"] > 0
    assert not root.events  # a request its first rung served: the root span's attributes say it all
    call = receiver.spans("generate_content")[0]
    assert call.name == "generate_content gemini-2.5-flash" and call.parent_span_id == root.span_id
    assert call.kind == 3  # SPAN_KIND_CLIENT
    assert {k: call.attributes[k] for k in (
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")} == {
        "gen_ai.operation.name": "generate_content", "gen_ai.provider.name": "gcp.gemini",
        "gen_ai.request.model": "gemini-2.5-flash", "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3}
    assert call.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    metrics = receiver.metrics()
    (duration,) = metrics["gen_ai.client.operation.duration"]
    assert duration.count == 1 and list(duration.bounds) == DURATION_BUCKETS
    assert duration.attributes["gen_ai.provider.name"] == "gcp.gemini"
    tokens = {p.attributes["gen_ai.token.type"]: p.sum for p in metrics["gen_ai.client.token.usage"]}
    assert tokens == {"input": 12, "output": 3}
    pipeline.shutdown()


def test_with_the_collector_down_requests_are_unaffected_and_drops_are_counted(gemini_server):
    expected = _baseline(gemini_server)
    # A timeout under the exporter's first backoff (0.8-1.2 s) makes every batch one refused attempt, failed and
    # counted. With room for a retry, a loaded machine can overshoot the deadline during the backoff: the retry then
    # passes requests a negative timeout, its ValueError escapes export(), and the SDK counts that batch as exported.
    with _closed_port() as endpoint:
        pipeline = _pipeline(endpoint, timeout_s=0.5)
        got = _run(gemini_server, pipeline.providers)
        assert got == expected  # same answers, usage and cost as with no telemetry at all
        # close() flushed with a bound; wait here for every export attempt to have failed before counting
        pipeline.tracer_provider.force_flush()
        pipeline.meter_provider.force_flush()
    exported = pipeline.sdk_counts("otel.sdk.exporter.span.exported")
    failed = sum(n for kind, n in exported.items() if kind is not None)
    assert failed == 2 * REQUESTS and exported.get(None, 0) == 0  # a root and an inference span each, all counted
    points = pipeline.sdk_counts("otel.sdk.exporter.metric_data_point.exported")
    assert points and None not in points  # the metric export failed too, and was counted
    pipeline.shutdown()


def test_with_the_collector_hanging_requests_complete_and_overflow_is_counted(gemini_server, receiver):
    expected = _baseline(gemini_server)
    receiver.hang()
    pipeline = _pipeline(receiver.endpoint, timeout_s=30, queue=8)
    got = _run(gemini_server, pipeline.providers)
    # the requests (and close(), whose flush is bounded) finished while the exporter was still stuck
    assert receiver.hanging >= 1
    assert got == expected
    processed = pipeline.sdk_counts("otel.sdk.processor.span.processed")
    assert processed.get("queue_full", 0) > 0  # spans that found the queue full were dropped and counted
    receiver.stop()  # releases the held export
    pipeline.shutdown()
