"""Client work per request at high concurrency, counted in CPU instructions (valgrind), so load cannot move it.

    python benchmarks/throughput_instructions.py [--requests 1000] [--concurrency 500] [--timeout-s 60]  # ~15 min

``benchmarks/throughput.py`` measures requests per second at 1,000 concurrent requests, which swing by 2x on the
shared machines. This counts what the client process executes instead: each contender runs ``--requests``
calls from ``--concurrency`` tasks in a child under ``valgrind --tool=callgrind`` (the loopback Gemini server
runs in its own, untraced, process), and a child that makes no measured calls gives the baseline. At this
concurrency every request in flight holds its objects while the others run, so the counts include the garbage
collector's work that grows with them (what a one-call count cannot show). The ratio raw/genroute is meant as
the throughput a CPU-bound client would reach relative to the raw SDK call; caveat (RESULTS, "Second step"): the
routed count moved by ~3.8 M instructions a request between 60 s and 3,600 s timeouts, because an engine timeout
above the engine's retry budget (``retry.deadline_s``, 120 s) made every attempt send per-request HTTP options; with
``--timeout-s`` above 120 the engine's retry budget is raised to it as well, so that path is not measured.

Contenders: ``raw`` (google-genai's ``client.aio`` quick start: a string, no per-request config; on the kind of
aiohttp session genroute's engine gives the SDK, ``raw_sdk``) and ``routed``
(``router.agenerate`` on a router built from config, no SDK tracer provider), both
against the same server; each child warms up both, so the baseline cancels.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import raw_sdk  # noqa: E402 - the raw contender on the engine's kind of session
from callgrind import instructions  # noqa: E402 - the shared callgrind counter
from throughput import KEY, MODEL, _serve  # noqa: E402 - the same server and model as the wall-clock benchmark


async def _child(mode: str, base_url: str, requests: int, concurrency: int, timeout_s: float) -> None:
    from genroute import Router
    from genroute.engines.retry import RetryConfig

    client, session = raw_sdk.client(base_url, api_key=KEY)  # on the kind of session the engine uses
    # The engine's timeout and the router's deadline alike (a new user's 60 and 60: the deadline a hair under the
    # engine's timeout). Under valgrind a request waits about (concurrency x its instructions) / ~50 M a second.
    engine: dict[str, Any] = {"kind": "gemini", "api_key": KEY, "base_url": base_url, "timeout_s": timeout_s}
    if timeout_s > RetryConfig().deadline_s:
        # Else the engine's retry budget (120 s) is shorter than its HTTP timeout and every attempt takes the
        # per-request-options path that a new user's 60 s never takes (RESULTS, "Second step").
        engine["retry"] = {"deadline_s": timeout_s}
    config = {"engines": {"g": engine},
              "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}},
              "timeout_s": timeout_s}
    router = await Router.acreate(config)

    async def raw(i: int) -> Any:
        return await client.aio.models.generate_content(model=MODEL, contents="hello")

    async def routed(i: int) -> Any:
        return await router.agenerate("hello")

    async def drive(call: Any, n: int, c: int) -> None:
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                await call(i)

        await asyncio.gather(*(worker() for _ in range(c)))

    for call in (raw, routed):  # the same warm-up in every child, so baselines cancel
        await drive(call, 50, 50)
    if mode != "baseline":
        await drive(raw if mode == "raw" else routed, requests, concurrency)
    await router.aclose()
    await client.aio.aclose()
    await session.close()


def _count(mode: str, base_url: str, requests: int, concurrency: int, timeout_s: float) -> int:
    count = instructions([__file__, "--child", mode, "--url", base_url, "--requests", str(requests),
                          "--concurrency", str(concurrency), "--timeout-s", str(timeout_s)], label=mode)
    assert count is not None
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--timeout-s", type=float, default=60.0,
                        help="engine timeout and router deadline (raise it if valgrind's slowness hits it)")
    parser.add_argument("--child")
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.child, args.url, args.requests, args.concurrency, args.timeout_s))
        return
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(urls, stop), daemon=True)
    server.start()
    try:
        url = urls.get(timeout=60)
        counts = {mode: _count(mode, url, args.requests, args.concurrency, args.timeout_s)
                  for mode in ("baseline", "raw", "routed")}
    finally:
        stop.set()
        server.join(10)
    per = {mode: (counts[mode] - counts["baseline"]) / args.requests for mode in ("raw", "routed")}
    print(f"{args.requests} requests, {args.concurrency} concurrent; client instructions per request:")
    for mode, value in per.items():
        print(f"  {mode:8} {value / 1e3:10.1f} k")
    print(f"raw / genroute: {per['raw'] / per['routed']:.1%} (the throughput ratio of a CPU-bound client)")


if __name__ == "__main__":
    main()
