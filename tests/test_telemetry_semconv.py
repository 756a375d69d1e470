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
