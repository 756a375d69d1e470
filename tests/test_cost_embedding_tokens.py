"""Embedding token counts: reported by Vertex AI and used as reported; estimated for the Gemini Developer API.

The loopback server answers Vertex AI embedding paths with each text's token count (``statistics.token_count``,
or ``usageMetadata`` for a single ``embedContent``) as ``srv.embed_tokens`` counts them; here that is a rule
unlike genroute's four-characters-a-token estimate, so a test can tell a reported count from an estimate. The
Developer API's ``batchEmbedContents`` reports none. Everything goes through the real google-genai client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials

from genroute import BackendRejected, Router
from genroute.engines.base import Embeddings
from genroute.engines.gemini import GeminiEngine
from genroute.knowledge.embedders import GeminiEmbedder
from genroute.runtime.billing import Charges, charging, estimate_tokens
from genroute.runtime.pricing import DEFAULT_PRICES
from genroute.testing import Fault, GeminiTestServer, Reply

from .conftest import TEST_KEY, Otel

EMBED = DEFAULT_PRICES["gemini-embedding-001"].input / 1e6
TEXTS = ["rye sourdough bakes at four", "the glacier covers eight percent of Iceland"]
FAST = {"attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02, "jitter_s": 0.0}
#: The Vertex AI project the tests' engines name (their requests' URLs carry it).
PROJECT = "proj"


def counted(text: str) -> int:
    """The server's own count: three tokens a word (never what the estimate gives for these texts)."""
    return 3 * len(text.split())


@pytest.fixture
def srv(gemini_server: GeminiTestServer) -> GeminiTestServer:
    gemini_server.embed_tokens = counted
    return gemini_server


def _vertex(srv: GeminiTestServer, **config: Any) -> GeminiEngine:
    return GeminiEngine("vx", {"vertex": {"project": PROJECT, "location": "europe-west4"}, "base_url": srv.base_url,
                               "retry": FAST, **config}, credentials=Credentials(token="test"))


@pytest.fixture
async def vertex(srv: GeminiTestServer) -> AsyncIterator[GeminiEngine]:
    engine = _vertex(srv)
    yield engine
    await engine.aclose()


@pytest.fixture
async def developer(srv: GeminiTestServer) -> AsyncIterator[GeminiEngine]:
    engine = GeminiEngine("dev", {"api_key": TEST_KEY, "base_url": srv.base_url, "retry": FAST})
    yield engine
    await engine.aclose()


def test_the_server_counts_differently_from_the_estimate() -> None:
    assert all(counted(t) != estimate_tokens(t) for t in TEXTS)


@pytest.mark.parametrize(("model", "texts", "action"), [
    ("gemini-embedding-001", TEXTS, "batchEmbedContents"),      # several texts: statistics per embedding
    ("gemini-embedding-001", TEXTS[:1], "embedContent"),         # one text: usageMetadata, as statistics
    ("text-embedding-005", TEXTS, "predict"),                    # older models: predict with statistics
])
async def test_vertex_reports_tokens_and_they_are_used(srv: GeminiTestServer, vertex: GeminiEngine, model: str,
                                                       texts: list[str], action: str) -> None:
    vectors = await vertex.embed(model, texts, output_dimensionality=8)
    (request,) = srv.requests
    # Vertex AI's URL names the project: .../projects/{project}/locations/... (a URL path, not a file path)
    assert request.action == action and f"/projects/{PROJECT}/" in request.path
    assert isinstance(vectors, Embeddings) and len(vectors) == len(texts) and len(vectors[0]) == 8
    assert vectors.input_tokens == sum(counted(t) for t in texts) and not vectors.estimated


async def test_the_developer_api_reports_none_so_they_are_estimated(srv: GeminiTestServer,
                                                                    developer: GeminiEngine) -> None:
    vectors = await developer.embed("gemini-embedding-001", TEXTS, output_dimensionality=8)
    assert [r.action for r in srv.requests] == ["batchEmbedContents"]
    assert vectors.input_tokens == sum(estimate_tokens(t) for t in TEXTS) and vectors.estimated


async def test_vertex_counts_price_the_span_and_the_charge_unestimated(srv: GeminiTestServer, vertex: GeminiEngine,
                                                                       otel: Otel) -> None:
    embedder = GeminiEmbedder(vertex, dimension=8)
    with charging(Charges()) as charges:
        await embedder.aembed(TEXTS, tracer=otel.tracer_provider.get_tracer("t"))
    cost = sum(counted(t) for t in TEXTS) * EMBED
    assert charges.cost_usd == pytest.approx(cost) and not charges.estimated
    (span,) = otel.spans("embeddings")
    assert span.attributes["gen_ai.usage.input_tokens"] == sum(counted(t) for t in TEXTS)
    assert span.attributes["gen_ai.usage.cost.amount"] == pytest.approx(cost)
    assert "genroute.cost.estimated" not in span.attributes


async def test_a_lost_attempt_is_billed_estimated_beside_the_counted_answer(srv: GeminiTestServer,
                                                                            vertex: GeminiEngine) -> None:
    srv.fault(Fault.reset())  # the request went out and the connection broke: processed, no answer
    embedder = GeminiEmbedder(vertex, dimension=8)
    with charging(Charges()) as charges:
        await embedder.aembed(TEXTS)
    assert len(srv.requests) == 2  # the reset, then the retry
    lost = sum(estimate_tokens(t) for t in TEXTS)
    assert charges.cost_usd == pytest.approx((lost + sum(counted(t) for t in TEXTS)) * EMBED)
    assert charges.estimated  # part of it is an estimate


async def test_batches_answered_before_a_failure_are_billed(srv: GeminiTestServer) -> None:
    engine = _vertex(srv, embed_batch_size=1)
    try:
        srv.reply_json({"embedding": {"values": [0.5] * 8}, "usageMetadata": {"promptTokenCount": 11}},
                       path=r".*:embedContent")  # the first text's answer, then a refusal of the second
        srv.reply_json({"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}},
                       path=r".*:embedContent", status=400)
        with charging(Charges()) as charges, pytest.raises(BackendRejected):
            await GeminiEmbedder(engine, dimension=8).aembed(TEXTS)
    finally:
        await engine.aclose()
    assert len(srv.requests) == 2
    # The first text was answered (11 tokens, as reported) and billed; the second was refused: not billed.
    assert charges.cost_usd == pytest.approx(11 * EMBED) and not charges.estimated


async def test_a_router_on_vertex_embeddings_costs_requests_as_reported(srv: GeminiTestServer, tmp_path: Path,
                                                                        otel: Otel) -> None:
    srv.default_reply = lambda request: Reply(parts=({"text": "ok"},), usage=(100, 10))
    vx = {"kind": "gemini", "vertex": {"project": PROJECT, "location": "europe-west4"}, "base_url": srv.base_url}
    config = {"engines": {"vx": vx},
              "knowledge": {"path": str(tmp_path / "chroma"), "embedder": {"kind": "gemini", "engine": "vx",
                                                                           "dimension": 16}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "vx", "model": "gemini-2.5-flash"},
                           "other": {"kind": "prompt_template", "engine": "vx", "model": "gemini-2.5-flash"}},
              "policy": {"kind": "semantic", "routes": {"other": ["weather in Paris"]}, "default": "chat"}}
    router = await Router.acreate(config, engine_options={"vx": {"credentials": Credentials(token="test")}},
                                  **otel.providers)
    try:
        question = "how do I bake rye bread?"
        result = await router.agenerate(question)
    finally:
        await router.aclose()
    flash = DEFAULT_PRICES["gemini-2.5-flash"]
    answer = (100 * flash.input + 10 * flash.output) / 1e6
    assert result.cost_usd == pytest.approx(answer + counted(question) * EMBED)
    assert not result.cost_estimated  # every figure was reported by the provider


async def test_billable_characters_without_token_counts_are_estimated_from_them(srv: GeminiTestServer,
                                                                                vertex: GeminiEngine) -> None:
    # An answer with no token counts but the characters Vertex AI bills: those, at four characters a token.
    srv.reply_json({"predictions": [{"embeddings": {"values": [0.1] * 8}} for _ in TEXTS],
                    "metadata": {"billableCharacterCount": 41}}, path=r".*:predict")
    vectors = await vertex.embed("text-embedding-005", TEXTS, output_dimensionality=8)
    assert vectors.input_tokens == estimate_tokens(41) == 11 and vectors.estimated


class PlainListEngine(GeminiEngine):
    """An engine plugin written before ``Embeddings``: its ``embed`` answers a plain list of vectors."""

    async def embed(self, model: str, texts: list[str], **options: Any) -> list[list[float]]:  # type: ignore[override]
        return list(await super().embed(model, texts, **options))


async def test_an_engine_that_returns_a_plain_list_is_priced_at_an_estimate(srv: GeminiTestServer) -> None:
    engine = PlainListEngine("vx", {"vertex": {"project": PROJECT, "location": "europe-west4"},
                                    "base_url": srv.base_url}, credentials=Credentials(token="test"))
    try:
        with charging(Charges()) as charges:
            await GeminiEmbedder(engine, dimension=8).aembed(TEXTS)
    finally:
        await engine.aclose()
    assert charges.cost_usd == pytest.approx(sum(estimate_tokens(t) for t in TEXTS) * EMBED) and charges.estimated


@pytest.mark.parametrize(("path", "body"), [
    (r".*:predict", {"predictions": [{"embeddings": {"values": [0.1] * 8, "statistics": {"token_count": -50}}}
                                     for _ in TEXTS]}),
    (r".*:predict", {"predictions": [{"embeddings": {"values": [0.1] * 8}} for _ in TEXTS],
                     "metadata": {"billableCharacterCount": -41}}),
], ids=["statistics", "billable_characters"])
async def test_a_negative_embedding_count_is_estimated_not_refunded(srv: GeminiTestServer, vertex: GeminiEngine,
                                                                    path: str, body: dict[str, Any]) -> None:
    # Found probing what tests/test_fuzz_responses.py found for answers: a count below zero was billed as negative
    # tokens (a refund); it is now estimated as a missing count.
    srv.reply_json(body, path=path)
    vectors = await vertex.embed("text-embedding-005", TEXTS, output_dimensionality=8)
    assert vectors.input_tokens == sum(estimate_tokens(t) for t in TEXTS) and vectors.estimated
