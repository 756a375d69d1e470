"""Resource hygiene: threads, open file descriptors, asyncio tasks and RSS across many sync and async calls.

    python benchmarks/hygiene.py [--calls 1000]

Against the loopback Gemini server (genroute.testing), one router answers ``--calls`` sync ``generate``
calls (every tenth a ``stream``), then a fresh router in ``asyncio.run`` answers ``--calls`` ``agenerate``
calls (every tenth an ``astream``). Each phase prints the figures after a warm-up, after the calls and after
``close()``; growth after the warm-up is what a leak would show. Then the same requests with telemetry
exported over OTLP/HTTP to a receiver that is up, down (closed port) or hanging: p50/p95 latency per case.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import statistics
import sys
import threading
import time
from typing import Any


import psutil  # noqa: E402

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute import Router  # noqa: E402
from genroute.testing import GeminiTestServer  # noqa: E402

WARMUP = 20


def config(server: GeminiTestServer) -> dict[str, Any]:
    """A one-backend router config on the loopback server."""
    return {
        "engines": {"gemini": {"kind": "gemini", "base_url": server.base_url, "api_key": "bench-key"}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
    }


def snapshot(loop: asyncio.AbstractEventLoop | None = None) -> dict[str, float]:
    """Threads, open fds, asyncio tasks (of ``loop``, if given) and RSS in MiB, after a GC."""
    gc.collect()
    proc = psutil.Process()
    tasks = len(asyncio.all_tasks(loop)) if loop is not None and not loop.is_closed() else 0
    return {"threads": threading.active_count(), "fds": proc.num_fds(), "tasks": tasks,
            "rss_mib": proc.memory_info().rss / 2**20}


def show(label: str, snap: dict[str, float], base: dict[str, float] | None = None) -> None:
    """Print one row of figures (with the growth over ``base``)."""
    delta = "" if base is None else "   growth: " + ", ".join(
        f"{k} {snap[k] - base[k]:+.0f}" if k != "rss_mib" else f"rss {snap[k] - base[k]:+.1f} MiB" for k in snap)
    print(f"  {label:<22} threads {snap['threads']:>3}  fds {snap['fds']:>4}  tasks {snap['tasks']:>3}  "
          f"rss {snap['rss_mib']:7.1f} MiB{delta}")


def sync_phase(server: GeminiTestServer, calls: int) -> dict[str, dict[str, float]]:
    """``calls`` sync calls on one router; snapshots before, after warm-up, after the calls and after close."""
    before = snapshot()
    router = Router.from_config(config(server))
    for i in range(WARMUP):
        router.generate(f"warm {i}")
    warm = snapshot(router._portal.loop)
    start = time.perf_counter()
    for i in range(calls):
        if i % 10 == 9:
            list(router.stream(f"s {i}"))
        else:
            router.generate(f"g {i}")
    elapsed = time.perf_counter() - start
    after = snapshot(router._portal.loop)
    router.close()
    time.sleep(0.5)  # the loopback server's per-connection threads end when the client hangs up
    closed = snapshot()
    print(f"sync: {calls} calls in {elapsed:.1f}s ({calls / elapsed:.0f}/s)")
    show("before router", before)
    show("after warm-up", warm)
    show(f"after {calls} calls", after, warm)
    show("after close()", closed, before)
    return {"before": before, "warm": warm, "after": after, "closed": closed}


def async_phase(server: GeminiTestServer, calls: int) -> dict[str, dict[str, float]]:
    """``calls`` async calls on one router inside ``asyncio.run``; the same snapshots."""
    snaps: dict[str, dict[str, float]] = {"before": snapshot()}

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with Router.from_config(config(server)) as router:
            for i in range(WARMUP):
                await router.agenerate(f"warm {i}")
            snaps["warm"] = snapshot(loop)
            start = time.perf_counter()
            for i in range(calls):
                if i % 10 == 9:
                    [c async for c in router.astream(f"s {i}")]
                else:
                    await router.agenerate(f"g {i}")
            elapsed = time.perf_counter() - start
            snaps["after"] = snapshot(loop)
        snaps["closed_in_loop"] = snapshot(loop)
        return elapsed

    elapsed = asyncio.run(main())
    time.sleep(0.5)
    snaps["closed"] = snapshot()
    print(f"async: {calls} calls in {elapsed:.1f}s ({calls / elapsed:.0f}/s)")
    show("before router", snaps["before"])
    show("after warm-up", snaps["warm"])
    show(f"after {calls} calls", snaps["after"], snaps["warm"])
    show("after aclose() (loop)", snaps["closed_in_loop"], snaps["warm"])
    show("after asyncio.run", snaps["closed"], snaps["before"])
    return snaps


def telemetry_phase(server: GeminiTestServer, calls: int) -> None:
    """p50/p95 of sync ``generate`` with OTLP export to a receiver that is up, down or hanging."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from genroute.testing.otlp import OtlpReceiver

    import logging

    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # the failed exports are expected here
    receiver = OtlpReceiver().start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    print(f"telemetry: {calls} sync calls per case, spans exported over OTLP/HTTP by a BatchSpanProcessor")
    for case, endpoint in (("no SDK", None), ("receiver up", receiver.endpoint), ("receiver down", closed),
                           ("receiver hanging", receiver.endpoint)):
        kwargs: dict[str, Any] = {}
        provider = None
        if endpoint is not None:
            if case == "receiver hanging":
                receiver.hang()
            provider = TracerProvider(shutdown_on_exit=False)
            provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint + "/v1/traces", timeout=10), schedule_delay_millis=50))
            kwargs["tracer_provider"] = provider
        router = Router.from_config(config(server), **kwargs)
        for i in range(WARMUP):
            router.generate(f"warm {i}")
        latencies = []
        for i in range(calls):
            start = time.perf_counter()
            router.generate(f"t {i}")
            latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        router.close()
        close_s = time.perf_counter() - start
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p95 = latencies[int(0.95 * (len(latencies) - 1))] * 1000
        print(f"  {case:<17} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  close() {close_s:5.2f} s  "
              f"spans received {len(receiver.spans()) if case == 'receiver up' else '-'}")
        if provider is not None and case != "receiver hanging":
            provider.shutdown()
    receiver.stop()


def main() -> None:
    """Run the phases and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--telemetry-calls", type=int, default=300)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    with GeminiTestServer() as server:
        sync_phase(server, args.calls)
        async_phase(server, args.calls)
        telemetry_phase(server, args.telemetry_calls)


if __name__ == "__main__":
    main()
