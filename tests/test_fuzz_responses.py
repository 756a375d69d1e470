"""Odd but possible provider answers: every entry point answers with an honest cost or raises a genroute error.

Hypothesis builds Gemini response bodies of shapes the API can send (no candidates, a candidate without content,
empty parts, thought-only parts, function calls with odd arguments, unknown or refusing finish reasons, a blocked
prompt, usage counts missing, partial, zero, negative, strings or huge) and streams whose events carry them (ending
with or without a finish reason), plus bodies that are not JSON or not sent as JSON. The loopback server sends them
to the real google-genai client behind a ``prompt_template`` and a ``function_calling`` backend. Whatever arrives,
``generate``/``agenerate``/``stream``/``astream`` either return a result whose usage and cost are non-negative and
finite, its cost what the pricing rule gives for its usage, or raise a ``GenrouteError`` (never a bare
``AttributeError``/``TypeError``/``KeyError``/``ValidationError``, nor one wrapped as a provider refusal); either
way the root span's cost is the result's or the error's.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genroute import GenerateResult, GenrouteError, Router, Usage
from genroute.runtime.pricing import Pricing
from genroute.testing import GeminiTestServer, Reply
from genroute.testing.replies import Response

from .conftest import TEST_KEY, Otel
from .test_fuzz_config import MODES, SETTINGS, _dependency_error, _final

# Fewer examples than the config fuzzing: each sends up to four requests (GENROUTE_FUZZ_EXAMPLES explores further).
EXAMPLES = int(os.environ.get("GENROUTE_FUZZ_EXAMPLES", "80"))

MODEL = "gemini-2.5-flash"


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """Weather for a city."""
    return {"city": city, "unit": unit}


def config(url: str) -> dict[str, Any]:
    engine = {"kind": "gemini", "base_url": url, "api_key": TEST_KEY, "timeout_s": 5,
              "retry": {"attempts": 2, "initial_backoff_s": 0.0, "max_backoff_s": 0.0, "jitter_s": 0.0}}
    return {"engines": {"g": engine},
            "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL},
                         "agent": {"kind": "function_calling", "engine": "g", "model": MODEL,
                                   "tools": ["get_weather"], "max_steps": 3}},
            "policy": {"kind": "static", "backend": "chat"}}


HUGE = 10**15
COUNT = (st.integers(-3, 50) | st.sampled_from([0, -1, HUGE, 2**63, 10**30]) | st.none()
         | st.sampled_from(["12", "many", "", "1e3"]) | st.floats(allow_nan=True, allow_infinity=True))
USAGE_KEYS = ["promptTokenCount", "candidatesTokenCount", "totalTokenCount", "thoughtsTokenCount",
              "cachedContentTokenCount", "toolUsePromptTokenCount"]
DETAILS = st.lists(st.fixed_dictionaries({"modality": st.sampled_from(["AUDIO", "TEXT", "IMAGE", "NEW"]),
                                          "tokenCount": COUNT}), max_size=2)
USAGE = st.dictionaries(st.sampled_from(USAGE_KEYS), COUNT, max_size=4) | st.fixed_dictionaries(
    {"promptTokenCount": COUNT, "promptTokensDetails": DETAILS}, optional={"cacheTokensDetails": DETAILS})
FINISH = st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "MALFORMED_FUNCTION_CALL", "OTHER",
                          "BLOCKLIST", "SPII", "LANGUAGE", "FINISH_REASON_UNSPECIFIED", "NEW_REASON_2027", "", None])
ODD_ARGS = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                   max_size=3), max_leaves=8)
ARGS = (st.none() | st.just({"city": "Paris"}) | st.just({"city": "x" * 100_000}) | st.just({"city": 3})
        | st.just({"city": {"nested": {"deeper": [1, 2]}}}) | st.just({"unit": "kelvin"}) | st.just([1, 2])
        | st.just("Paris") | st.just(7) | ODD_ARGS)
CALL = st.fixed_dictionaries({"name": st.sampled_from(["get_weather", "rm_rf", "", "get_weather" * 20])},
                             optional={"args": ARGS, "id": st.text(max_size=4)})
PART = (st.builds(lambda t: {"text": t}, st.text(max_size=20))
        | st.builds(lambda t: {"text": t, "thought": True}, st.text(max_size=20))
        | st.builds(lambda c: {"functionCall": c}, CALL)
        | st.just({}) | st.just({"thoughtSignature": "c2ln"}))
CONTENT = st.none() | st.fixed_dictionaries({}, optional={"role": st.sampled_from(["model", "user", ""]),
                                                          "parts": st.none() | st.lists(PART, max_size=3)})
CANDIDATE = st.fixed_dictionaries({}, optional={"content": CONTENT, "finishReason": FINISH,
                                                "index": st.integers(0, 2)})
BODY = st.fixed_dictionaries({}, optional={
    "candidates": st.none() | st.lists(CANDIDATE, max_size=2),
    "promptFeedback": st.fixed_dictionaries({}, optional={"blockReason": st.sampled_from(
        ["SAFETY", "OTHER", "PROHIBITED_CONTENT", "NEW_BLOCK", ""])}),
    "usageMetadata": st.none() | USAGE,
    "modelVersion": st.just(MODEL)})
#: A reply: one body, or a stream's events (with or without a finish reason on the last).
REPLY = st.one_of(st.tuples(st.just("body"), BODY), st.tuples(st.just("events"), st.lists(BODY, min_size=1,
                                                                                             max_size=4)),
                  st.tuples(st.just("not json"), st.sampled_from([b"{", b"<html>busy</html>", b"", b"null",
                                                                  b'{"candidates": [}'])),
                  st.tuples(st.just("wrong type"), st.sampled_from(["text/html", "text/plain", "text/event-stream",
                                                                    "application/octet-stream"])))


def _queue(server: GeminiTestServer, reply: tuple[str, Any]) -> None:
    """Queue ``reply`` for the next generate or stream request (the retry, if any, gets the default echo)."""
    kind, value = reply
    if kind in ("body", "events"):
        server.reply(Reply(raw=value))
        return
    path = r".*:(generateContent|streamGenerateContent)"
    if kind == "not json":
        server.reply_json(value, path=path)
        return
    server.reply_json(b'{"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]}',
                      path=path, headers={"Content-Type": value})


def _check_usage(usage: Usage, what: str) -> None:
    for name, count in usage.model_dump().items():
        assert isinstance(count, int) and count >= 0, f"{what}: usage.{name} = {count!r}"


def _check_cost(cost: float, what: str) -> None:
    assert isinstance(cost, float) and math.isfinite(cost) and cost >= 0, f"{what}: cost {cost!r}"


def _root_cost(otel: Otel) -> float:
    roots = [s for s in otel.spans() if s.parent is None and "gen_ai.usage.cost.amount" in (s.attributes or {})]
    assert len(roots) == 1, [s.name for s in otel.spans()]
    return float(roots[0].attributes["gen_ai.usage.cost.amount"])


class Caller:
    """A router for sync calls and one for async calls on a private loop, reused for every example."""

    def __init__(self, url: str, otel: Otel) -> None:
        self.sync = Router.from_config(config(url), tools={"get_weather": get_weather}, **otel.providers)
        self.aio = Router.from_config(config(url), tools={"get_weather": get_weather}, **otel.providers)
        self.loop = asyncio.new_event_loop()

    def __call__(self, mode: str, backend: str) -> GenerateResult:
        kwargs = {"backend": backend, "timeout_s": 10}
        if mode == "generate":
            return self.sync.generate("Weather in Paris?", **kwargs)
        if mode == "stream":
            return _final(list(self.sync.stream("Weather in Paris?", **kwargs)))

        async def run() -> GenerateResult:
            if mode == "agenerate":
                return await self.aio.agenerate("Weather in Paris?", **kwargs)
            return _final([chunk async for chunk in self.aio.astream("Weather in Paris?", **kwargs)])
        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.sync.close()
        self.loop.run_until_complete(self.aio.aclose())
        self.aio.close()
        self.loop.close()


@pytest.fixture
def caller(gemini_server: GeminiTestServer, otel: Otel) -> Any:
    made = Caller(gemini_server.base_url, otel)
    yield made
    made.close()


def test_any_provider_answer_gives_an_honest_cost_or_a_genroute_error(gemini_server, otel, caller):
    prices = Pricing()
    seen = {"answered": 0, "failed": 0}

    @settings(SETTINGS, max_examples=EXAMPLES)
    @given(replies=st.lists(REPLY, min_size=1, max_size=2), mode=st.sampled_from(MODES),
           backend=st.sampled_from(["chat", "agent"]))
    def check(replies: list[tuple[str, Any]], mode: str, backend: str) -> None:
        gemini_server.clear()
        otel.exporter.clear()
        for reply in replies:  # a second one answers the retry (or the tool loop's next turn)
            _queue(gemini_server, reply)
        what = f"{mode} on {backend} answered {replies!r}"[:2000]
        try:
            result = caller(mode, backend)
        except GenrouteError as exc:
            assert _dependency_error(exc) is None, f"{what}: a dependency's error posed as the provider's: {exc!r}"
            _check_usage(exc.usage, what)
            _check_cost(exc.cost_usd, what)
            assert _root_cost(otel) == pytest.approx(exc.cost_usd), what
            seen["failed"] += 1
            return
        except Exception as exc:  # noqa: BLE001 - the point: anything untyped fails the test
            raise AssertionError(f"{what}: untyped failure {type(exc).__name__}: {exc}") from exc
        _check_usage(result.usage, what)
        _check_cost(result.cost_usd, what)
        if not result.cost_estimated:
            assert result.cost_usd == pytest.approx(prices.cost(MODEL, result.usage)), what
        assert _root_cost(otel) == pytest.approx(result.cost_usd), what
        for call in result.tool_calls:  # arguments that fail the tool's model never reach it (docs/configuration.md:
            # the model is told what was wrong, the call is listed as invalid_args)
            if call.outcome == "ok":
                assert isinstance(call.args.get("city"), str) and call.result == get_weather(**call.args), what
            elif call.name == "get_weather" and not isinstance(call.args.get("city"), str):
                assert call.outcome == "invalid_args" and call.error, what
        seen["answered"] += 1

    check()
    assert seen["answered"] and seen["failed"], seen
