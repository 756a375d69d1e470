"""Shared fixtures: the loopback Gemini server, in-memory OTel providers, router configs."""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genroute.router import build as router_build
from genroute.testing import GeminiTestServer

# The CI skip guard's hooks (see tests/skip_guard.py).
from .skip_guard import (  # noqa: F401
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

TEST_KEY = "AIzaSy-test-key-0123456789-secret"

# Tests build routers with `Router.from_config` inside their event loops for brevity: its once-per-process warning
# (use acreate) would land in whichever test did so first. tests/test_router_construction.py clears it to check it.
router_build._warned_in_loop.set()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No real keys or endpoints leak in; caches go to a per-session temp dir unless one is set."""
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GOOGLE_VERTEX_BASE_URL",
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "GENROUTE_OUTCOMES_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "true")


@pytest.fixture
def gemini_server() -> Iterator[GeminiTestServer]:
    """A fresh loopback Gemini-protocol server."""
    with GeminiTestServer() as server:
        yield server


class Otel:
    """In-memory tracer and meter providers for one test."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def providers(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self, name: str | None = None) -> list[Any]:
        spans = self.exporter.get_finished_spans()
        return [s for s in spans if name is None or s.name == name or s.name.startswith(name + " ")]

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        found: dict[str, Any] = {}
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    found[metric.name] = metric
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    """In-memory OTel SDK providers (the real SDK, nothing exported off the machine)."""
    yield Otel()


def gemini_config(server: GeminiTestServer, **backend: Any) -> dict[str, Any]:
    """A one-backend router config pointed at ``server``."""
    chat = {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash", **backend}
    return {
        "engines": {"gemini": {"kind": "gemini", "base_url": server.base_url, "api_key": TEST_KEY,
                               "retry": {"attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.05,
                                         "jitter_s": 0.0}}},
        "backends": {"chat": chat},
        "policy": {"kind": "static", "backend": "chat"},
    }


def closes_everything(script: str) -> list[str]:
    """``script``'s output lines, run in a fresh interpreter with ResourceWarnings shown: it must exit 0 and report
    nothing unclosed (an HTTP or Redis connection left to the garbage collector)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c", script], capture_output=True,
                          text=True, timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert "unclosed" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def budget_usage(router: Any, key: str = "*", field: str = "policy") -> dict[str, float]:
    """Spent and reserved USD of a router's budget ``key`` now (from sync code, or async code on a thread)."""
    import asyncio
    import threading

    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(asyncio.run(router.admission.budget(field).usage(key))))
    thread.start()
    thread.join()
    return out


def race(*work: Callable[[], None]) -> list[BaseException]:
    """Run each of ``work`` in a thread of its own, switching threads as often as the interpreter can (races show);
    what they raised."""
    errors: list[BaseException] = []

    def run(one: Callable[[], None]) -> None:
        try:
            one()
        except BaseException as exc:  # a thread's error is not the test's otherwise
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(one,)) for one in work]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    return errors


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``fn`` in a daemon thread; the thread, and what ``fn`` returned (``result``) or raised (``error``) and
    when it ``ended`` (``time.monotonic()``), once it has."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # judged by the test
            out["error"] = exc
        out["ended"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def without_earlier_garbage(caplog: pytest.LogCaptureFixture) -> None:
    """Collect what earlier tests left to the garbage collector, then forget what that logged: a pending asyncio task
    of theirs collected during this test logs "Task was destroyed but it is pending!" (ERROR), not this test's own."""
    gc.collect()
    caplog.clear()
