"""What a request's timeouts cost at high concurrency: client CPU, timers and GC per request, one config at a time.

    python benchmarks/timeouts.py [--requests 1000] [--concurrency 500] [--rounds 3]   # ~2 min

Why it exists (RESULTS, "Second step"): at 500 concurrent, 3,600 s timeouts (engine ``timeout_s`` and router
``timeout_s``) cost ~30 % more client CPU per routed request than 60 s. This varies one setting at a time
against the loopback server (its own process) and prints, per config (medians of rounds, interleaved): client CPU
µs per request, the ``asyncio`` timers a request schedules (by callback: the router's deadline and an engine
attempt's ``asyncio.timeout`` are ``Timeout._on_timeout``, aiohttp's per-request timeout ``TimeoutHandle``), the
event loop's timer heap (mean size and mean cancelled handles still in it, sampled every 20 ms), and young/full
collections with their CPU per request. Wall-clock CPU is noisy on the shared machines: compare configs within
a run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import KEY, MODEL, GcWatch, loopback_server  # noqa: E402 - the same server, model and GC counter

# name: (contender, engine or client timeout_s, router timeout_s, engine retry.deadline_s)
CONFIGS: dict[str, tuple[str, float | None, float | None, float | None]] = {
    "genroute, 60 / 60 (a new user's)": ("routed", 60, 60, None),
    "genroute, 3600 / 3600": ("routed", 3600, 3600, None),
    "genroute, 3600 / 3600, retry.deadline_s 3600": ("routed", 3600, 3600, 3600),
    "genroute, engine 120, router 3600": ("routed", 120, 3600, None),
    "genroute, engine 60, router 3600": ("routed", 60, 3600, None),
    "genroute, engine 3600, router 60": ("routed", 3600, 60, None),
    "genroute, engine 60, router 30 (the README's)": ("routed", 60, 30, None),
    "raw client.aio, client timeout 60": ("raw", 60, None, None),
    "raw client.aio, client timeout 3600": ("raw", 3600, None, None),
}


async def _make(name: str, base_url: str) -> tuple[Any, Any]:
    from google import genai
    from google.genai import types

    from genroute import Router

    kind, engine_s, router_s, retry_s = CONFIGS[name]
    if kind == "raw":
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(
            base_url=base_url, timeout=None if engine_s is None else int(engine_s * 1000)))
        return lambda: client.aio.models.generate_content(model=MODEL, contents="hello"), client.aio.aclose
    engine: dict[str, Any] = {"kind": "gemini", "api_key": KEY, "base_url": base_url, "timeout_s": engine_s}
    if retry_s is not None:
        engine["retry"] = {"deadline_s": retry_s}
    router = await Router.acreate({"engines": {"g": engine}, "timeout_s": router_s,
                                   "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}}})
    return lambda: router.agenerate("hello"), router.aclose


async def _run(name: str, base_url: str, requests: int, concurrency: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    call, close = await _make(name, base_url)

    async def drive(n: int, c: int) -> None:
        counter = iter(range(n))

        async def worker() -> None:
            for _ in counter:
                await call()

        await asyncio.gather(*(worker() for _ in range(c)))

    await drive(50, 50)  # warm-up: connections, imports, the router's first decision
    timers: collections.Counter[str] = collections.Counter()
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        timers[getattr(callback, "__qualname__", type(callback).__qualname__)] += 1
        return call_at(when, callback, *args, context=context)

    heap: list[tuple[int, int]] = []
    finished = asyncio.Event()

    async def sample() -> None:
        while not finished.is_set():
            heap.append((len(loop._scheduled), loop._timer_cancelled_count))  # type: ignore[attr-defined]
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    loop.call_at = counting_call_at  # type: ignore[method-assign]
    with GcWatch() as watch:
        cpu = time.process_time()
        await drive(requests, concurrency)
        cpu = time.process_time() - cpu
    del loop.call_at  # back to the class's method
    finished.set()
    await sampler
    await close()
    timers.pop("_set_result_unless_cancelled", None)  # the sampler's own sleeps
    return {"cpu": cpu / requests * 1e6, "timers": {k: v / requests for k, v in timers.items()},
            "heap": statistics.mean(n for n, _ in heap), "cancelled": statistics.mean(c for _, c in heap),
            "young": watch.collections[0], "full": watch.collections[2], "gc": watch.cpu_s / requests * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with loopback_server() as url:
        for _ in range(args.rounds):
            for name in CONFIGS:
                runs[name].append(asyncio.run(_run(name, url, args.requests, args.concurrency)))
    print(f"{args.requests} requests, {args.concurrency} concurrent, {args.rounds} rounds (medians); timeouts "
          "engine / router in s")
    print(f"{'':46} {'CPU µs/req':>10} {'timers a request':>34} {'heap':>6} {'cancelled':>9} "
          f"{'young':>6} {'full':>4} {'GC µs/req':>9}")
    for name, got in runs.items():
        def med(key: str) -> float:
            return statistics.median(run[key] for run in got)
        timers = ", ".join(f"{k.split('.')[0]} {v:.1f}" for k, v in sorted(got[0]["timers"].items()) if v >= 0.05)
        print(f"{name:46} {med('cpu'):10.0f} {timers:>34} {med('heap'):6.0f} {med('cancelled'):9.0f} "
              f"{med('young'):6.0f} {med('full'):4.0f} {med('gc'):9.0f}")


if __name__ == "__main__":
    main()
