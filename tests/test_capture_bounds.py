"""Captured content (``telemetry.capture_content``) is bounded per span attribute by ``capture_max_chars``."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genroute.errors import ConfigError, UsageError
from genroute.knowledge.store import Hit
from genroute.knowledge.telemetry import record_hits
from genroute.router.router import Router
from genroute.runtime.telemetry import CAPTURE_MAX_CHARS
from genroute.testing import GeminiTestServer

from .conftest import Otel, gemini_config

BIG = 200_000


def huge(n: int) -> str:
    """A tool whose result is ``BIG`` characters."""
    return "x" * BIG


def marker(cut: int) -> str:
    return f"…[genroute: {cut} more chars cut]"


async def captured_run(server: GeminiTestServer, otel: Otel, **telemetry: Any) -> None:
    server.reply_function_call("huge", {"n": 1})
    server.reply_text("y" * BIG)
    config = gemini_config(server, kind="function_calling", tools=["huge"])
    config["telemetry"] = {"capture_content": True, **telemetry}
    async with Router.from_config(config, tools={"huge": huge}, **otel.providers) as router:
        await router.agenerate("Go.")


async def test_a_huge_tool_result_is_cut_at_the_default(gemini_server: GeminiTestServer, otel: Otel) -> None:
    # A tool's result went onto its span whole, as big as it was (the SDK sets no value limit by default).
    await captured_run(gemini_server, otel)
    (tool,) = otel.spans("execute_tool")
    result = tool.attributes["gen_ai.tool.call.result"]
    assert result.startswith("\"xxx") and len(result) < CAPTURE_MAX_CHARS + 100
    assert result.endswith(marker(BIG + 2 - CAPTURE_MAX_CHARS))  # the JSON string's quotes count


async def test_capture_max_chars_bounds_every_captured_text(gemini_server: GeminiTestServer, otel: Otel) -> None:
    await captured_run(gemini_server, otel, capture_max_chars=100)
    (tool,) = otel.spans("execute_tool")
    assert tool.attributes["gen_ai.tool.call.arguments"] == '{"n": 1}'  # short texts are kept whole
    assert tool.attributes["gen_ai.tool.call.result"] == '"' + "x" * 99 + marker(BIG + 2 - 100)
    first, second = otel.spans("generate_content")
    assert "…[genroute:" not in first.attributes["gen_ai.input.messages"]
    for attribute in ("gen_ai.input.messages", "gen_ai.output.messages"):  # the tool result, the long answer
        text = second.attributes[attribute]
        assert len(text) <= 100 + len(marker(BIG)) and "more chars cut]" in text


def test_a_retrieval_query_is_cut() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("retrieval") as span:
        record_hits(span, [Hit(id="d1", text="t", metadata={}, distance=0.5)], capture=True, query="q" * 50, max_chars=10)
    (finished,) = exporter.get_finished_spans()
    assert finished.attributes["gen_ai.retrieval.query.text"] == "q" * 10 + marker(40)


@pytest.mark.parametrize("bad", [0, -1, True, "many"])
def test_a_bad_capture_max_chars_is_refused(gemini_server: GeminiTestServer, bad: Any) -> None:
    config = gemini_config(gemini_server)
    config["telemetry"] = {"capture_content": True, "capture_max_chars": bad}
    with pytest.raises(ConfigError) as caught:
        Router.from_config(config)
    assert caught.value.field == "telemetry.capture_max_chars"


def test_a_bad_capture_max_chars_in_code_is_a_usage_error(gemini_server: GeminiTestServer) -> None:
    with pytest.raises(UsageError) as caught:
        Router.from_config(gemini_config(gemini_server), capture_max_chars="10")
    assert caught.value.field == "capture_max_chars"
