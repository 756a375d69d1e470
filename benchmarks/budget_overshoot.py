"""One Redis budget across N spawned processes: how far spend passes it, and whether every sink agrees.

    python benchmarks/budget_overshoot.py [--processes 4 --requests 50 --concurrency 10 --holds 1.0,0.5]

Each run starts its own ``redis-server`` (on a free port, a throwaway data directory, every write in its append-only
file) and the loopback Gemini server, whose every answer bills 1,000 input and 200 output tokens of
gemini-2.5-flash ($0.0008). ``--processes`` workers (``multiprocessing``, spawn) each send ``--requests`` requests,
``--concurrency`` at a time, through routers built from one config: a global budget with room for 60 % of them,
a rate limit and breakers. Per hold factor (the budget's per-request estimate over the true cost: 1.0 an upper
bound, below 1 an under-estimate) it prints answered and refused requests, the spend over the budget, and the
spend as each sink saw it: the root spans, the model-call spans and the results (all processes), and Redis.

Then ``restart``: the same workers, one request at a time with a shadow each, while Redis restarts mid-run (1 s
down, its data kept), the first worker stopping (and closing) while Redis is down; it prints how much spend and how
many outcome records the shared store misses (the closing worker's outage writes: it could not replay them).
``--journal``: the workers share one ``state.journal`` file in the restart part, so the closing worker's outage
writes are kept there and sent by the others' replays or the reader's router (docs/shared-state.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any


import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

USAGE = (1000, 200)
COST = USAGE[0] * 0.30e-6 + USAGE[1] * 2.50e-6  # gemini-2.5-flash list prices
SHADOW = USAGE[0] * 0.10e-6 + USAGE[1] * 0.40e-6  # gemini-2.5-flash-lite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int, data: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (scripts/install.sh installs it)")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", data,
                                "--appendonly", "yes", "--appendfsync", "always"], stdout=subprocess.DEVNULL)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def config(base_url: str, url: str, prefix: str, budget: float, hold: float, *, shadow: bool) -> dict[str, Any]:
    inner: dict[str, Any] = {"kind": "cascade", "rungs": [{"backend": "chat"}], **({"shadow": ["lite"]} if shadow else {})}
    return {
        "engines": {"gemini": {"kind": "gemini", "base_url": base_url, "api_key": "bench", "retry": {"attempts": 1}}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"},
                     "lite": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite"}},
        "policy": {"kind": "budget", "inner": inner, "per": "global", "budget_usd": budget, "window": "day",
                   "costs": {"chat": hold, "lite": SHADOW}},
        "state": {"kind": "redis", "url": url, "prefix": prefix, "timeout_s": 5, "retry_s": 0.2},
        "rate_limits": [{"engine": "gemini", "model": "gemini-2.5-flash", "rpm": 100_000, "tpm": 100_000_000}],
        "breakers": {"failures": 5, "window_s": 60, "cooldown_s": 30},
        **({"outcomes": {"scorer": "normalized_exact"}} if shadow else {}),
    }


def worker(cfg: dict[str, Any], n: int, concurrency: int, pause_s: float, stop_after_s: float | None,
           ready: Any, out: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from genroute import Router

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def main() -> dict[str, Any]:
        async with await Router.acreate(cfg, tracer_provider=provider) as router:
            ready.put(os.getpid())
            gate, kinds, cost = asyncio.Semaphore(concurrency), Counter[str](), [0.0]
            stop_at = None if stop_after_s is None else time.monotonic() + stop_after_s

            async def one(i: int) -> None:
                async with gate:
                    if stop_at is not None and time.monotonic() > stop_at:
                        return  # this replica stops (and closes) early
                    try:
                        spent = (await router.agenerate(f"question {i}", timeout_s=20)).cost_usd
                        kinds["answered"] += 1
                    except Exception as exc:  # noqa: BLE001 - counted by type
                        kinds[type(exc).__name__] += 1
                        spent = getattr(exc, "cost_usd", 0.0) or 0.0
                    cost[0] += spent
                    await asyncio.sleep(pause_s)

            await asyncio.gather(*(one(i) for i in range(n)))
            await router.adrain()
        spans = exporter.get_finished_spans()
        return {"kinds": dict(kinds), "results": cost[0], "done_at": time.time(),
                "roots": sum(_cost(s) for s in spans if s.name == "genroute.generate"),
                "calls": sum(_cost(s) for s in spans
                             if s.name.startswith("generate_content") and not _in_shadow(s, spans))}

    out.put(asyncio.run(main()))


def _cost(span: Any) -> float:
    return float((span.attributes or {}).get("gen_ai.usage.cost.amount", 0.0))


def _in_shadow(span: Any, spans: Any) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    parent = span.parent
    while parent is not None:
        above = by_id.get(parent.span_id)
        if above is None:
            return False
        if above.name.startswith("genroute.shadow"):
            return True
        parent = above.parent
    return False


def run_workers(cfg: dict[str, Any], args: argparse.Namespace, *, concurrency: int, pause_s: float,
                during: Any = None, first_stops_after_s: float | None = None) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    ready, queue = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(cfg, args.requests, concurrency, pause_s,
                                              first_stops_after_s if i == 0 else None, ready, queue))
             for i in range(args.processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    if during is not None:
        during()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return results


def shared(cfg: dict[str, Any]) -> tuple[dict[str, float], int | None]:
    from genroute import Router

    async def main() -> tuple[dict[str, float], int | None]:
        async with await Router.acreate(cfg) as router:
            recorder = router._executor.outcomes
            records = None if recorder is None else len(await recorder.store.records())
            return await router.admission.budget().usage("*"), records
    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--holds", default="1.0,0.5", help="per-request estimates over the true cost")
    parser.add_argument("--journal", action="store_true", help="the restart part's workers share a state.journal")
    args = parser.parse_args()
    from genroute.testing import GeminiTestServer, Reply

    port, data = free_port(), tempfile.mkdtemp(prefix="budget-overshoot-")
    redis = start_redis(port, data)
    url = f"redis://127.0.0.1:{port}/0"
    total = args.processes * args.requests
    budget = round(0.6 * total) * COST
    try:
        with GeminiTestServer() as server:
            server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
            print(f"{args.processes} processes x {args.requests} requests ({args.concurrency} at a time each), one "
                  f"Redis budget of ${budget:.4f} (room for {round(0.6 * total)} of {total}); $/request {COST:.4f}")
            print(f"{'hold':>5} {'answered':>8} {'refused':>8} {'other':>6} {'spent/budget':>12} {'over $':>8} "
                  f"{'roots $':>9} {'calls $':>9} {'results $':>9} {'redis $':>9}")
            for factor in (float(h) for h in args.holds.split(",")):
                cfg = config(server.base_url, url, f"b{time.time_ns()}:", budget, COST * factor, shadow=False)
                results = run_workers(cfg, args, concurrency=args.concurrency, pause_s=0.0)
                kinds: Counter[str] = Counter()
                for r in results:
                    kinds.update(r["kinds"])
                usage, _ = shared(cfg)
                answered, refused = kinds.pop("answered", 0), kinds.pop("BudgetExceeded", 0)
                print(f"{factor:5.2f} {answered:8d} {refused:8d} {sum(kinds.values()):6d} "
                      f"{usage['spent'] / budget:12.4f} {max(0.0, usage['spent'] - budget):8.4f} "
                      f"{sum(r['roots'] for r in results):9.4f} {sum(r['calls'] for r in results):9.4f} "
                      f"{sum(r['results'] for r in results):9.4f} {usage['spent']:9.4f}"
                      + (f"  held ${usage['reserved']:.4f}" if usage["reserved"] else ""))

            cfg = config(server.base_url, url, f"r{time.time_ns()}:", 10.0, COST, shadow=True)
            if args.journal:
                cfg["state"]["journal"] = os.path.join(data, "journal.db")
            state: dict[str, Any] = {}

            def restart() -> None:
                nonlocal redis
                time.sleep(0.8)
                redis.terminate()
                redis.wait()
                time.sleep(1.0)
                redis = start_redis(port, data)
                state["back_at"] = time.time()

            # The first worker stops 1.3 s in, while Redis is down: it closes before it could replay.
            results = run_workers(cfg, args, concurrency=1, pause_s=0.02, during=restart, first_stops_after_s=1.3)
            usage, records = shared(cfg)
            answered = sum(r["kinds"].get("answered", 0) for r in results)
            want = answered * (COST + SHADOW)
            early = sum(r["done_at"] < state["back_at"] for r in results)
            print(f"restart{' (state.journal)' if args.journal else ''}: {answered} answered, each with a shadow; "
                  f"Redis down ~1 s mid-run; {early} of {args.processes} workers closed before it was back")
            print(f"  shared spend ${usage['spent']:.4f} of ${want:.4f} settled ({usage['spent'] / want:.1%}); "
                  f"outcome records {records} of {answered}")
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
