"""A separate process on a state journal (``state.journal``), for tests/test_state_journal.py.

    python -m tests.journal_worker owe URL PREFIX JOURNAL N
        -> with Redis down at URL: N settles of 1 unit to account "acct" and N appends to the list "log", all kept for
           replay; prints "kept N" and waits to be killed
    python -m tests.journal_worker adopt URL PREFIX JOURNAL
        -> "ready"; on a line in: builds a store on JOURNAL and prints how many writes it took over (Redis down at
           URL: nothing is sent), then waits to be killed
    python -m tests.journal_worker preload URL PREFIX JOURNAL
        -> a gunicorn --preload master: builds a store on JOURNAL (Redis up at URL), prints "ready N" (N: the writes it
           took over); on each line in, forks a worker whose first call (a usage read) sends what it inherited, waits
           for it, prints "served"; on "close", closes its store (sending what it still holds), prints "closed"
"""

from __future__ import annotations

import asyncio
import os
import sys

from genroute.state import RedisStateConfig
from genroute.state.redis_store import RedisStateStore


def store(url: str, prefix: str, journal: str) -> RedisStateStore:
    return RedisStateStore(RedisStateConfig(kind="redis", url=url, prefix=prefix, journal=journal, retry_s=3600,
                                            timeout_s=5, connect_timeout_s=5))


async def main(argv: list[str]) -> None:
    mode, url, prefix, journal = argv[:4]
    if mode == "owe":
        n = int(argv[4])
        owing = store(url, prefix, journal)
        for i in range(n):
            await owing.settle("acct", None, 1, keep_s=600)
            await owing.append("log", f"item {i}".encode())
        print(f"kept {owing._unsent.waiting()}", flush=True)
    else:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        print(store(url, prefix, journal)._unsent.waiting(), flush=True)
    await asyncio.sleep(3600)


def preload(url: str, prefix: str, journal: str) -> None:
    master = store(url, prefix, journal)
    print(f"ready {master._unsent.waiting()}", flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            break
        pid = os.fork()
        if pid == 0:
            asyncio.run(master.usage("acct"))
            os._exit(0)
        os.waitpid(pid, 0)
        print("served", flush=True)
    asyncio.run(master.aclose())
    print("closed", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "preload":
        preload(*sys.argv[2:5])
    else:
        asyncio.run(main(sys.argv[1:]))
