"""Per-request overhead counted in CPU instructions (valgrind), so a busy shared machine cannot move the figures.

    python benchmarks/overhead_instructions.py [--n 100] [--jobs 2]   # ~10-20 min: each contender under callgrind

Wall-clock overhead (``benchmarks/overhead.py``) swings by 5x on these shared 2-core machines; instruction counts
barely move. Barely: on a loaded machine the in-process loopback server answers later and the event loop turns more
while it waits, which read ~20 k instructions a call (~0.1 bare span) more in runs made two at a time than in runs
made one at a time (RESULTS, seventh step). Compare trees in runs made one at a time, alternating. Each contender
runs ``--n`` calls in a child process under ``valgrind --tool=callgrind``, and only a measured window is counted
(``callgrind.in_window``: the main thread's instructions between its start and end, not imports, warm-up,
shutdown, the in-process loopback server's thread or LiteLLM's logging threads). A child whose window makes no
calls gives the baseline (the window's fixed cost), and the difference divided by ``--n`` is the cost of one call.

The garbage collector is made deterministic, and still paid for: in every child (baselines too), after the same
warm-up, ``gc.collect()`` and ``gc.freeze()`` (what start-up and warm-up left is not scanned again), automatic
collection off during the window, and one ``gc.collect()`` at the window's end, inside the count: the cyclic
garbage and survivors the calls created are traversed once. (With automatic collection, whether a young or full
collection fell inside a child's 30 calls moved a per-call figure by 100-400 k instructions.) A full collection
traverses what the calls left alive; young collections at high concurrency are what ``throughput*.py`` measure.
Per contender it also prints the GC-tracked objects a call leaves alive, the cyclic garbage it leaves to the
collector, and the net GC-tracked allocations before the end-of-window collection. Children run with
``PYTHONHASHSEED=0``. LiteLLM is imported only in its own children, with its own baseline. Contenders:

- ``direct``: google-genai's async ``generate_content`` against the loopback Gemini server, as its quick start
  writes it (a string, no per-request config), on the kind of aiohttp session genroute's engine gives the SDK
  (``raw_sdk``: neither side reads proxy settings and netrc before each request);
- ``routed``: ``router.agenerate`` on the same server, OTel SDK recording every span;
- ``bare_span``: one OTel SDK span with 10 attributes (the unit of the issue's target);
- ``mandated``: only the spans and attributes the telemetry contract (ARCHITECTURE.md, docs/telemetry.md) puts
  on a request its first rung served (no ``genroute.rung`` event there), made directly with the OTel SDK the
  cheapest way (``start_span`` with the attributes known at its start, one ``set_attributes`` for those known at
  its end, the span made current by ``context.attach``/``detach``, as genroute does: ``start_as_current_span``'s
  two generator context managers add ~25 k instructions a span) — the floor for any implementation of that
  contract;
- ``floor``: the same request written as one straight-line coroutine doing what the router does for it (``Floor``:
  the request built, an in-flight table, the deadline, the lost-attempt meter, usage priced, the result and its
  records), the contract's spans included: the least genroute's own code could cost for this feature set;
- ``direct_sync`` and ``litellm``: google-genai's sync call and LiteLLM's ``Router.completion`` on the same server
  (only where ``litellm`` is importable: install it in a separate venv, never in genroute's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import gc
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import raw_sdk
from callgrind import in_window, run
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from genroute.runtime.deadlines import deadline_at
from genroute.runtime.telemetry import attach
from genroute.types import built_usage

GC_LINE = "gc-stats "

MODES = ("direct", "routed", "bare_span", "mandated", "floor", "direct_sync", "litellm")


def discarding_provider() -> Any:
    """An OTel SDK tracer provider that records every span and exports it nowhere."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans):  # noqa: ANN001
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    return provider


def mandated(tracer: Any) -> None:
    """The spans and attributes the telemetry contract puts on a request its first rung served, made the cheapest
    way (``start_span`` with what is known at the start, one ``set_attributes`` at the end, attach/detach)."""
    root = tracer.start_span("genroute.generate", kind=SpanKind.INTERNAL, attributes={
        "genroute.policy": "static", "genroute.reason": "static backend 'chat'"},
        record_exception=False, set_status_on_exception=False)
    root_token = otel_context.attach(trace.set_span_in_context(root))
    call = tracer.start_span("generate_content gemini-2.5-flash", kind=SpanKind.CLIENT, attributes={
        "gen_ai.operation.name": "generate_content", "gen_ai.provider.name": "gcp.gemini",
        "gen_ai.request.model": "gemini-2.5-flash"}, record_exception=False, set_status_on_exception=False)
    call_token = otel_context.attach(trace.set_span_in_context(call))
    call.set_attributes({
        "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 3,
        "gen_ai.usage.cache_read.input_tokens": 0, "gen_ai.usage.cost.amount": 1e-6,
        "gen_ai.usage.cost.currency": "USD", "gen_ai.response.model": "gemini-2.5-flash",
        "gen_ai.response.finish_reasons": ["stop"]})
    otel_context.detach(call_token)
    call.end()
    root.set_attributes({
        "genroute.backend": "chat", "genroute.rungs_tried": 1, "gen_ai.usage.cost.amount": 1e-6,
        "gen_ai.usage.cost.currency": "USD"})
    otel_context.detach(root_token)
    root.end()


_METER: contextvars.ContextVar[Any] = contextvars.ContextVar("floor_meter", default=None)


class Floor:
    """What the router does for a request its first rung served, written as one straight-line coroutine: the least
    code that does all of it, with genroute's own cheapest parts (its model builders, its shared deadline timer).

    Per request: the text request built (``GenerateRequest``), the task entered in an in-flight table (so a close
    can cancel it), the root span with the decision's attributes, a deadline (``deadline_at``, one timer a loop),
    the call span, the meter for lost attempts (a context variable), the client of the running loop, usage read
    from the response and priced, the text and finish reason, the root span's cost attributes, and the result
    (``GenerateResult`` holding a ``DecisionRecord`` and one ``RungAttempt``) with its trace id. No layers
    (backend, engine, retry, executor, ledger), no checks of what could differ per request (validators, gates,
    shadows, content capture, price tiers, other engines): the floor of genroute's own code beyond the telemetry
    contract for this feature set, not something genroute could ship.
    """

    def __init__(self, client: Any, tracer: Any, loop: asyncio.AbstractEventLoop) -> None:
        from genroute.construct import builder
        from genroute.runtime.pricing import DEFAULT_PRICES
        from genroute.types import DecisionRecord, GenerateRequest, GenerateResult, RungAttempt

        self.clients = {loop: client}
        self.tracer = tracer
        self.price = DEFAULT_PRICES["gemini-2.5-flash"]
        self.inflight: dict[Any, int] = {}
        self.request = builder(GenerateRequest, given=("input",))
        self.attempt, self.decision, self.result = (
            builder(RungAttempt), builder(DecisionRecord), builder(GenerateResult))

    async def __call__(self, text: str) -> Any:
        request = self.request(input=text, task=None, backend=None, variables={}, metadata={}, key=None,
                               timeout_s=None, generation=None, history=None)
        task = asyncio.current_task()
        self.inflight[task] = 1
        start = time.perf_counter()
        tracer = self.tracer
        root = tracer.start_span("genroute.generate", kind=SpanKind.INTERNAL, attributes={
            "genroute.policy": "static", "genroute.reason": "static: always chat"},
            record_exception=False, set_status_on_exception=False)
        root_token = attach(root)  # as genroute: nothing to attach for the API's no-op span
        try:
            with deadline_at(time.monotonic() + 60):
                call = tracer.start_span("generate_content gemini-2.5-flash", kind=SpanKind.CLIENT, attributes={
                    "gen_ai.operation.name": "generate_content", "gen_ai.provider.name": "gcp.gemini",
                    "gen_ai.request.model": "gemini-2.5-flash"}, record_exception=False,
                    set_status_on_exception=False)
                call_token = attach(call)
                rung_start = time.perf_counter()
                meter = _METER.set([])
                try:
                    response = await self.clients[asyncio.get_running_loop()].aio.models.generate_content(
                        model="gemini-2.5-flash", contents=request.input)
                finally:
                    _METER.reset(meter)
                meta = response.usage_metadata
                usage = built_usage(input_tokens=meta.prompt_token_count or 0,
                                    output_tokens=meta.candidates_token_count or 0,
                                    cached_input_tokens=meta.cached_content_token_count or 0,
                                    thinking_tokens=meta.thoughts_token_count or 0,
                                    audio_input_tokens=0, cached_audio_input_tokens=0,
                                    audio_output_tokens=0)  # a text prompt and answer
                price = self.price
                cost = (usage.input_tokens * price.input
                        + (usage.output_tokens + usage.thinking_tokens) * price.output) / 1_000_000
                first = response.candidates[0]
                reason = first.finish_reason.value.lower()
                output = first.content.parts[0].text
                model = response.model_version or "gemini-2.5-flash"
                call.set_attributes({
                    "gen_ai.usage.input_tokens": usage.input_tokens,
                    "gen_ai.usage.output_tokens": usage.output_tokens + usage.thinking_tokens,
                    "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
                    "gen_ai.usage.cost.amount": cost, "gen_ai.usage.cost.currency": "USD",
                    "gen_ai.response.model": model, "gen_ai.response.finish_reasons": [reason]})
                if call_token is not None:
                    otel_context.detach(call_token)
                call.end()
            attempt = self.attempt(backend="chat", outcome="ok", error_type=None, error=None,
                                   latency_s=time.perf_counter() - rung_start, cost_usd=cost, usage=usage,
                                   cost_estimated=False, tool_calls=())
            root.set_attributes({"genroute.backend": "chat", "genroute.rungs_tried": 1,
                                 "gen_ai.usage.cost.amount": cost, "gen_ai.usage.cost.currency": "USD"})
            context = root.get_span_context()
            return self.result(
                text=output, backend="chat", model=model, usage=usage, cost_usd=cost, cost_estimated=False,
                cache_storage_cost_usd=0.0, cloud_equivalent_cost_usd=None,
                latency_s=time.perf_counter() - start, time_to_first_token_s=None, finish_reason=reason,
                decision=self.decision(policy="static", reason="static: always chat", rungs_tried=(attempt,),
                                       shadow=()),
                citations=(), tool_calls=(), trace_id=format(context.trace_id, "032x"), outcome_id=None)
        finally:
            if root_token is not None:
                otel_context.detach(root_token)
            root.end()
            del self.inflight[task]


def _child(mode: str, n: int) -> None:
    from genroute import Router
    from genroute.testing import GeminiTestServer

    provider = discarding_provider()
    tracer = provider.get_tracer("bench")
    attrs10 = {f"attr.{i}": i for i in range(10)}

    def bare_span() -> None:
        tracer.start_span("bare", attributes=attrs10).end()

    with GeminiTestServer() as server:
        config = {"engines": {"g": {"kind": "gemini", "api_key": "bench-key", "base_url": server.base_url}},
                  "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}}}
        router = Router.from_config({**config, "timeout_s": 60}, tracer_provider=provider)
        loop = asyncio.new_event_loop()
        # The direct async call on the kind of session the engine uses (raw_sdk: no per-request proxy and netrc
        # reads on either side); the direct sync call is the SDK's own.
        client, session = raw_sdk.client(server.base_url, loop=loop)

        # The SDK's quick start: a string and no per-request config (a Content list or per-request http_options
        # cost the SDK itself more; genroute sends the same cheapest form when the request allows it).
        async def direct_async() -> None:
            await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hello")

        calls = {
            "direct": lambda: loop.run_until_complete(direct_async()),
            "routed": lambda: loop.run_until_complete(router.agenerate("hello")),
            "bare_span": bare_span,
            "mandated": functools.partial(mandated, tracer),
            "floor": functools.partial(lambda floor: loop.run_until_complete(floor("hello")),
                                       Floor(client, tracer, loop)),
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
        # The same warm-up in every child, so baselines cancel exactly; 10 calls, past CPython 3.11's quickening
        # delay (a function is specialized after 8 calls): with 5, genroute's own functions, called only by its
        # contender, were specialized inside the measured window, and its first calls there ran unspecialized.
        for fn in calls.values():
            for _ in range(10):
                fn()
        stats = {"pending": 0}

        def window() -> None:
            for _ in range(n):
                calls[mode]()
            stats["pending"] = gc.get_count()[0]  # net GC-tracked allocations since the window began
            gc.collect()

        gc.collect()
        gc.freeze()
        gc.disable()
        collected = sum(generation["collected"] for generation in gc.get_stats())
        in_window(window)
        stats["collected"] = sum(generation["collected"] for generation in gc.get_stats()) - collected
        stats["alive"] = len(gc.get_objects())  # frozen objects are not listed: what the window left
        print(GC_LINE + json.dumps(stats), flush=True)
        gc.enable()
        loop.run_until_complete(router.aclose())
        loop.run_until_complete(session.close())
        loop.close()


def _count(mode: str, n: int) -> tuple[int, dict[str, int]] | None:
    result = run([__file__, "--child", mode, "--n", str(n)], label=mode, not_applicable=3, window=True)
    if result is None:
        return None
    count, stdout = result
    line = [line for line in stdout.splitlines() if line.startswith(GC_LINE)][-1]
    return count, json.loads(line.removeprefix(GC_LINE))


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
    print(f"{'':12} {'instructions':>16} {'GC-tracked objects per call:':>30}")
    print(f"{'per call':12} {'':>16} {'left alive':>12} {'cyclic garbage':>15} {'net allocated':>14}")
    for mode in MODES:
        total, base = counts[(mode, args.n)], counts[("litellm" if mode == "litellm" else "direct", 0)]
        if total is None or base is None:
            print(f"{mode}: not measured (litellm is not importable here)")
            continue
        per_call[mode] = (total[0] - base[0]) / args.n
        objects = {key: (total[1][key] - base[1][key]) / args.n for key in ("alive", "collected", "pending")}
        print(f"{mode:12} {per_call[mode] / 1e3:14.1f} k {objects['alive']:12.1f} {objects['collected']:15.1f} "
              f"{objects['pending']:14.1f}")
    span = per_call["bare_span"]
    over = per_call["routed"] - per_call["direct"]
    print(f"\ngenroute overhead (async): {over / 1e3:.1f} k instructions = {over / span:.2f} bare spans")
    print(f"telemetry contract alone:  {per_call['mandated'] / 1e3:.1f} k instructions = "
          f"{per_call['mandated'] / span:.2f} bare spans")
    print(f"genroute's own code:       {(over - per_call['mandated']) / 1e3:.1f} k instructions = "
          f"{(over - per_call['mandated']) / span:.2f} bare spans")
    floor = per_call["floor"] - per_call["direct"] - per_call["mandated"]
    print(f"the floor of its features: {floor / 1e3:.1f} k instructions = {floor / span:.2f} bare spans")
    if "litellm" in per_call:
        lite = per_call["litellm"] - per_call["direct_sync"]
        print(f"litellm overhead (sync):   {lite / 1e3:.1f} k instructions = {lite / over:.1f}x genroute's")


if __name__ == "__main__":
    main()
