"""Shadow runs and their outcomes at low traffic: how many a router sends, records and drops, and what a write costs.

    python benchmarks/shadow_outcomes.py [--requests 40] [--clients 1,4,8] [--writes 100] [--no-outcomes]

A router with an ``outcomes`` section (the SQLite outcome store, a fresh file per run) serves ``--requests`` requests
per client over the loopback Gemini server (genroute.testing): a ``cascade`` answering with ``chat`` and shadowing
every request with ``lite``, the default shadow cap (``MAX_SHADOWS``, 16 in flight). Each client sends its requests
one after the other; ``--clients`` says how many at once. Printed per row: shadows sent (started or dropped),
dropped (the cap was full), recorded (records in the store after ``adrain``), the shadow span's median and p95
(its model call and, before pf-durable, its outcome write), the store write's median and p95 from the recorder handing
it over to its answer, and the served request's median.

Then ``--writes`` records written one after the other through ``OutcomeStore.upsert_sync`` (one write alone, as a
sequential writer sees it): median and p95, and the commits that took.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute import Router
from genroute.outcomes.records import OutcomeRecord
from genroute.outcomes.store import OutcomeStore
from genroute.testing import GeminiTestServer


def config(base_url: str, path: Path | None) -> dict[str, Any]:
    return {
        "engines": {"gemini": {"kind": "gemini", "base_url": base_url, "api_key": "bench", "retry": {"attempts": 1}}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"},
                     "lite": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite"}},
        "policy": {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["lite"]},
        **({} if path is None else {"outcomes": {"path": str(path), "scorer": "normalized_exact"}}),
    }


def ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.1f}"


async def run(base_url: str, path: Path | None, clients: int, requests: int) -> dict[str, Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    served: list[float] = []
    writes: list[float] = []
    async with await Router.acreate(config(base_url, path), tracer_provider=provider) as router:
        recorder = router._executor.outcomes
        store = None if recorder is None else recorder.store
        if store is not None:
            upsert = store.upsert

            async def timed(record: OutcomeRecord) -> OutcomeRecord:
                started = time.perf_counter()
                try:
                    return await upsert(record)
                finally:
                    writes.append(time.perf_counter() - started)

            store.upsert = timed  # type: ignore[method-assign]  # the benchmark's own timer around the store's write
            submit = getattr(store, "submit", None)
            if submit is not None:  # a shadow's write, handed over without waiting (pf-durable): timed to its answer

                def timed_submit(record: OutcomeRecord) -> Any:
                    started = time.perf_counter()
                    future = submit(record)
                    future.add_done_callback(lambda _: writes.append(time.perf_counter() - started))
                    return future

                store.submit = timed_submit  # type: ignore[method-assign]

        async def client(c: int) -> None:
            for i in range(requests):
                started = time.perf_counter()
                await router.agenerate(f"client {c} question {i}", timeout_s=20)
                served.append(time.perf_counter() - started)

        await asyncio.gather(*(client(c) for c in range(clients)))
        await router.adrain(timeout_s=60)
        dropped = router._executor.shadows_dropped
        recorded = None if store is None else len(await store.records())
        commits = getattr(store, "commits", None)
    spans = [s for s in exporter.get_finished_spans() if s.name == "genroute.shadow"]
    shadow_s = [(s.end_time - s.start_time) / 1e9 for s in spans if s.end_time and s.start_time]
    return {"sent": len(spans) + dropped, "dropped": dropped, "recorded": recorded, "shadow_s": shadow_s,
            "writes": writes, "served": served, "commits": commits}


def sequential_writes(path: Path, n: int) -> tuple[list[float], object]:
    store = OutcomeStore(path)
    times = []
    for i in range(n):
        record = OutcomeRecord.model_validate({"metadata": {"id": f"w{i}", "task": "t"},
                                               "outcomes": {"a": {"score": 1.0, "cost_usd": 0.001}}})
        started = time.perf_counter()
        store.upsert_sync(record)
        times.append(time.perf_counter() - started)
    return times, getattr(store, "commits", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="requests per client, one after the other")
    parser.add_argument("--clients", default="1,4,8", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--no-outcomes", action="store_true",
                        help="a router without an outcomes section (nothing written: the shadows' own cost)")
    parser.add_argument("--dir", default=None, help="where the store files go (default: a new temporary directory)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="shadow-outcomes-"))
    print(f"store files in {root}; {args.requests} requests per client, shadow cap 16")
    print(f"{'clients':>7} {'sent':>5} {'dropped':>7} {'recorded':>8} {'commits':>7} {'shadow ms p50/p95':>18} "
          f"{'write ms p50/p95':>17} {'served ms p50':>13}")
    with GeminiTestServer() as server:
        for clients in (int(c) for c in args.clients.split(",")):
            path = None if args.no_outcomes else root / f"clients{clients}-{time.time_ns()}.db"
            r = asyncio.run(run(server.base_url, path, clients, args.requests))
            print(f"{clients:7d} {r['sent']:5d} {r['dropped']:7d} {str(r['recorded']):>8} {str(r['commits']):>7} "
                  f"{ms(r['shadow_s'], 0.5) + '/' + ms(r['shadow_s'], 0.95):>18} "
                  f"{ms(r['writes'], 0.5) + '/' + ms(r['writes'], 0.95):>17} {ms(r['served'], 0.5):>13}")
    times, commits = sequential_writes(root / f"writes-{time.time_ns()}.db", args.writes)
    print(f"{args.writes} upsert_sync in a row: median {ms(times, 0.5)} ms, p95 {ms(times, 0.95)} ms, "
          f"commits {commits}")


if __name__ == "__main__":
    main()
