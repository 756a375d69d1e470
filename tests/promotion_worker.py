"""A replica in a process of its own for the promotion tests: serves one request of a task per line in.

    python -m tests.promotion_worker CONFIG_JSON TASK
        -> "ready" once built; then per line in: ``serve`` answers one request of TASK, ``refresh`` calls
           ``router.arefresh()`` first; each prints the backend that answered; ``quit`` ends it.
"""

from __future__ import annotations

import asyncio
import json
import sys

from genroute import Router


async def main(config: dict, task: str) -> None:
    async with await Router.acreate(config) as router:
        print("ready", flush=True)
        while (line := (await asyncio.to_thread(sys.stdin.readline)).strip()) not in ("quit", ""):
            if line == "refresh":
                await router.arefresh()
            result = await router.agenerate("hello", task=task)
            print(result.backend, flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2]))
