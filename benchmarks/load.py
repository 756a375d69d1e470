"""Load with faults: every request through the router accounted for, memory sampled, figures printed.

    python benchmarks/load.py [--requests 2000] [--concurrency 200] [--fault-rate 0.05] [--tracemalloc]

A loopback Gemini server (genroute.testing) injects a random fault into ~``--fault-rate`` of the requests
it receives (429 with Retry-After, 500, 503, connection reset, malformed JSON, a slow answer past the
per-attempt timeout, a stream cut mid-way). The router runs a two-rung ``cascade``: ``flash``
(gemini-2.5-flash) then ``pro`` (gemini-2.5-pro); ``--attempts`` per engine call (default 1, so that a
fault on the first rung falls through to the second). ``--concurrency``
workers send ``--requests`` requests (every tenth an ``astream``) and classify each: answered by the first
rung, answered after falling through, a typed ``GenrouteError``, lost (anything else, or no answer) or
hung (past its deadline plus slack). Memory (RSS, and tracemalloc if asked) is sampled at the start, in
the middle and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import random
import statistics
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any


import psutil  # noqa: E402

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute import GenrouteError, Router  # noqa: E402
from genroute.testing import Fault, GeminiTestServer  # noqa: E402

DEADLINE_S = 60.0  # per request
HANG_CAP_S = DEADLINE_S + 60.0  # a request still running past this is counted as hung
ATTEMPT_TIMEOUT_S = 2.0


def faults(attempt_timeout_s: float) -> list[tuple[str, Fault]]:
    """The faults injected, by name; ``slow`` answers just after the per-attempt timeout."""
    return [
        ("429", Fault.status(429, retry_after=0.05)),
        ("500", Fault.status(500)),
        ("503", Fault.status(503)),
        ("reset", Fault.reset()),
        ("malformed_json", Fault.malformed_json()),
        ("slow", Fault.delay(attempt_timeout_s + 1.0)),
        ("cut_stream", Fault.cut_stream(after_chunks=1)),
    ]


class FaultyServer(GeminiTestServer):
    """The loopback server with a random fault on ``rate`` of the requests it receives."""

    def __init__(self, rate: float, seed: int = 0, attempt_timeout_s: float = ATTEMPT_TIMEOUT_S) -> None:
        super().__init__()
        self.rate = rate
        self.faults = faults(attempt_timeout_s)
        self._rng = random.Random(seed)
        self._pick = threading.Lock()
        self.injected: collections.Counter[str] = collections.Counter()

    def _handle(self, h: Any) -> None:  # one hook: queue a fault for this request, then serve it as usual
        with self._pick:
            chosen = self.faults[self._rng.randrange(len(self.faults))] if self._rng.random() < self.rate else None
            if chosen is not None:
                self.injected[chosen[0]] += 1
                self.fault(chosen[1])
        super()._handle(h)


def router_config(server: GeminiTestServer, attempts: int = 1,
                  attempt_timeout_s: float = ATTEMPT_TIMEOUT_S) -> dict[str, Any]:
    """Two gemini backends on different models, tried in order by a cascade policy."""
    engine = {"kind": "gemini", "base_url": server.base_url, "api_key": "load-key", "timeout_s": attempt_timeout_s,
              "retry": {"attempts": attempts, "initial_backoff_s": 0.02, "max_backoff_s": 0.1, "jitter_s": 0.02}}
    return {
        "engines": {"gemini": engine},
        "backends": {
            "flash": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"},
            "pro": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-pro"},
        },
        "policy": {"kind": "cascade", "rungs": [{"backend": "flash"}, {"backend": "pro"}]},
    }


@dataclass
class Tally:
    """Every request's outcome, latency and the memory samples."""

    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    memory: list[tuple[str, float, float | None]] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def accounted(self) -> int:
        return sum(self.outcomes.values())

    def rss_growth(self) -> tuple[float, float]:
        """RSS growth (MiB) over the first half of the run (start -> middle) and the second (middle -> end).

        The first half includes one-time costs (lazy imports, connection pools, caches filling); a leak
        shows as growth in the second half too, so memory is stable when middle -> end is near zero.
        """
        rss = {label: value for label, value, _ in self.memory}
        return rss["middle"] - rss["start"], rss["end"] - rss["middle"]


def sample(label: str, tally: Tally) -> None:
    """Record RSS (MiB) and, when tracing, Python heap in use (MiB)."""
    gc.collect()
    rss = psutil.Process().memory_info().rss / 2**20
    traced = tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else None
    tally.memory.append((label, rss, traced))


async def one(router: Router, i: int, tally: Tally) -> None:
    """Send request ``i`` and classify how it ended."""
    start = time.perf_counter()

    async def call() -> Any:
        if i % 10 == 9:
            chunks = [c async for c in router.astream(f"load {i}", timeout_s=DEADLINE_S)]
            return chunks[-1].result if chunks and chunks[-1].done else None
        return await router.agenerate(f"load {i}", timeout_s=DEADLINE_S)

    try:
        result = await asyncio.wait_for(call(), HANG_CAP_S)
    except TimeoutError:
        tally.outcomes["hung"] += 1
        return
    except GenrouteError as exc:
        tally.outcomes["typed error"] += 1
        tally.errors[type(exc).__name__] += 1
        tally.samples.setdefault(type(exc).__name__, f"{exc} <- {exc.__cause__}"[:200])
        return
    except Exception as exc:  # anything untyped is a lost request: the thing this benchmark hunts for
        tally.outcomes["lost"] += 1
        tally.errors[f"UNTYPED {type(exc).__name__}: {exc}"[:120]] += 1
        return
    finally:
        tally.latencies.append(time.perf_counter() - start)
    if result is None:
        tally.outcomes["lost"] += 1
    elif len(result.decision.rungs_tried) > 1:
        tally.outcomes["fell through"] += 1
    else:
        tally.outcomes["ok"] += 1


async def run(server: GeminiTestServer, requests: int, concurrency: int, attempts: int = 1,
              attempt_timeout_s: float = ATTEMPT_TIMEOUT_S) -> Tally:
    """``requests`` requests from ``concurrency`` workers through one router."""
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(router: Router) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(router, i, tally)
            if tally.accounted == requests // 2:
                sample("middle", tally)

    async with Router.from_config(router_config(server, attempts, attempt_timeout_s)) as router:
        await router.agenerate("warm-up")
        sample("start", tally)
        start = time.perf_counter()
        await asyncio.gather(*(worker(router) for _ in range(concurrency)))
        tally.elapsed_s = time.perf_counter() - start
    sample("end", tally)
    return tally


def report(tally: Tally, server: FaultyServer, requests: int, concurrency: int) -> None:
    """Print throughput, latency percentiles, the outcomes table and memory samples."""
    lat = sorted(tally.latencies)
    p95 = lat[int(0.95 * (len(lat) - 1))] if lat else float("nan")
    injected = sum(server.injected.values())
    wire = len(server.requests)
    print(f"{requests} requests, concurrency {concurrency}, cascade flash -> pro, {tally.elapsed_s:.1f}s, "
          f"{requests / tally.elapsed_s:.0f} req/s; latency p50 {statistics.median(lat) * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms")
    print(f"wire: {wire} HTTP requests, {injected} faults injected ({injected / max(wire, 1):.1%}): "
          + ", ".join(f"{k} {v}" for k, v in sorted(server.injected.items())))
    print("| requests | ok | fell through | typed errors | lost | hung |")
    print("|---:|---:|---:|---:|---:|---:|")
    o = tally.outcomes
    print(f"| {requests} | {o['ok']} | {o['fell through']} | {o['typed error']} | {o['lost']} | {o['hung']} |")
    if tally.errors:
        print("errors: " + ", ".join(f"{k} {v}" for k, v in tally.errors.most_common()))
        for kind, text in tally.samples.items():
            print(f"  e.g. {kind}: {text}")
    for label, rss, traced in tally.memory:
        heap = f", traced heap {traced:.1f} MiB" if traced is not None else ""
        print(f"memory {label:<6} RSS {rss:.1f} MiB{heap}")
    first, second = tally.rss_growth()
    print(f"memory growth: start -> middle {first:+.1f} MiB, middle -> end {second:+.1f} MiB (plateau when near 0)")
    print(f"accounted for: {tally.accounted}/{requests}")


def main(argv: list[str] | None = None) -> Tally:
    """Run the load and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attempts", type=int, default=1,
                        help="attempts per engine call (1: every fault on the first rung falls through)")
    parser.add_argument("--attempt-timeout", type=float, default=ATTEMPT_TIMEOUT_S,
                        help="per-attempt HTTP timeout in seconds (raise it with --tracemalloc, which slows Python)")
    parser.add_argument("--tracemalloc", action="store_true", help="also sample the Python heap (slower)")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    if args.tracemalloc:
        tracemalloc.start()
    with FaultyServer(args.fault_rate, seed=args.seed, attempt_timeout_s=args.attempt_timeout) as server:
        tally = asyncio.run(run(server, args.requests, args.concurrency, args.attempts, args.attempt_timeout))
        report(tally, server, args.requests, args.concurrency)
    return tally


if __name__ == "__main__":
    main()
