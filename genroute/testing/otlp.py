"""A loopback OTLP/HTTP receiver that decodes the protobuf export requests, for tests and benchmarks.

Point the standard exporters (the ``otlp`` extra: ``opentelemetry-exporter-otlp-proto-http``) at it and
read back what arrived, decoded::

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from genroute.testing.otlp import OtlpReceiver

    with OtlpReceiver() as receiver:
        exporter = OTLPSpanExporter(endpoint=receiver.traces_endpoint)
        ...                                        # run requests, flush the provider
        span = receiver.spans("genroute.generate")[0]
        assert span.attributes["genroute.policy"] == "static"

It can also misbehave, to show that telemetry never hurts requests: ``receiver.hang()`` accepts export
requests and never answers them (until ``stop``); ``receiver.fail(503)`` answers with an error status;
``receiver.ok()`` goes back to normal. A receiver that was never started (or was stopped) is a closed port.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived over OTLP, with attributes decoded to Python values."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    status_code: int
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class ReceivedPoint:
    """One metric data point: attributes, and ``value`` (sums, gauges) or ``count``/``sum`` (histograms)."""

    attributes: dict[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    bounds: tuple[float, ...] = ()


@dataclass
class _State:
    mode: str = "ok"  # "ok" | "hang" | "fail"
    status: int = 200
    traces: list[Any] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    hanging: int = 0


def value_of(any_value: Any) -> Any:
    """A protobuf ``AnyValue`` as a Python value (lists for arrays, dicts for key-value lists)."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def attributes_of(key_values: Any) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict."""
    return {kv.key: value_of(kv.value) for kv in key_values}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.server.owner._handle(self)


class _Server(ThreadingHTTPServer):
    owner: OtlpReceiver  # set right after construction
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


class OtlpReceiver:
    """An OTLP/HTTP (protobuf) collector on ``127.0.0.1`` that keeps what it receives; see the module doc."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from genroute.testing.checks import check_address

        check_address(host, port)
        self._lock = threading.Lock()
        self._state = _State()
        self._release = threading.Event()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (the base for ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
        host, port = self._httpd.socket.getsockname()[:2]  # what server_address holds, typed as a str
        return f"http://{host}:{port}"

    @property
    def traces_endpoint(self) -> str:
        """Pass as ``OTLPSpanExporter(endpoint=...)``."""
        return self.endpoint + "/v1/traces"

    @property
    def metrics_endpoint(self) -> str:
        """Pass as ``OTLPMetricExporter(endpoint=...)``."""
        return self.endpoint + "/v1/metrics"

    def start(self) -> OtlpReceiver:
        """Serve in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"otlp-receiver:{self._httpd.server_address[1]}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Release hanging requests, stop serving and close the port."""
        self._release.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour -------------------------------------------------------------------------------

    def ok(self) -> None:
        """Answer every export with 200 and keep it."""
        with self._lock:
            self._state.mode, self._state.status = "ok", 200

    def hang(self) -> None:
        """Accept export requests and never answer them (until ``stop``)."""
        with self._lock:
            self._state.mode = "hang"

    def fail(self, status: int = 503) -> None:
        """Answer every export with ``status`` (and keep nothing)."""
        with self._lock:
            self._state.mode, self._state.status = "fail", status

    @property
    def hanging(self) -> int:
        """How many export requests are being held unanswered right now."""
        with self._lock:
            return self._state.hanging

    # -- what arrived ----------------------------------------------------------------------------

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        """Every span received (optionally only ``name`` or ``name <suffix>``), in arrival order."""
        found = []
        with self._lock:
            requests = list(self._state.traces)
        for request in requests:
            for rs in request.resource_spans:
                resource = attributes_of(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        if name is not None and s.name != name and not s.name.startswith(name + " "):
                            continue
                        found.append(ReceivedSpan(
                            name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(), kind=s.kind,
                            attributes=attributes_of(s.attributes),
                            events=tuple((e.name, attributes_of(e.attributes)) for e in s.events),
                            status_code=s.status.code, resource=resource, scope=ss.scope.name,
                        ))
        return found

    def metrics(self) -> dict[str, list[ReceivedPoint]]:
        """Data points received per metric name (every export's points, in arrival order)."""
        found: dict[str, list[ReceivedPoint]] = {}
        with self._lock:
            requests = list(self._state.metrics)
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        found.setdefault(metric.name, []).extend(_points(metric))
        return found

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout_s: float = 10.0) -> bool:
        """Poll ``predicate(self)`` until it holds or ``timeout_s`` passes; whether it held."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)

    def clear(self) -> None:
        """Forget everything received."""
        with self._lock:
            self._state.traces.clear()
            self._state.metrics.clear()
            self._state.logs.clear()

    # -- serving ---------------------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        from google.protobuf.message import Message
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self._lock:
            mode, status = self._state.mode, self._state.status
            if mode == "hang":
                self._state.hanging += 1
        if mode == "hang":
            self._release.wait()
            with self._lock:
                self._state.hanging -= 1
            h.close_connection = True
            return
        if mode == "fail":
            self._reply(h, status, b"")
            return
        if h.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        kinds: dict[str, tuple[type[Message], type[Message], list[Any]]] = {
            "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest,
                           trace_service_pb2.ExportTraceServiceResponse, self._state.traces),
            "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                            metrics_service_pb2.ExportMetricsServiceResponse, self._state.metrics),
            "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest,
                         logs_service_pb2.ExportLogsServiceResponse, self._state.logs),
        }
        kind = kinds.get(h.path.split("?", 1)[0])
        if kind is None:
            self._reply(h, 404, b"")
            return
        request_cls, response_cls, store = kind
        message = request_cls()
        try:
            message.ParseFromString(raw)
        except Exception:  # a body that is not the protobuf it claims to be: a real collector answers 400
            self._reply(h, 400, b"")
            return
        with self._lock:
            store.append(message)
        self._reply(h, 200, response_cls().SerializeToString())

    @staticmethod
    def _reply(h: _Handler, status: int, body: bytes) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/x-protobuf")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:  # the exporter gave up (its timeout) before we answered
            h.close_connection = True


def _points(metric: Any) -> list[ReceivedPoint]:
    kind = metric.WhichOneof("data")
    if kind is None:
        return []
    data = getattr(metric, kind)
    points = []
    for p in data.data_points:
        attrs = attributes_of(p.attributes)
        if kind in ("sum", "gauge"):
            value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
            points.append(ReceivedPoint(attributes=attrs, value=value))
        elif kind == "histogram":
            points.append(ReceivedPoint(attributes=attrs, count=p.count, sum=p.sum, bounds=tuple(p.explicit_bounds)))
        else:  # exponential histograms and summaries: count and sum are enough here
            points.append(ReceivedPoint(attributes=attrs, count=p.count, sum=p.sum))
    return points
