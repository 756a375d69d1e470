"""Per-request overhead of genroute over a direct google-genai call, side by side on one loopback server.

    python benchmarks/overhead.py [--n 300] [--rounds 5]

Prints medians of: a direct google-genai call (sync, and async on the kind of aiohttp session genroute's engine
gives the SDK: ``raw_sdk``), the same call through ``router.generate`` /
``router.agenerate`` with the OTel SDK recording every span, LiteLLM's Router pointed at the same server (if
``litellm`` is installed: ``pip install litellm`` — never a genroute dependency), and one bare OTel SDK span
with 10 attributes. Rounds are interleaved so machine noise hits every contender alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import raw_sdk
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from genroute import Router
from genroute.testing import GeminiTestServer


class _Discard(SpanExporter):
    def export(self, spans):  # noqa: ANN001
        return SpanExportResult.SUCCESS


def _median_us(fn: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def _bare_span_us(provider: TracerProvider, n: int) -> float:
    tracer = provider.get_tracer("bench")
    attrs = {f"attr.{i}": i for i in range(10)}

    def one() -> None:
        tracer.start_span("bare", attributes=attrs).end()

    return _median_us(one, n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Discard()))
    with GeminiTestServer() as server:
        loop = asyncio.new_event_loop()
        # The async direct call on the kind of session the engine uses (raw_sdk); the sync one is the SDK's own.
        client, session = raw_sdk.client(server.base_url, loop=loop)
        config = {
            "engines": {"g": {"kind": "gemini", "api_key": "bench-key", "base_url": server.base_url}},
            "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}},
            "timeout_s": 60,
        }
        router = Router.from_config(config, tracer_provider=provider)
        aclient = client.aio

        # The direct calls are the SDK's quick start: a string and no per-request config (genroute sends the
        # same when the request allows it; a Content list or per-request http_options cost the SDK itself more).
        def direct_sync() -> None:
            client.models.generate_content(model="gemini-2.5-flash", contents="hello")

        def direct_async() -> None:
            loop.run_until_complete(aclient.models.generate_content(model="gemini-2.5-flash", contents="hello"))

        def routed_sync() -> None:
            router.generate("hello")

        def routed_async() -> None:
            loop.run_until_complete(router.agenerate("hello"))

        contenders: dict[str, Callable[[], None]] = {
            "direct google-genai (sync)": direct_sync, "genroute router.generate": routed_sync,
            "direct google-genai (async)": direct_async, "genroute router.agenerate": routed_async,
        }
        try:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            lite = litellm.Router(model_list=[{"model_name": "flash", "litellm_params": {
                "model": "gemini/gemini-2.5-flash", "api_key": "bench-key", "api_base": server.base_url}}])

            def litellm_sync() -> None:
                lite.completion(model="flash", messages=[{"role": "user", "content": "hello"}])

            litellm_sync()
            contenders["litellm Router.completion"] = litellm_sync
        except Exception as exc:  # litellm is optional here: report and go on
            print(f"(litellm not measured: {type(exc).__name__}: {exc})")
        for fn in contenders.values():  # warm up clients and pools
            for _ in range(20):
                fn()
        results: dict[str, list[float]] = {name: [] for name in contenders}
        spans: list[float] = []
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                results[name].append(_median_us(fn, args.n))
            spans.append(_bare_span_us(provider, args.n * 10))
        router.close()
        loop.run_until_complete(session.close())
        loop.close()
    best = {name: min(values) for name, values in results.items()}
    span = min(spans)
    print(f"{'contender':32} {'median µs/call (best round)':>28}")
    for name, value in best.items():
        print(f"{name:32} {value:28.1f}")
    print(f"{'bare OTel SDK span, 10 attrs':32} {span:28.1f}")
    sync_over = best["genroute router.generate"] - best["direct google-genai (sync)"]
    async_over = best["genroute router.agenerate"] - best["direct google-genai (async)"]
    print(f"\ngenroute overhead (sync):  {sync_over:8.1f} µs = {sync_over / span:5.2f} bare spans")
    print(f"genroute overhead (async): {async_over:8.1f} µs = {async_over / span:5.2f} bare spans")
    if "litellm Router.completion" in best:
        lite_over = best["litellm Router.completion"] - best["direct google-genai (sync)"]
        print(f"litellm overhead (sync):   {lite_over:8.1f} µs = {lite_over / max(sync_over, 1e-9):5.1f}x genroute's")


if __name__ == "__main__":
    main()
