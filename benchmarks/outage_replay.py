"""Outcome writes made during a Redis outage: what holding them costs, and how long their replay takes.

    python benchmarks/outage_replay.py [--n 1000 10000 100000] [--online 10000]

For each ``--n``: a ``RedisStateStore`` (``on_error: open``) points at a port where no Redis listens yet and
appends ``n`` outcome lines (shaped like the recorder's shadow records, ``benchmarks/outcome_list.py``) to the
outcome list with the default cap: each is answered from the fallback memory and kept for replay. Then a
``redis-server`` starts on that port and the store's next call (a ``usage`` read) replays them all before it
answers: the script prints µs per write held, the replay's wall time, writes/s, the server's own µs per script run
(``INFO commandstats``) and checks the list holds each write once. For comparison, in the same run, ``--online``
appends straight to a running Redis, one at a time (the recorder's pattern: one write per shadow or feedback).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from outcome_list import shadow_record  # noqa: E402
from shared_state import RedisProcess, free_port  # noqa: E402

from genroute.outcomes.shared import DEFAULT_MAX_ITEMS  # noqa: E402
from genroute.state import RedisStateConfig  # noqa: E402
from genroute.state.redis_store import REPLAY_BATCH, RedisStateStore  # noqa: E402


def lines(n: int) -> list[bytes]:
    rng = random.Random(n)
    return [shadow_record(i, rng).model_dump_json(exclude_unset=True).encode() for i in range(n)]


def store(port: int) -> RedisStateStore:
    return RedisStateStore(RedisStateConfig(kind="redis", url=f"redis://127.0.0.1:{port}/0", prefix="bench:",
                                            on_error="open", retry_s=0.05, timeout_s=30, connect_timeout_s=1))


async def replay(n: int) -> dict[str, Any]:
    port = free_port()
    state = store(port)
    written = lines(n)
    start = time.perf_counter()
    for line in written:
        await state.append("outcomes", line, max_items=DEFAULT_MAX_ITEMS)
    held_s = time.perf_counter() - start
    assert state.replays("outcomes").waiting == n
    redis = RedisProcess(port)
    try:
        await asyncio.sleep(0.1)  # past retry_s: the next call tries Redis again
        client = state._client().client
        await client.config_resetstat()  # its first command: the replay has not started
        start = time.perf_counter()
        await state.usage("nobody")  # replays every waiting write, then answers
        replay_s = time.perf_counter() - start
        stats = await client.info("commandstats")
        found = (await state.items("outcomes")).items
        assert found == written[-DEFAULT_MAX_ITEMS:], "each write once, in order"
        assert state.replays("outcomes").replayed == n
        await state.aclose()
    finally:
        redis.stop()
    return {"n": n, "held_us": held_s / n * 1e6, "replay_s": replay_s, "per_s": n / replay_s,
            "server_us": stats["cmdstat_evalsha"]["usec_per_call"], "calls": stats["cmdstat_evalsha"]["calls"]}


async def online(n: int) -> float:
    redis = RedisProcess()
    state = store(redis.port)
    try:
        written = lines(n)
        start = time.perf_counter()
        for line in written:
            await state.append("outcomes", line, max_items=DEFAULT_MAX_ITEMS)
        elapsed = time.perf_counter() - start
        await state.aclose()
    finally:
        redis.stop()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--online", type=int, default=10_000)
    args = parser.parse_args()
    rows = [asyncio.run(replay(n)) for n in args.n]
    rate = asyncio.run(online(args.online))
    print(f"replay batch: {REPLAY_BATCH} writes a script run; online appends, one at a time: {rate:,.0f}/s "
          f"({args.online:,} writes)")
    print("| writes during the outage | µs per write held | replay wall time | replayed/s | script runs | "
          "server µs/run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['held_us']:.0f} | {r['replay_s']:.2f} s | {r['per_s']:,.0f} | {r['calls']:,} | "
              f"{r['server_us']:,.0f} |")


if __name__ == "__main__":
    main()
