"""A separate process that sends a burst of requests through its own Router (for the shared-state tests).

    python -m tests.router_worker CONFIG_JSON REQUESTS START_AT  -> prints {"answered": n, "refused": n, ...}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

from genroute import Router


async def main(config: dict, requests: int, start_at: float) -> dict:
    async with await Router.acreate(config) as router:
        await router.state.usage("warm-up")  # connect before the start line, as a long-running replica would have
        await asyncio.sleep(max(0.0, start_at - time.time()))
        outcomes = await asyncio.gather(*(router.agenerate(f"request {i}", timeout_s=60) for i in range(requests)),
                                        return_exceptions=True)
    kinds = Counter("answered" if not isinstance(o, BaseException) else type(o).__name__ for o in outcomes)
    cost = sum(o.cost_usd for o in outcomes if not isinstance(o, BaseException))
    # Calls answered from this process's memory because Redis did not answer in time (fail-open).
    return {**kinds, "cost_usd": cost, "fallbacks": getattr(router.state, "fallbacks", 0)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))), flush=True)
