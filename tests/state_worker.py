"""A separate process for the shared-state tests: hammers one Redis account, or holds and waits to be killed.

    python -m tests.state_worker burst URL PREFIX TASKS AMOUNT LIMIT  -> "ready"; on a line in: holds admitted
    python -m tests.state_worker hold URL PREFIX AMOUNT LIMIT TTL_S    -> holds, prints "held", sleeps
    python -m tests.state_worker outcomes URL PREFIX NAME N MAX_ITEMS   -> "ready"; on a line in: writes N outcome
        records (ids NAME-0 .. NAME-N-1) through a SharedOutcomeStore capped at MAX_ITEMS, prints its skipped count
    python -m tests.state_worker log URL PREFIX  -> one JSON line: {"log": the outcome list's writes as stored,
        "records": the records a new SharedOutcomeStore merges from them}
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from genroute.state import RedisStateConfig
from genroute.state.redis_store import RedisStateStore

ACCOUNT = "shared"
ROOT = Path(__file__).resolve().parents[1]


def spawn(*args: object) -> subprocess.Popen[str]:
    """This module in a new process (``args``: its command line)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.state_worker", *map(str, args)], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_together(workers: list[subprocess.Popen[str]], timeout: float = 60) -> list[str]:
    """Wait until every worker is ready, start them together, return what each printed (each must exit 0)."""
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    printed = []
    for worker in workers:
        out, err = worker.communicate(timeout=timeout)
        assert worker.returncode == 0, err
        printed.append(out)
    return printed


async def burst(store: RedisStateStore, tasks: int, amount: int, limit: int) -> int:
    async def one(i: int) -> int:
        hold_id, _ = await store.hold(ACCOUNT, amount, limit, ttl_s=60, keep_s=600)
        if hold_id is None:
            return 0
        await asyncio.sleep(random.Random(i).uniform(0, 0.003))  # the attempt "runs"; others hold meanwhile
        await store.settle(ACCOUNT, hold_id, amount, keep_s=600)
        return 1

    return sum(await asyncio.gather(*(one(i) for i in range(tasks))))


async def main(argv: list[str]) -> None:
    mode, url, prefix = argv[:3]
    # Generous timeouts: on a loaded machine opening the pool's connections may take seconds.
    store = RedisStateStore(RedisStateConfig(kind="redis", url=url, prefix=prefix, on_error="closed", timeout_s=20,
                                             connect_timeout_s=20))
    if mode == "burst":
        tasks, amount, limit = map(int, argv[3:6])
        await store.usage(ACCOUNT)  # connect first, then start when the test says go (all together)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        print(await burst(store, tasks, amount, limit), flush=True)
    elif mode == "outcomes":
        from genroute.outcomes import OutcomeRecord, Side
        from genroute.outcomes.shared import SharedOutcomeStore

        name, n, cap = argv[3], int(argv[4]), int(argv[5])
        outcomes = SharedOutcomeStore(store, max_items=cap)
        await outcomes.records()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for i in range(n):
            await outcomes.upsert(OutcomeRecord(metadata={"id": f"{name}-{i}", "task": "t", "writer": name, "i": i},
                                                outcomes={"chat": Side(score=1.0)}))
        print(outcomes.skipped, flush=True)
    elif mode == "log":
        from genroute.outcomes.shared import SharedOutcomeStore

        written = (await store.items("outcomes")).items
        records = await SharedOutcomeStore(store).records()
        print(json.dumps({"log": [json.loads(line) for line in written], "records": [r.line() for r in records]}),
              flush=True)
    elif mode == "hold":
        amount, limit = int(argv[3]), int(argv[4])
        hold_id, _ = await store.hold(ACCOUNT, amount, limit, ttl_s=float(argv[5]), keep_s=600)
        print("held" if hold_id else "refused", flush=True)
        await asyncio.sleep(3600)
    await store.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
