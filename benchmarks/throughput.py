"""Throughput at high concurrency: genroute's ``agenerate`` vs a raw google-genai ``client.aio`` call, one run.

    python benchmarks/throughput.py [--requests 2000] [--concurrency 1000] [--rounds 3]

Measured as a new user would: the loopback Gemini server (``genroute.testing``) runs in its own process, the
router is built from config with ``timeout_s: 60`` (the engine's default per-attempt timeout is 60 s too), and
the raw contender is what the SDK's quick start does, ``client.aio.models.generate_content(model=...,
contents="...")``. ``--concurrency`` tasks share ``--requests`` requests; rounds interleave the contenders so
machine noise hits each alike. Also shown, to see where the SDK's own time goes: the raw call with a
per-request ``http_options`` timeout and with a ``Content`` list, and genroute with an OTel SDK tracer provider
(spans discarded) instead of the API's no-op one, and ``Floor`` of ``overhead_instructions.py`` (the same request
as one straight-line coroutine doing the router's whole job for it, no tracer provider: how close genroute's
features alone come to raw). The raw call on an aiohttp session like the one genroute's
engine gives the SDK where the environment holds no proxy and no netrc (``genroute.engines.gemini_sessions``: no
per-request reads of them) is the like-for-like contender: its CPU ratio is shown too. Figures are requests per
second (median of rounds) and each contender's ratio to the raw call of the same round, the client's CPU per
request, and the garbage collector's share of it (collections of each generation and their CPU time, from
``gc.callbacks``): at this concurrency every object a request holds in flight is found by young collections and
promoted, so how much of the gap is GC shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL = "gemini-2.5-flash"
SAME_SESSION = "raw, session without env reads"
FLOOR = "floor of genroute's features"
KEY = "bench-key"


def _serve(urls: Any, stop: Any) -> None:
    from genroute.testing import GeminiTestServer

    with GeminiTestServer() as server:
        urls.put(server.base_url)
        stop.wait()


@contextlib.contextmanager
def loopback_server() -> Iterator[str]:
    """The loopback Gemini server in a process of its own (its CPU is not the client's); its URL in the block."""
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(urls, stop), daemon=True)
    server.start()
    try:
        yield urls.get(timeout=60)
    finally:
        stop.set()
        server.join(10)


class GcWatch:
    """Collections of each generation and the CPU time they took while it is entered (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.cpu_s = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.cpu_s += time.process_time() - self._started
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def _drive(call: Callable[[int], Awaitable[Any]], requests: int, concurrency: int
                 ) -> tuple[float, float, GcWatch]:
    """Requests per second for ``requests`` calls made by ``concurrency`` tasks (every call must succeed),
    this process's CPU time per request in µs (what the client side spends, less moved by other load), and the
    garbage collections that ran meanwhile."""
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            await call(i)

    with GcWatch() as watch:
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return requests / wall, cpu / requests * 1e6, watch


def _contenders(base_url: str) -> dict[str, Callable[[], Any]]:
    """Each contender: a factory of (async setup -> call, async teardown)."""
    from google import genai
    from google.genai import types
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from genroute import Router
    from genroute.engines.gemini_sessions import new_session

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    def raw(**kwargs: Any) -> Callable[[], Any]:
        def make() -> Any:
            # The session genroute's engine makes where the environment holds no proxy and no netrc.
            session = new_session() if kwargs.get("own_session") else None
            client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base_url,
                                                                                aiohttp_client=session))
            models = client.aio.models
            contents: Any = [types.Content(role="user", parts=[types.Part(text="hello")])] \
                if kwargs.get("content_list") else "hello"
            config = types.GenerateContentConfig(http_options=types.HttpOptions(timeout=59_999)) \
                if kwargs.get("per_request_timeout") else None

            async def call(i: int) -> Any:
                return await models.generate_content(model=MODEL, contents=contents, config=config)

            async def close() -> None:
                await client.aio.aclose()
                if session is not None:
                    await session.close()

            return call, close
        return make

    def routed(traced: bool) -> Callable[[], Any]:
        def make() -> Any:
            config = {"engines": {"g": {"kind": "gemini", "api_key": KEY, "base_url": base_url}},
                      "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}},
                      "timeout_s": 60}
            kwargs: dict[str, Any] = {}
            if traced:
                provider = TracerProvider()
                provider.add_span_processor(SimpleSpanProcessor(Discard()))
                kwargs["tracer_provider"] = provider
            router = Router.from_config(config, **kwargs)

            async def call(i: int) -> Any:
                return await router.agenerate("hello")

            return call, router.aclose
        return make

    def floor() -> Callable[[], Any]:
        def make() -> Any:
            from opentelemetry.trace import NoOpTracer

            from overhead_instructions import Floor

            session = new_session()
            client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base_url,
                                                                                aiohttp_client=session))
            request = Floor(client, NoOpTracer(), asyncio.get_running_loop())

            async def call(i: int) -> Any:
                return await request("hello")

            async def close() -> None:
                await client.aio.aclose()
                await session.close()

            return call, close
        return make

    return {
        "raw client.aio": raw(),
        "raw + per-request timeout": raw(per_request_timeout=True),
        "raw + Content list": raw(content_list=True),
        "raw, session without env reads": raw(own_session=True),
        "genroute agenerate": routed(False),
        "genroute agenerate, SDK tracer": routed(True),
        FLOOR: floor(),
    }


async def _round(contenders: dict[str, Callable[[], Any]], requests: int, concurrency: int
                 ) -> dict[str, tuple[float, float, GcWatch]]:
    out = {}
    for name, make in contenders.items():
        call, close = make()
        await _drive(call, 50, 50)  # warm-up: connections, imports, the router's first decision
        out[name] = await _drive(call, requests, concurrency)
        await close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with loopback_server() as url:
        contenders = _contenders(url)
        rounds = []
        for n in range(args.rounds):
            got = asyncio.run(_round(contenders, args.requests, args.concurrency))
            rounds.append(got)
            print(f"round {n + 1}: " + ", ".join(f"{k} {v:.0f} req/s {c:.0f} µs" for k, (v, c, _) in got.items()),
                  flush=True)
    print(f"\n{args.requests} requests, {args.concurrency} concurrent, {args.rounds} rounds: req/s (median), its "
          "ratio to raw client.aio in the same round (median), client CPU µs per request (median) and its ratio, "
          "and the CPU ratio to raw on the session genroute uses (no per-request environment reads); "
          "then the garbage collector in the same runs (medians): young/middle/full collections, the CPU µs a "
          "request spent in them, their share of its CPU, and the CPU ratio to raw with GC time taken out")
    for name in contenders:
        rate = statistics.median(r[name][0] for r in rounds)
        ratio = statistics.median(r[name][0] / r["raw client.aio"][0] for r in rounds)
        cpu = statistics.median(r[name][1] for r in rounds)
        cpu_ratio = statistics.median(r["raw client.aio"][1] / r[name][1] for r in rounds)
        same_session = statistics.median(r[SAME_SESSION][1] / r[name][1] for r in rounds)
        young, middle, full = (statistics.median(r[name][2].collections[g] for r in rounds) for g in range(3))
        gc_us = statistics.median(r[name][2].cpu_s / args.requests * 1e6 for r in rounds)
        gc_share = statistics.median(r[name][2].cpu_s / args.requests * 1e6 / r[name][1] for r in rounds)
        no_gc = statistics.median(_without_gc(r["raw client.aio"], args.requests)
                                  / _without_gc(r[name], args.requests) for r in rounds)
        print(f"  {name:34} {rate:8.0f} req/s  {ratio:6.1%}   {cpu:7.0f} µs CPU  {cpu_ratio:6.1%}  "
              f"{same_session:6.1%}   "
              f"GC {young:4.0f}/{middle:3.0f}/{full:2.0f}  {gc_us:5.0f} µs  {gc_share:6.1%}   "
              f"CPU ratio without GC {no_gc:6.1%}")


def _without_gc(run: tuple[float, float, GcWatch], requests: int) -> float:
    """A run's client CPU µs per request less what its garbage collections took."""
    return run[1] - run[2].cpu_s / requests * 1e6


if __name__ == "__main__":
    main()
