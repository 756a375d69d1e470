"""Resource hygiene: no thread, file descriptor or asyncio task leak; close() stops threads and flushes telemetry.

The figures for 1,000 sync and 1,000 async calls are measured by ``benchmarks/hygiene.py``; these tests
run fewer calls and allow only a small constant of growth after a warm-up (connection pools and the
loopback server's per-connection threads settle during the warm-up).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable

import psutil
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genroute import Router

from .conftest import gemini_config, without_earlier_garbage

CALLS = 150
WARMUP = 10
SLACK = {"threads": 2, "fds": 4, "tasks": 0}


def _counts(loop: asyncio.AbstractEventLoop | None = None) -> dict[str, int]:
    gc.collect()
    tasks = len(asyncio.all_tasks(loop)) if loop is not None else 0
    return {"threads": threading.active_count(), "fds": psutil.Process().num_fds(), "tasks": tasks}


def _settles(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether ``check`` holds within ``timeout_s`` (threads of closed connections take a moment to end)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _within(after: dict[str, int], before: dict[str, int]) -> bool:
    return all(after[k] - before[k] <= SLACK[k] for k in SLACK)


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "genroute-loop"]


def test_sync_calls_leak_no_threads_fds_or_tasks_and_close_stops_the_loop_thread(gemini_server):
    before_router = _counts()
    router = Router.from_config(gemini_config(gemini_server))
    for i in range(WARMUP):
        router.generate(f"warm {i}")
    loop = router._portal.loop
    warm = _counts(loop)
    for i in range(CALLS):
        if i % 10 == 9:
            assert list(router.stream(f"s {i}"))[-1].done
        else:
            router.generate(f"g {i}")
    after = _counts(loop)
    assert _within(after, warm), (warm, after)
    assert after["tasks"] == 0  # nothing left running on the router's loop between calls
    (thread,) = [t for t in _loop_threads() if t is router._portal._thread]
    router.close()
    assert not thread.is_alive()  # the private loop thread is stopped and joined
    assert loop.is_closed()
    assert _settles(lambda: _within(_counts(), before_router)), (before_router, _counts())


def test_async_calls_leak_no_threads_fds_or_tasks(gemini_server):
    before = _counts()
    loop_threads = set(_loop_threads())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Router.from_config(gemini_config(gemini_server)) as router:
            for i in range(WARMUP):
                await router.agenerate(f"warm {i}")
            warm = _counts(loop)
            for i in range(CALLS):
                if i % 10 == 9:
                    assert [c async for c in router.astream(f"s {i}")][-1].done
                else:
                    await router.agenerate(f"g {i}")
            after = _counts(loop)
            assert _within(after, warm), (warm, after)
            assert after["tasks"] == 1  # only this coroutine's own task
        # The async API leaves no sync portal's thread. (None new: an earlier test's loop thread may end meanwhile.)
        assert not set(_loop_threads()) - loop_threads

    asyncio.run(main())
    assert _settles(lambda: _within(_counts(), before)), (before, _counts())


def test_close_flushes_a_batch_span_processor_it_was_given(gemini_server):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    # A delay far past the test: only a flush can get these spans out.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
    with Router.from_config(gemini_config(gemini_server), tracer_provider=provider) as router:
        for i in range(5):
            router.generate(f"g {i}")
        list(router.stream("s"))
        assert exporter.get_finished_spans() == ()  # still queued in the processor
    names = [s.name for s in exporter.get_finished_spans()]
    assert names.count("genroute.generate") == 6 and len(names) == 12  # a root and an inference span each
    provider.shutdown()


async def test_aclose_flushes_too(gemini_server):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
    async with Router.from_config(gemini_config(gemini_server), tracer_provider=provider) as router:
        await router.agenerate("g")
    assert [s.name for s in exporter.get_finished_spans()].count("genroute.generate") == 1
    provider.shutdown()


def test_a_stream_abandoned_after_its_first_chunk_is_closed_at_once_and_cleanly(gemini_server, otel, caplog):
    without_earlier_garbage(caplog)  # what it logs is this test's only
    gemini_server.reply_text("one two three four five six", usage=(5, 6), chunks=3)
    with caplog.at_level(logging.WARNING), Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        stream = router.stream("count")
        assert next(stream).text  # the first chunk arrived...
        stream.close()  # ...and the caller walks away (what `break` and garbage collection do)
        # Every layer was closed in order, right away: both spans ended, nothing waits for the GC.
        assert [s.name for s in otel.spans()] == ["generate_content gemini-2.5-flash", "genroute.generate"]
        assert router.generate("still works").text
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []  # no "Failed to detach context", no "Task was destroyed but it is pending"
