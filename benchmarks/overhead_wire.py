"""GeminiEngine overhead over a direct google-genai call, both against the loopback server.

    python benchmarks/overhead_wire.py [--n 300]

Calls are interleaved (direct, engine, direct, ...) so machine noise hits both sides alike; prints
p50/p90 latency per call in ms and the engine's median overhead (retry layer, timeout plumbing,
error-mapping guard). Streams are measured the same way (full consumption of a 3-chunk reply).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import raw_sdk
from google.genai import types

from genroute.engines.gemini import GeminiEngine
from genroute.testing import GeminiTestServer

MODEL = "gemini-2.5-flash"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(n: int) -> None:
    with GeminiTestServer() as srv:
        client, session = raw_sdk.client(  # on the kind of session the engine uses
            srv.base_url, retry_options=types.HttpRetryOptions(attempts=1), timeout=60_000)
        engine = GeminiEngine("bench", {"api_key": "bench-key", "base_url": srv.base_url})
        contents = [types.Content(role="user", parts=[types.Part(text="one two three four five")])]

        async def direct() -> None:
            await client.aio.models.generate_content(model=MODEL, contents=contents)

        async def via_engine() -> None:
            await engine.generate(MODEL, contents)

        async def direct_stream() -> None:
            async for _ in await client.aio.models.generate_content_stream(model=MODEL, contents=contents):
                pass

        async def engine_stream() -> None:
            async for _ in engine.stream(MODEL, contents):
                pass

        for pair in ((direct, via_engine), (direct_stream, engine_stream)):
            for f in pair:  # warm up connections and lazy imports
                for _ in range(20):
                    await f()
            times: dict[str, list[float]] = {f.__name__: [] for f in pair}
            for _ in range(n):
                for f in pair:
                    t0 = time.perf_counter()
                    await f()
                    times[f.__name__].append(time.perf_counter() - t0)
            for name, values in times.items():
                print(f"{name:14s} p50 {pct(values, 0.5):7.3f} ms   p90 {pct(values, 0.9):7.3f} ms   (n={n})")
            a, b = (times[f.__name__] for f in pair)
            overhead = statistics.median(y - x for x, y in zip(a, b, strict=True)) * 1000
            print(f"{'overhead':14s} median of paired differences {overhead:+.3f} ms\n")
        await engine.aclose()
        await client.aio.aclose()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
