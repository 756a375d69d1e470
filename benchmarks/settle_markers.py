"""Settle markers in Redis: keys and memory for ``--n`` settles, one key per settle (before) and one hash per second.

    python benchmarks/settle_markers.py [--n 100000] [--rate 100]

Starts its own ``redis-server`` (as ``shared_state.py`` does) and makes ``--n`` settles against one account as at
``--rate`` settles a second (``--n / --rate`` seconds of traffic, all within the markers' hour): once as the code
before the bounded markers did (a ``SET <prefix>s:<id> 1 NX PX 3600000`` key per settle, beside the account write)
and once through the store's own script, whose settle ids carry the second they were made in (here the second the
rate puts them in, not the wall clock, so the run needs not last as long as the traffic it stands for), with markers
grouped by ``SETTLE_BUCKET_S`` and, for comparison, by 10 s. For each it prints ``DBSIZE`` and ``INFO memory``'s
``used_memory`` above the empty server's, side by side, and checks that every settle's replay counts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_state import RedisProcess  # noqa: E402

from genroute.state.ops import Settle  # noqa: E402
from genroute.state.redis_script import SCRIPT, SETTLE_BUCKET_S, SETTLED_MARKER_S, encode  # noqa: E402

PREFIX = "bench:"
ACCOUNT = "budget:*:day"
BATCH = 100


async def _used(client: Any) -> tuple[int, int]:
    return int(await client.dbsize()), int((await client.info("memory"))["used_memory"])


async def one_key_per_settle(client: Any, n: int) -> None:
    """The markers as the script before this change set them: a string key per settle, kept an hour."""
    for start in range(0, n, 1000):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(start, min(n, start + 1000)):
                pipe.hincrby(f"{PREFIX}a:{ACCOUNT}", "spent", 1)
                pipe.set(f"{PREFIX}s:{os.urandom(8).hex()}", "1", nx=True, px=int(SETTLED_MARKER_S * 1000))
            await pipe.execute()


async def bucketed(client: Any, n: int, rate: int, bucket_s: int) -> int:
    """Settles through the store's script, their ids made ``rate`` a second; then each replayed: how many counted."""
    script = client.register_script(SCRIPT)
    ids = [f"{(1_800_000_000 + i // rate) // bucket_s}.{os.urandom(8).hex()}" for i in range(n)]
    op = Settle(ACCOUNT, None, 1, None, 86_400.0)
    for replay in (False, True):
        for start in range(0, n, BATCH):
            batch = ids[start:start + BATCH]
            keys, args = encode("apply", [op] * len(batch), PREFIX, batch)
            await script(keys=keys, args=args)
        if not replay:
            spent = int(await client.hget(f"{PREFIX}a:{ACCOUNT}", "spent"))
    assert int(await client.hget(f"{PREFIX}a:{ACCOUNT}", "spent")) == spent == n, "a replay counted twice"
    return spent


async def main(n: int, rate: int) -> None:
    import redis.asyncio

    server = RedisProcess()
    rows: list[tuple[str, int, int]] = []
    try:
        client = redis.asyncio.Redis.from_url(server.url)
        runs: list[tuple[str, Any]] = [
            ("one key per settle (before)", lambda: one_key_per_settle(client, n)),
            (f"one hash per {SETTLE_BUCKET_S} s (after)", lambda: bucketed(client, n, rate, SETTLE_BUCKET_S)),
            ("one hash per 10 s (for comparison)", lambda: bucketed(client, n, rate, 10))]
        for name, run in runs:
            await client.flushall()
            await client.memory_purge()
            _, empty = await _used(client)
            await run()
            keys, used = await _used(client)
            rows.append((name, keys, used - empty))
        await client.aclose()
    finally:
        server.stop()
    print(f"{n} settles at {rate}/s ({n / rate:.0f} s of traffic), markers kept {SETTLED_MARKER_S:.0f} s")
    print(f"{'markers':<38}{'DBSIZE':>10}{'used_memory (MB)':>20}{'bytes/settle':>16}")
    for name, keys, used in rows:
        print(f"{name:<38}{keys:>10}{used / 1e6:>20.2f}{used / n:>16.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=100, help="settles a second the ids stand for")
    options = parser.parse_args()
    asyncio.run(main(options.n, options.rate))
