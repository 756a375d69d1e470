"""The GenAI semantic conventions' finer points, on the real OTel SDK with in-memory exporters: no invented token
counts, content capture in the conventions' message schema, request attributes, every embedder and tool measured."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.knowledge.embedders import LocalEmbedder
from genroute.runtime.telemetry import Telemetry
from genroute.testing import Fault, GeminiTestServer

from .conftest import Otel, gemini_config


def _points(otel: Otel, name: str, operation: str) -> list[Any]:
    metric = otel.metrics().get(name)
    points = metric.data.data_points if metric is not None else []
    return [p for p in points if p.attributes["gen_ai.operation.name"] == operation]


def _captured(span: Any, attribute: str) -> Any:
    return json.loads(span.attributes[attribute])


def test_an_answer_without_usage_reports_no_token_counts(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_json({"candidates": [{"content": {"role": "model", "parts": [{"text": "word " * 40}]},
                                              "finishReason": "STOP", "index": 0}],
                              "modelVersion": "gemini-2.5-flash"})  # no usageMetadata
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        result = router.generate("hello")
    assert result.cost_estimated and result.text == "word " * 40
    (call,) = otel.spans("generate_content")
    assert call.attributes["genroute.cost.estimated"] is True and call.attributes["gen_ai.usage.cost.amount"] > 0
    assert not [k for k in call.attributes if k.startswith("gen_ai.usage.") and k.endswith("_tokens")]
    assert _points(otel, "gen_ai.client.token.usage", "generate_content") == []
    assert len(_points(otel, "gen_ai.client.operation.duration", "generate_content")) == 1
    (cost,) = _points(otel, "genroute.cost", "generate_content")
    assert cost.attributes["genroute.cost.estimated"] is True


def test_an_answer_with_usage_reports_its_counts(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_text("counted", usage=(11, 4))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        router.generate("hello")
    (call,) = otel.spans("generate_content")
    assert call.attributes["gen_ai.usage.input_tokens"] == 11 and "genroute.cost.estimated" not in call.attributes
    tokens = {p.attributes["gen_ai.token.type"]: p.sum for p in _points(otel, "gen_ai.client.token.usage",
                                                                          "generate_content")}
    assert tokens == {"input": 11, "output": 4}


def test_the_local_embedder_is_measured_like_the_gemini_one(otel: Otel) -> None:
    embedder = LocalEmbedder(tracer_provider=otel.tracer_provider)
    embedder.telemetry = Telemetry(**otel.providers)
    embedder.embed(["A man is eating food.", "Paris is the capital of France."])
    (span,) = otel.spans("embeddings")
    assert span.kind.name == "CLIENT"
    assert span.attributes["gen_ai.embeddings.dimension.count"] == 384
    (duration,) = _points(otel, "gen_ai.client.operation.duration", "embeddings")
    assert duration.count == 1 and duration.attributes["gen_ai.provider.name"] == "genroute.local"
    (tokens,) = _points(otel, "gen_ai.client.token.usage", "embeddings")
    # The tokenizer's own count ([CLS] and [SEP] included), the one on the span: exact, so reported.
    assert tokens.sum == span.attributes["gen_ai.usage.input_tokens"] == 8 + 9
    assert tokens.attributes["gen_ai.token.type"] == "input"
    assert _points(otel, "genroute.cost", "embeddings") == []  # free


def _ask_rag(server: GeminiTestServer, otel: Otel, tmp_path: Path, *, capture: bool = False) -> None:
    """Ingest one document with the offline embedder (the default), then ask a RAG backend about it."""
    from genroute.knowledge.ingest import aingest

    doc = tmp_path / "kettle.md"
    doc.write_text("# Kettle\n\nThe Nimbus Kettle has a warranty of 3 years.\n")
    config = gemini_config(server, kind="rag", collection="kettle", k=1)
    config["knowledge"] = {"path": str(tmp_path / "chroma")}
    config["telemetry"] = {"capture_content": capture}
    with Router.from_config(config, **otel.providers) as router:
        asyncio.run(aingest(router.resources.knowledge, [str(doc)], collection="kettle"))
        server.reply_text("3 years [1]", usage=(30, 3))
        router.generate("How long is the warranty?")


def test_a_routers_local_embedder_records_on_its_meter(gemini_server: GeminiTestServer, otel: Otel,
                                                       tmp_path: Path) -> None:
    _ask_rag(gemini_server, otel, tmp_path)
    durations = _points(otel, "gen_ai.client.operation.duration", "embeddings")
    assert sum(p.count for p in durations) == 2  # the ingest and the request's query
    assert {p.attributes["gen_ai.request.model"] for p in durations} == {"all-MiniLM-L6-v2-int8"}


@pytest.mark.parametrize("capture", [False, True])
def test_captured_messages_are_what_the_model_was_sent_in_the_conventions_schema(
        gemini_server: GeminiTestServer, otel: Otel, capture: bool) -> None:
    gemini_server.reply_text("SECRET_A Paris.", usage=(10, 3))
    config = gemini_config(gemini_server, system="SECRET_SYS be brief", template="Q: {{ input }}")
    config["telemetry"] = {"capture_content": capture}
    with Router.from_config(config, **otel.providers) as router:
        router.generate("SECRET_Q capital?")
    (root,) = otel.spans("genroute.generate")
    (call,) = otel.spans("generate_content")
    assert "gen_ai.input.messages" not in root.attributes  # the inference span's, as the conventions put it
    names = ("gen_ai.input.messages", "gen_ai.system_instructions", "gen_ai.output.messages")
    if not capture:
        assert not set(names) & set(call.attributes)
        return
    assert _captured(call, "gen_ai.input.messages") == [
        {"role": "user", "parts": [{"type": "text", "content": "Q: SECRET_Q capital?"}]}]
    assert _captured(call, "gen_ai.system_instructions") == [{"type": "text", "content": "SECRET_SYS be brief"}]
    assert _captured(call, "gen_ai.output.messages") == [
        {"role": "assistant", "parts": [{"type": "text", "content": "SECRET_A Paris."}], "finish_reason": "stop"}]


def test_captured_tool_calls_and_results(gemini_server: GeminiTestServer, otel: Otel) -> None:
    def get_weather(city: str) -> dict:
        """Current weather for a city."""
        return {"temp": 21}

    gemini_server.reply_function_call("get_weather", {"city": "Paris"}, call_id="c1", usage=(20, 5))
    gemini_server.reply_text("21 degrees.", usage=(40, 8))
    config = gemini_config(gemini_server, kind="function_calling", tools=["get_weather"])
    config["telemetry"] = {"capture_content": True}
    with Router.from_config(config, tools={"get_weather": get_weather}, **otel.providers) as router:
        router.generate("Weather in Paris?")
    first, second = sorted(otel.spans("generate_content"), key=lambda s: s.start_time)
    assert _captured(first, "gen_ai.output.messages") == [{"role": "assistant", "finish_reason": "stop", "parts": [
        {"type": "tool_call", "id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]}]
    sent = _captured(second, "gen_ai.input.messages")
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    (response,) = sent[2]["parts"]
    assert response["type"] == "tool_call_response" and response["id"] == "c1"
    assert response["response"] == {"output": {"temp": 21}}


def test_a_captured_stream_answer_is_whole(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_text("one two three four", usage=(6, 4), chunks=3)
    config = gemini_config(gemini_server)
    config["telemetry"] = {"capture_content": True}
    with Router.from_config(config, **otel.providers) as router:
        assert "".join(c.text for c in router.stream("count")) == "one two three four"
    (call,) = otel.spans("generate_content")
    (message,) = _captured(call, "gen_ai.output.messages")
    assert message["parts"] == [{"type": "text", "content": "one two three four"}]
    assert message["finish_reason"] == "stop"


def test_a_failed_calls_input_is_captured(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.fault(Fault.status(400))
    config = gemini_config(gemini_server)
    config["telemetry"] = {"capture_content": True}
    with Router.from_config(config, **otel.providers) as router, pytest.raises(Exception):
        router.generate("SECRET_Q")
    (call,) = otel.spans("generate_content")
    assert _captured(call, "gen_ai.input.messages")[0]["parts"][0]["content"] == "SECRET_Q"
    assert "gen_ai.output.messages" not in call.attributes


def test_rag_context_is_in_the_captured_input(gemini_server: GeminiTestServer, otel: Otel, tmp_path: Path) -> None:
    _ask_rag(gemini_server, otel, tmp_path, capture=True)
    (call,) = otel.spans("generate_content")
    sent = call.attributes["gen_ai.input.messages"] + call.attributes.get("gen_ai.system_instructions", "")
    assert "warranty of 3 years" in sent and "How long is the warranty?" in sent


def test_request_settings_are_on_the_inference_span(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_text('{"city": "Paris"}', usage=(10, 5))
    generation = {"seed": 7, "stop_sequences": ["END"], "temperature": 0.2,
                  "response_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with Router.from_config(gemini_config(gemini_server, generation=generation), **otel.providers) as router:
        router.generate("Capital of France?")
    (call,) = otel.spans("generate_content")
    a = call.attributes
    assert a["gen_ai.request.seed"] == 7 and list(a["gen_ai.request.stop_sequences"]) == ["END"]
    assert a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.output.type"] == "json"
    # Not gen_ai.response.id (recommended): ~300 opcodes a request in the SDK's attribute handling (issue 15).
    assert "gen_ai.response.id" not in a


def test_a_plain_request_names_no_settings_it_did_not_make(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_text("hi", usage=(1, 1))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        router.generate("hello")
    (call,) = otel.spans("generate_content")
    assert not [k for k in call.attributes if k.startswith("gen_ai.request.") and k != "gen_ai.request.model"]
    assert "gen_ai.output.type" not in call.attributes


def test_tool_durations_name_the_provider(gemini_server: GeminiTestServer, otel: Otel) -> None:
    def boom() -> str:
        """Always fails."""
        raise RuntimeError("no")

    gemini_server.reply_function_call("boom", {}, usage=(5, 1))
    gemini_server.reply_text("sorry", usage=(8, 1))
    config = gemini_config(gemini_server, kind="function_calling", tools=["boom"])
    with Router.from_config(config, tools={"boom": boom}, **otel.providers) as router:
        router.generate("go")
    (point,) = _points(otel, "gen_ai.client.operation.duration", "execute_tool")
    assert point.attributes["gen_ai.provider.name"] == "gcp.gemini"
    assert point.attributes["error.type"] == "RuntimeError"


def test_an_embedding_error_is_its_class_name_only(gemini_server: GeminiTestServer, otel: Otel) -> None:
    from genroute.engines.gemini import GeminiEngine
    from genroute.errors import BackendRejected
    from genroute.knowledge.embedders import GeminiEmbedder

    engine = GeminiEngine("g", {"base_url": gemini_server.base_url, "api_key": "test"})
    embedder = GeminiEmbedder(engine, dimension=8, tracer_provider=otel.tracer_provider)
    gemini_server.fault(Fault.status(400))
    with pytest.raises(BackendRejected):
        embedder.embed(["some text"])
    (span,) = otel.spans("embeddings")
    assert span.status.status_code.name == "ERROR" and span.status.description == "BackendRejected"
    assert span.attributes["error.type"] == "BackendRejected"
    assert not span.events  # no exception event: its stack and the provider's message stay out of traces
