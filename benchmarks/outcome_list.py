"""The shared outcome list in Redis: its memory and a new process's catch-up, unbounded (as before) and capped.

    python benchmarks/outcome_list.py [--n 100000] [--cap 10000] [--concurrency 64]

Starts its own ``redis-server`` (as ``shared_state.py`` does) and writes ``--n`` outcome records shaped like the
recorder's shadow records (ids, task, features, a served and a shadow side with scores, costs, tokens) four ways:
as the code before the cap wrote them (full JSON, RPUSH, no bound), through ``SharedOutcomeStore`` with no cap,
with ``--cap``, and ``2 x --n`` with the default cap. For each it prints the list's ``MEMORY USAGE`` (SAMPLES 0:
every node counted), its length, appends per second (and the server's own µs per append call from
``INFO commandstats``), how long a new process takes to read and merge it (best of 3) and the memory its merged
view holds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_state import RedisProcess  # noqa: E402

from genroute.outcomes import OutcomeRecord, Side  # noqa: E402
from genroute.outcomes.shared import DEFAULT_MAX_ITEMS, SharedOutcomeStore  # noqa: E402
from genroute.state import RedisStateConfig  # noqa: E402
from genroute.state.redis_store import RedisStateStore  # noqa: E402


def shadow_record(i: int, rng: random.Random) -> OutcomeRecord:
    """A record as ``OutcomeRecorder.shadow`` writes it (no captured text)."""
    trace = os.urandom(16).hex()
    tokens_in = rng.randint(20, 400)
    served = Side(role="served", cost_usd=tokens_in * 0.3e-6 + 5 * 2.5e-6, latency_s=rng.uniform(0.2, 2.0),
                  input_tokens=tokens_in, output_tokens=5, score=float(rng.random() < 0.8))
    shadow = Side(role="shadow", cost_usd=tokens_in * 1.25e-6 + 5 * 10e-6, latency_s=rng.uniform(0.5, 4.0),
                  input_tokens=tokens_in, output_tokens=5, agreement=float(rng.random() < 0.9))
    metadata = {"id": trace, "source": "production", "scorer": "label_accuracy", "at": time.time(), "trace_id": trace,
                "task": "sentiment", "features": {"input_chars": tokens_in * 4, "input_tokens": tokens_in},
                "served": "chat"}
    return OutcomeRecord(metadata=metadata, outcomes={"chat": served, "pro": shadow})


async def fill(store: RedisStateStore, lines: list[bytes], *, cap: int | None, legacy: bool,
               concurrency: int) -> float:
    """Write ``lines``, ``concurrency`` appends in flight; return appends per second."""
    client = store._client().client
    key = f"{store.prefix}l:outcomes"

    async def one(line: bytes) -> None:
        if legacy:  # what the store did before the cap: a bare RPUSH of the full JSON
            await client.rpush(key, line)
        else:
            await store.append("outcomes", line, max_items=cap)

    start = time.perf_counter()
    for i in range(0, len(lines), concurrency):
        await asyncio.gather(*(one(line) for line in lines[i:i + concurrency]))
    return len(lines) / (time.perf_counter() - start)


async def measure(url: str, name: str, records: list[OutcomeRecord], *, cap: int | None, legacy: bool,
                  concurrency: int) -> dict[str, Any]:
    prefix = f"{name}:"
    store = RedisStateStore(RedisStateConfig(kind="redis", url=url, prefix=prefix, timeout_s=30))
    client = store._client().client
    lines = [r.model_dump_json().encode() if legacy else r.model_dump_json(exclude_unset=True).encode()
             for r in records]
    await client.config_resetstat()
    rate = await fill(store, lines, cap=cap, legacy=legacy, concurrency=concurrency)
    stats = await client.info("commandstats")  # the server's own time per append: less noisy than the client's
    server_us = stats["cmdstat_rpush" if legacy else "cmdstat_evalsha"]["usec_per_call"]
    key = f"{prefix}l:outcomes"
    memory = int(await client.memory_usage(key, samples=0))
    length = int(await client.llen(key))
    catch_up = float("inf")
    for _ in range(3):  # best of 3 new readers
        start = time.perf_counter()
        reader = SharedOutcomeStore(store, max_items=cap)
        merged = len(await reader.records())
        catch_up = min(catch_up, time.perf_counter() - start)
    view = view_bytes(reader)
    await client.delete(key, f"{prefix}lm:outcomes")
    await store.aclose()
    return {"case": name, "writes": len(records), "cap": cap, "length": length, "memory_mb": memory / 1e6,
            "bytes_per_item": memory / max(length, 1), "line_bytes": sum(map(len, lines)) / len(lines),
            "appends_per_s": rate, "server_us": server_us, "catch_up_s": catch_up, "records_read": merged,
            "view_mb": view / 1e6}


def view_bytes(reader: SharedOutcomeStore) -> int:
    """Bytes a reader's merged view holds: the dict, its ids and its JSON lines."""
    return sys.getsizeof(reader._merged) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in reader._merged.items())


def parsed_bytes_per_record(records: list[OutcomeRecord]) -> float:
    """What one record takes held as parsed models instead (as the view kept them before), by tracemalloc."""
    import tracemalloc

    lines = [r.model_dump_json(exclude_unset=True).encode() for r in records]
    tracemalloc.start()
    held = [OutcomeRecord.model_validate_json(line) for line in lines]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size / len(held)


async def run(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    rng = random.Random(0)
    records = [shadow_record(i, rng) for i in range(2 * args.n)]
    gc.freeze()  # the benchmark's own 2n records are not rescanned by every collection the readers trigger
    cases = [("before: unbounded, full JSON (old code)", records[:args.n], None, True),
             ("after: shared_max_items null", records[:args.n], None, False),
             (f"after: shared_max_items {args.cap}", records[:args.n], args.cap, False),
             (f"after: default cap {DEFAULT_MAX_ITEMS}", records, DEFAULT_MAX_ITEMS, False)]
    rows = [await measure(url, f"c{i}", chosen, cap=cap, legacy=legacy, concurrency=args.concurrency)
            | {"case": name} for i, (name, chosen, cap, legacy) in enumerate(cases)]
    print(f"one record held parsed (OutcomeRecord): {parsed_bytes_per_record(records[:10_000]):,.0f} bytes; "
          f"as the view holds it (id + JSON line): {rows[1]['view_mb'] * 1e6 / rows[1]['records_read']:,.0f} bytes")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--cap", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    redis = RedisProcess()
    try:
        rows = asyncio.run(run(args, redis.url))
    finally:
        redis.stop()
    print("| case | writes | list length | MEMORY USAGE | bytes/item | mean line | appends/s | server µs/append | "
          "new reader: read + merge | its view |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['writes']:,} | {r['length']:,} | {r['memory_mb']:.1f} MB | "
              f"{r['bytes_per_item']:.0f} | {r['line_bytes']:.0f} B | {r['appends_per_s']:,.0f} | "
              f"{r['server_us']:.1f} | {r['catch_up_s']:.2f} s ({r['records_read']:,} records) | "
              f"{r['view_mb']:.1f} MB |")


if __name__ == "__main__":
    main()
