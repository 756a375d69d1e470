"""What bounding a request by its deadline costs, counted in CPU instructions (valgrind): ``asyncio.timeout_at``
vs genroute's ``deadline_at`` (one timer per event loop) (``genroute/runtime/deadlines.py``).

    python benchmarks/deadline_instructions.py [--n 200]   # ~1 min

Each contender awaits a trivial coroutine (one event-loop turn) ``--n`` times inside a block bounded 60 s ahead,
in a child under ``valgrind --tool=callgrind`` counting only the measured window (``callgrind.in_window``); the
same loop without a block is the baseline. ``alone``: the requests one after another, as a single caller (or a
run under valgrind, where one request takes longer than a timer slot) sends them, each in a slot of its own
(``asyncio.timeout_at`` schedules and cancels a timer for each; ``deadline_at`` sets its loop's one timer once);
``together``: 100 requests in flight at once with the same deadline, as a server under load sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time


import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from callgrind import in_window, run  # noqa: E402

BLOCKS = ("none", "asyncio.timeout_at", "deadline_at")
GROUP = 100


async def _answer() -> int:
    await asyncio.sleep(0)
    return 1


async def _request(block: str, deadline: float) -> int:
    if block == "none":
        return await _answer()
    if block == "asyncio.timeout_at":
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
            return await _answer()
    from genroute.runtime.deadlines import deadline_at

    with deadline_at(deadline):
        return await _answer()


def _child(block: str, shape: str, n: int) -> None:
    loop = asyncio.new_event_loop()

    async def batch(count: int) -> None:
        deadline = time.monotonic() + 60
        if shape == "alone":
            for _ in range(count):
                await _request(block, time.monotonic() + 60)
        else:
            for _ in range(count // GROUP):
                await asyncio.gather(*(_request(block, deadline) for _ in range(GROUP)))

    loop.run_until_complete(batch(2 * GROUP))  # warm-up
    gc.collect()
    gc.freeze()
    gc.disable()
    in_window(lambda: loop.run_until_complete(batch(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="requests per contender (a multiple of 100)")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.n)
        return
    print(f"instructions a request, {args.n} requests, the deadline 60 s ahead (baseline: no block)")
    for shape in ("alone", "together"):
        counts = {block: run([__file__, "--child", block, shape, "--n", str(args.n)], label=block, window=True)
                  for block in BLOCKS}
        base = counts["none"][0]  # type: ignore[index]
        cells = ", ".join(f"{block} {(counts[block][0] - base) / args.n / 1e3:.1f} k"  # type: ignore[index]
                          for block in BLOCKS[1:])
        print(f"  {shape:9} {cells}")


if __name__ == "__main__":
    main()
