"""A separate process that sends requests through its own Router in phases the test paces (shared-state tests).

    python -m tests.router_phases_worker CONFIG_JSON N1,N2,... [TIMEOUT_S]
        -> "ready"; on each line in: N concurrent requests (their shadows drained), then "done"; after the last
           phase one JSON line: {"ids": each phase's answered outcome ids, "errors": {type: n}, "fallbacks": n,
           "limit_mismatches": n}
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

from genroute import Router


async def main(config: dict, phases: list[int], timeout_s: float) -> dict:
    ids: list[list[str]] = []
    errors: Counter[str] = Counter()
    async with await Router.acreate(config) as router:
        await router.state.usage("warm-up")  # connected before the first phase, as a running replica is
        print("ready", flush=True)
        for size in phases:
            await asyncio.to_thread(sys.stdin.readline)
            outcomes = await asyncio.gather(*(router.agenerate(f"request {i}", timeout_s=timeout_s) for i in range(size)),
                                            return_exceptions=True)
            await router.adrain()
            ids.append([o.outcome_id for o in outcomes if not isinstance(o, BaseException)])
            errors.update(type(o).__name__ for o in outcomes if isinstance(o, BaseException))
            print("done", flush=True)
    return {"ids": ids, "errors": dict(errors), "fallbacks": getattr(router.state, "fallbacks", 0),
            "limit_mismatches": router.state.limit_mismatches}


if __name__ == "__main__":
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    result = asyncio.run(main(json.loads(sys.argv[1]), [int(n) for n in sys.argv[2].split(",")], timeout))
    print(json.dumps(result), flush=True)
