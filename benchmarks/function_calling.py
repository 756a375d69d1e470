"""Cost of genroute's tool loop on the loopback server, beside google-genai doing the same loop.

    python benchmarks/function_calling.py [--n 100] [--rounds 3]

One request = the model asks for ``get_weather``, the tool runs, the model answers (two HTTP calls).
Contenders, interleaved per round:

- ``genai manual``: google-genai async client, the loop written by hand (automatic calling off), on the kind of
  aiohttp session genroute's engine gives the SDK (``raw_sdk``), as is ``genai AFC``;
- ``genai AFC``: google-genai's automatic function calling with the Python function as the tool;
- ``genroute``: ``router.agenerate`` through the function-calling backend, OTel SDK recording every span
  (root, rung, 2 x generate_content, execute_tool).

Also: four 50 ms tools asked for in one turn (concurrent in genroute: ~50 ms, not ~200 ms), and the
micro-costs of building a tool schema and validating arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import raw_sdk
from google.genai import types
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from genroute import Router
from genroute.testing import GeminiTestServer
from genroute.tools import tool_from_callable

MODEL = "gemini-2.5-flash"


class _Discard(SpanExporter):
    def export(self, spans):  # noqa: ANN001
        return SpanExportResult.SUCCESS


def get_weather(city: str, unit: str = "celsius") -> dict:
    """Current weather for a city."""
    return {"city": city, "temp": 21, "unit": unit}


async def _median_ms(fn: Callable[[], Awaitable[object]], n: int, before: Callable[[], None]) -> float:
    samples = []
    for _ in range(n):
        before()
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with GeminiTestServer() as server:
        os.environ["GEMINI_API_KEY"] = "bench-key"
        client, session = raw_sdk.client(server.base_url)  # on the kind of session the engine uses
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_Discard()))
        config = {
            "engines": {"gemini": {"kind": "gemini", "base_url": server.base_url}},
            "backends": {"fc": {"kind": "function_calling", "engine": "gemini", "model": MODEL,
                                "tools": ["get_weather", "slow_a", "slow_b", "slow_c", "slow_d"]}},
        }

        async def slow(n: int) -> int:
            """Takes 50 ms."""
            await asyncio.sleep(0.05)
            return n

        tools = {"get_weather": get_weather, **{f"slow_{c}": slow for c in "abcd"}}
        router = Router.from_config(config, tools=tools, tracer_provider=provider)
        decl = tool_from_callable(get_weather).declaration()
        manual_cfg = types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[decl])],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
        afc_cfg = types.GenerateContentConfig(tools=[get_weather])

        def script() -> None:
            server.reply_function_call("get_weather", {"city": "Paris"}, usage=(20, 5))
            server.reply_text("21 degrees in Paris.", usage=(40, 6))

        async def manual() -> None:
            contents: list[types.Content] = [types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])]
            first = await client.aio.models.generate_content(model=MODEL, contents=contents, config=manual_cfg)
            call = first.function_calls[0]
            result = get_weather(**call.args)
            contents += [first.candidates[0].content, types.Content(role="user", parts=[
                types.Part.from_function_response(name=call.name, response={"output": result})])]
            await client.aio.models.generate_content(model=MODEL, contents=contents, config=manual_cfg)

        async def afc() -> None:
            await client.aio.models.generate_content(model=MODEL, contents="Weather in Paris?", config=afc_cfg)

        async def via_router() -> None:
            await router.agenerate("Weather in Paris?")

        contenders = {"genai manual": manual, "genai AFC": afc, "genroute": via_router}
        for fn in contenders.values():  # warm up connections and imports
            script()
            await fn()
        results: dict[str, list[float]] = {name: [] for name in contenders}
        calls: dict[str, int] = dict.fromkeys(contenders, 0)
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                before = len(server.requests)
                results[name].append(await _median_ms(fn, args.n, script))
                calls[name] += len(server.requests) - before
        assert not server._replies, "a contender left scripted replies unused"  # every loop made both calls
        print(f"tool loop (2 model calls + 1 tool), median of {args.rounds} rounds x {args.n} requests:")
        base = statistics.median(results["genai manual"])
        for name, values in results.items():
            med = statistics.median(values)
            per = calls[name] / (args.rounds * args.n)
            print(f"  {name:13s} {med:7.2f} ms/request   ({med - base:+.2f} ms vs genai manual; "
                  f"{per:.1f} HTTP calls/request)")

        calls = [{"functionCall": {"name": f"slow_{c}", "args": {"n": i}}} for i, c in enumerate("abcd")]

        def script_parallel() -> None:
            server.reply_parts(calls)
            server.reply_text("done")

        parallel = await _median_ms(via_router, 20, script_parallel)
        print(f"four 50 ms tools in one turn through genroute: {parallel:.1f} ms/request "
              "(sequential would be >= 200 ms of tool time)")
        await router.aclose()
        await client.aio.aclose()
        await session.close()

    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        tool = tool_from_callable(get_weather)
    build = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n * 5):
        tool.validate({"city": "Paris", "unit": "fahrenheit"})
    validate = (time.perf_counter() - start) / (n * 5) * 1e6
    print(f"tool_from_callable: {build:.0f} us per tool (once, at router build); validate: {validate:.1f} us per call")


if __name__ == "__main__":
    asyncio.run(main())
