"""Where the sync path's overhead goes: ``router.generate`` over google-genai's sync call, taken apart.

    python benchmarks/sync_path.py [--n 300] [--rounds 5]   # ~1 min

``router.generate`` runs ``agenerate`` on the router's loop thread (``genroute.runtime.portal``), and the Gemini
engine uses the SDK's async client; the direct sync call uses the SDK's sync client in the caller's thread. The
SDK's own aiohttp session is made with ``trust_env=True``, so before every request aiohttp reads the netrc file
and the proxy settings in worker threads; where the environment holds neither, the engine gives the SDK a session
that skips those reads (``genroute.engines.gemini_sessions``), and so does the "direct async, no env reads"
contender here. So ``generate`` − direct sync = genroute's own async overhead (``agenerate`` − direct async on
the same session) + the hop to the loop thread and back (``generate`` − ``agenerate``) + what the SDK's async call
on that session costs over its sync one. Shown apart: what the reads cost a direct async call on the SDK's own
session, and a bare round trip of a no-op coroutine through a ``Portal``.

Printed per contender: wall µs a call (median of each round's median, rounds interleaved) and CPU µs a call (all
threads of this process: aiohttp's worker threads count), on the loopback Gemini server in this process, OTel SDK
tracer recording every span (as ``overhead.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead_instructions import discarding_provider  # noqa: E402

MODEL = "gemini-2.5-flash"


def _round(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """Median wall µs of ``n`` calls, and their mean CPU µs (process time: every thread)."""
    samples = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6, (time.process_time() - cpu) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from google import genai
    from google.genai import types

    from genroute import Router
    from genroute.runtime.portal import Portal
    from genroute.testing import GeminiTestServer

    with GeminiTestServer() as server:
        http = types.HttpOptions(base_url=server.base_url)
        client = genai.Client(api_key="bench-key", http_options=http)
        loop = asyncio.new_event_loop()
        session = loop.run_until_complete(_plain_session())
        plain = genai.Client(api_key="bench-key", http_options=http.model_copy(update={"aiohttp_client": session}))
        config = {"engines": {"g": {"kind": "gemini", "api_key": "bench-key", "base_url": server.base_url}},
                  "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}}, "timeout_s": 60}
        # One router a loop, as an application uses one (a router serving two loops keeps a session on each).
        provider = discarding_provider()
        router = Router.from_config(config, tracer_provider=provider)
        router_sync = Router.from_config(config, tracer_provider=provider)
        portal = Portal()

        async def nothing() -> None:
            return None

        contenders: dict[str, Callable[[], object]] = {
            "direct sync (SDK sync client)": lambda: client.models.generate_content(model=MODEL, contents="hello"),
            "direct async (SDK aiohttp session)": lambda: loop.run_until_complete(
                client.aio.models.generate_content(model=MODEL, contents="hello")),
            "direct async, no env reads": lambda: loop.run_until_complete(
                plain.aio.models.generate_content(model=MODEL, contents="hello")),
            "router.agenerate": lambda: loop.run_until_complete(router.agenerate("hello")),
            "router.generate": lambda: router_sync.generate("hello"),
            "portal round trip (no-op)": lambda: portal.call(nothing()),
        }
        for fn in contenders.values():  # warm up clients, pools and the loop thread
            for _ in range(20):
                fn()
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                rounds[name].append(_round(fn, args.n))
        loop.run_until_complete(router.aclose())
        router_sync.close()
        portal.close()
        loop.run_until_complete(session.close())
        loop.close()
    wall = {name: statistics.median(w for w, _ in values) for name, values in rounds.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in rounds.items()}
    print(f"{args.rounds} rounds of {args.n} calls: µs a call (medians)")
    print(f"{'contender':38} {'wall':>8} {'CPU':>8}")
    for name in contenders:
        print(f"{name:38} {wall[name]:8.1f} {cpu[name]:8.1f}")
    parts = [
        ("router.generate over direct sync", "router.generate", "direct sync (SDK sync client)"),
        ("  genroute's own (agenerate over direct async)", "router.agenerate", "direct async, no env reads"),
        ("  the loop-thread hop (generate over agenerate)", "router.generate", "router.agenerate"),
        ("  SDK async over SDK sync", "direct async, no env reads", "direct sync (SDK sync client)"),
        ("aiohttp's environment reads (SDK's own session)", "direct async (SDK aiohttp session)",
         "direct async, no env reads"),
    ]
    print(f"\n{'where the sync overhead goes':50} {'wall':>8} {'CPU':>8}")
    for label, a, b in parts:
        print(f"{label:50} {wall[a] - wall[b]:+8.1f} {cpu[a] - cpu[b]:+8.1f}")


async def _plain_session() -> object:
    """An aiohttp session as the engine makes it (on this loop): like the SDK's own, but without ``trust_env``."""
    from genroute.engines.gemini_sessions import new_session

    return new_session()


if __name__ == "__main__":
    main()
