"""Objects one request holds alive while it waits for the model's answer: raw google-genai vs genroute.

    python benchmarks/live_objects.py

At 1,000 concurrent requests each request in flight keeps its objects alive while the others run, so the
garbage collector's young collections find them, promote them, and full collections come sooner; the GC work
per request grows with this count (``benchmarks/throughput.py`` prints the throughput it costs). One request is
sent to the loopback server, delayed there by 0.5 s (the raw client on the kind of aiohttp session genroute's
engine gives the SDK, ``raw_sdk``); mid-wait the GC-tracked objects created since it started
and still alive are counted (the in-process server's share is the same for every contender). Counts are
deterministic: load cannot move them.
"""

from __future__ import annotations

import asyncio
import collections
import gc
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import raw_sdk


def _contenders(base_url: str) -> dict[str, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from genroute import Router

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    config = {"engines": {"g": {"kind": "gemini", "api_key": "bench-key", "base_url": base_url}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}},
              "timeout_s": 60}
    client, session = raw_sdk.client(base_url)  # on the kind of session the engine uses
    plain, traced = Router.from_config(config), Router.from_config(config, tracer_provider=provider)
    return {
        "raw client.aio": lambda: client.aio.models.generate_content(model="gemini-2.5-flash", contents="hello"),
        "genroute agenerate": lambda: plain.agenerate("hello"),
        "genroute agenerate, SDK tracer": lambda: traced.agenerate("hello"),
        "_close": lambda: asyncio.gather(plain.aclose(), traced.aclose(), client.aio.aclose(), session.close()),
    }


async def _alive(server: Any, call: Any) -> collections.Counter[str]:
    from genroute.testing import Fault

    for _ in range(5):  # warm: connections, lazy imports, caches
        await call()
    server.fault(Fault.delay(0.5))
    gc.collect()
    gc.disable()
    try:
        before = {id(o) for o in gc.get_objects()}
        task = asyncio.ensure_future(call())
        await asyncio.sleep(0.25)
        alive = [o for o in gc.get_objects() if id(o) not in before]
        await task
    finally:
        gc.enable()
    return collections.Counter(type(o).__name__ for o in alive)


async def _main() -> None:
    from genroute.testing import GeminiTestServer

    with GeminiTestServer() as server:
        contenders = _contenders(server.base_url)
        close = contenders.pop("_close")
        print("GC-tracked objects alive mid-request (created since the request started):")
        for name, call in contenders.items():
            kinds = await _alive(server, call)
            common = ", ".join(f"{k} {v}" for k, v in kinds.most_common(8))
            print(f"  {name:32} {sum(kinds.values()):5}   ({common}, ...)")
        await close()


if __name__ == "__main__":
    asyncio.run(_main())
