"""Per-request overhead counted in CPU instructions (valgrind), so a busy shared machine cannot move the figures.

    python benchmarks/overhead_instructions.py [--n 100] [--jobs 2]   # ~15-20 min: each contender under callgrind

Wall-clock overhead (``benchmarks/overhead.py``) swings by 5x on these shared 2-core machines; instruction counts
repeat to within a fraction of a percent. Each contender runs ``--n`` calls in a child process under
``valgrind --tool=callgrind``; a child that makes no measured calls gives the baseline, and the difference divided
by ``--n`` is the cost of one call. LiteLLM is imported only in its own children (its background logging threads
would otherwise count against every contender), with its own baseline. Contenders:

- ``direct``: google-genai's async ``generate_content`` against the loopback Gemini server, as its quick start
  writes it (a string, no per-request config);
- ``routed``: ``router.agenerate`` on the same server, OTel SDK recording every span;
- ``bare_span``: one OTel SDK span with 10 attributes (the unit of the issue's target);
- ``mandated``: only the spans and attributes the telemetry contract (ARCHITECTURE.md, README "Telemetry") puts
  on a request its first rung served (no ``genroute.rung`` event there), made directly with the OTel SDK — the
  floor for any implementation of that contract;
- ``direct_sync`` and ``litellm``: google-genai's sync call and LiteLLM's ``Router.completion`` on the same server
  (only where ``litellm`` is importable: install it in a separate venv, never in genroute's).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from callgrind import instructions
from concurrent.futures import ThreadPoolExecutor

MODES = ("direct", "routed", "bare_span", "mandated", "direct_sync", "litellm")


def _child(mode: str, n: int) -> None:
    from google import genai
    from google.genai import types
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind

    from genroute import Router
    from genroute.testing import GeminiTestServer

    class Discard(SpanExporter):
        def export(self, spans):  # noqa: ANN001
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    tracer = provider.get_tracer("bench")
    attrs10 = {f"attr.{i}": i for i in range(10)}

    def bare_span() -> None:
        tracer.start_span("bare", attributes=attrs10).end()

    def mandated() -> None:
        with tracer.start_as_current_span("genroute.generate", kind=SpanKind.INTERNAL, attributes={
                "genroute.policy": "static", "genroute.reason": "static backend 'chat'", "genroute.rungs": ["chat"]}) as root:
            with tracer.start_as_current_span("generate_content gemini-2.5-flash", kind=SpanKind.CLIENT, attributes={
                    "gen_ai.operation.name": "generate_content", "gen_ai.provider.name": "gcp.gemini",
                    "gen_ai.request.model": "gemini-2.5-flash"}) as call:
                call.set_attributes({
                    "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 3,
                    "gen_ai.usage.cache_read.input_tokens": 0, "gen_ai.usage.cost.amount": 1e-6,
                    "gen_ai.usage.cost.currency": "USD", "gen_ai.response.model": "gemini-2.5-flash",
                    "gen_ai.response.finish_reasons": ["stop"]})
            root.set_attributes({
                "genroute.backend": "chat", "genroute.rungs_tried": 1, "gen_ai.usage.cost.amount": 1e-6,
                "gen_ai.usage.cost.currency": "USD", "gen_ai.response.model": "gemini-2.5-flash"})

    with GeminiTestServer() as server:
        config = {"engines": {"g": {"kind": "gemini", "api_key": "bench-key", "base_url": server.base_url}},
                  "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}}}
        router = Router.from_config({**config, "timeout_s": 60}, tracer_provider=provider)
        client = genai.Client(api_key="bench-key", http_options=types.HttpOptions(base_url=server.base_url))
        loop = asyncio.new_event_loop()

        # The SDK's quick start: a string and no per-request config (a Content list or per-request http_options
        # cost the SDK itself more; genroute sends the same cheapest form when the request allows it).
        async def direct_async() -> None:
            await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hello")

        calls = {
            "direct": lambda: loop.run_until_complete(direct_async()),
            "routed": lambda: loop.run_until_complete(router.agenerate("hello")),
            "bare_span": bare_span,
            "mandated": mandated,
            "direct_sync": lambda: client.models.generate_content(model="gemini-2.5-flash", contents="hello"),
        }
        if mode == "litellm":
            try:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                import litellm
            except ImportError:
                raise SystemExit(3) from None
            lite = litellm.Router(model_list=[{"model_name": "flash", "litellm_params": {
                "model": "gemini/gemini-2.5-flash", "api_key": "bench-key", "api_base": server.base_url}}])
            calls["litellm"] = lambda: lite.completion(model="flash", messages=[{"role": "user", "content": "hello"}])
        for fn in calls.values():  # the same warm-up in every child, so baselines cancel exactly
            for _ in range(5):
                fn()
        for _ in range(n):
            calls[mode]()
        loop.run_until_complete(router.aclose())
        loop.close()


def _count(mode: str, n: int) -> int | None:
    return instructions([__file__, "--child", mode, "--n", str(n)], label=mode, not_applicable=3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2, help="children run at once (counts do not depend on it)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.n)
        return
    runs = [("direct", 0), ("litellm", 0)] + [(mode, args.n) for mode in MODES]
    with ThreadPoolExecutor(args.jobs) as pool:
        counts = dict(zip(runs, pool.map(lambda run: _count(*run), runs)))
    per_call: dict[str, float] = {}
    for mode in MODES:
        total, base = counts[(mode, args.n)], counts[("litellm" if mode == "litellm" else "direct", 0)]
        if total is None or base is None:
            print(f"{mode}: not measured (litellm is not importable here)")
            continue
        per_call[mode] = (total - base) / args.n
        print(f"{mode:12} {per_call[mode] / 1e3:10.1f} k instructions per call")
    span = per_call["bare_span"]
    over = per_call["routed"] - per_call["direct"]
    print(f"\ngenroute overhead (async): {over / 1e3:.1f} k instructions = {over / span:.2f} bare spans")
    print(f"telemetry contract alone:  {per_call['mandated'] / 1e3:.1f} k instructions = "
          f"{per_call['mandated'] / span:.2f} bare spans")
    print(f"genroute's own code:       {(over - per_call['mandated']) / 1e3:.1f} k instructions = "
          f"{(over - per_call['mandated']) / span:.2f} bare spans")
    if "litellm" in per_call:
        lite = per_call["litellm"] - per_call["direct_sync"]
        print(f"litellm overhead (sync):   {lite / 1e3:.1f} k instructions = {lite / over:.1f}x genroute's")


if __name__ == "__main__":
    main()
