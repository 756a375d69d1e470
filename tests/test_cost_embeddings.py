"""Gemini embedding calls are costed: in a request (retrieval, example selection, semantic routing), in ingest.

Everything runs over the loopback Gemini server and a real embedded Chroma. The Gemini API's
``batchEmbedContents`` reports no token counts, so an embedding is priced at its estimated input tokens (four
characters a token) at ``gemini-embedding-001``'s input price, and the cost is marked estimated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genroute import ConfigError, GenrouteError, Router
from genroute.knowledge import aingest, aload_examples
from genroute.runtime.billing import estimate_tokens
from genroute.runtime.pricing import DEFAULT_PRICES
from genroute.testing import Fault, GeminiTestServer, Reply

from .conftest import TEST_KEY, Otel, budget_usage

EMBED = DEFAULT_PRICES["gemini-embedding-001"].input / 1e6  # USD per input token
FLASH_IN, FLASH_OUT = (DEFAULT_PRICES["gemini-2.5-flash"].input / 1e6, DEFAULT_PRICES["gemini-2.5-flash"].output / 1e6)
USAGE = (100, 10)  # what the loopback server reports for every answer
ANSWER = USAGE[0] * FLASH_IN + USAGE[1] * FLASH_OUT
DOCS = {"bakery.txt": "Marta's bakery in Porto bakes rye sourdough every morning at four o'clock.",
        "glacier.txt": "The Vatnajokull glacier covers about eight percent of Iceland."}


def _config(server: GeminiTestServer, tmp_path: Path, **sections: Any) -> dict[str, Any]:
    server.default_reply = lambda request: Reply(parts=({"text": "ok [1]"},), usage=USAGE)
    flash = {"engine": "g", "model": "gemini-2.5-flash"}
    return {"engines": {"g": {"kind": "gemini", "base_url": server.base_url, "api_key": TEST_KEY}},
            "knowledge": {"path": str(tmp_path / "chroma"), "embedder": {"kind": "gemini", "engine": "g",
                                                                         "dimension": 64}},
            "backends": {"rag": {"kind": "rag", "collection": "docs", "max_distance": None, **flash},
                         "icl": {"kind": "icl", "collection": "shots", "selector": "knn", "k": 2, **flash},
                         "chat": {"kind": "prompt_template", **flash}},
            "policy": {"kind": "static", "backend": "rag"}, **sections}


def _embedded(server: GeminiTestServer) -> list[str]:
    """Every text the server was asked to embed, in order."""
    texts = []
    for request in server.requests:
        if request.action == "batchEmbedContents":
            body = request.body
            texts += [part["text"] for r in body["requests"] for part in r["content"]["parts"]]
    return texts


async def _fill(router: Router, tmp_path: Path) -> tuple[Any, Any]:
    store = router.resources.knowledge
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    examples = tmp_path / "shots.jsonl"
    examples.write_text("".join(json.dumps({"input": f"is {w} good?", "output": w}) + "\n"
                                for w in ("rye", "spelt", "oat")), encoding="utf-8")
    return (await aingest(store, [docs], collection="docs", chunk_tokens=64, overlap=8),
            await aload_examples(store, [examples], collection="shots"))


async def test_ingest_reports_what_its_embeddings_cost(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    router = Router.from_config(_config(gemini_server, tmp_path))
    try:
        docs, shots = await _fill(router, tmp_path)
        texts = _embedded(gemini_server)
        again, _ = await aingest(router.resources.knowledge, [tmp_path / "docs"], collection="docs",
                                 chunk_tokens=64, overlap=8), None
    finally:
        await router.aclose()
    assert len(texts) == 2 + 3  # two chunks, three examples
    assert docs.cost_usd == pytest.approx(sum(estimate_tokens(t) for t in texts[:2]) * EMBED)
    assert shots.cost_usd == pytest.approx(sum(estimate_tokens(t) for t in texts[2:]) * EMBED)
    assert docs.cost_usd > 0 and docs.cost_estimated and shots.cost_estimated
    assert again.added == 0 and again.cost_usd == 0.0 and not again.cost_estimated  # nothing new: nothing embedded


async def test_an_ingest_that_fails_part_way_says_what_its_stored_batches_cost(gemini_server: GeminiTestServer,
                                                                                 tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("\n\n".join(
        f"Paragraph {i}. " + " ".join(f"w{i}_{j}" for j in range(120)) for i in range(12)))
    router = Router.from_config(_config(gemini_server, tmp_path))
    try:
        with pytest.raises(GenrouteError) as err:  # the embedding API refuses the second batch
            await aingest(router.resources.knowledge, [tmp_path / "doc.txt"], collection="docs", batch_size=4,
                          on_batch=lambda b, n: gemini_server.fault(Fault.status(400)) if b == 1 else None)
        stored = await router.resources.knowledge.count("docs", kind="documents")
    finally:
        await router.aclose()
    first = _embedded(gemini_server)[:4]
    assert stored == 4  # whole batches stay: a re-run adds only what is missing (docs/configuration.md, `rag`)
    assert err.value.cost_usd == pytest.approx(sum(estimate_tokens(t) for t in first) * EMBED)
    assert err.value.cost_estimated


async def test_an_example_load_that_fails_part_way_says_what_its_stored_batches_cost(
        gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    # It said 0 (and not estimated), though the first batch was embedded, paid for and stored.
    examples = tmp_path / "shots.jsonl"
    examples.write_text("".join(json.dumps({"input": f"question {i}: " + "word " * 30, "output": str(i)}) + "\n"
                                for i in range(8)), encoding="utf-8")
    router = Router.from_config(_config(gemini_server, tmp_path))
    try:
        with pytest.raises(GenrouteError) as err:  # the embedding API refuses the second batch
            await aload_examples(router.resources.knowledge, [examples], collection="shots", batch_size=4,
                                 on_batch=lambda b, n: gemini_server.fault(Fault.status(400)) if b == 1 else None)
        stored = await router.resources.knowledge.count("shots", kind="examples")
    finally:
        await router.aclose()
    first = _embedded(gemini_server)[:4]
    assert stored == 4
    assert err.value.cost_usd == pytest.approx(sum(estimate_tokens(t) for t in first) * EMBED)
    assert err.value.cost_estimated


@pytest.mark.parametrize("backend", ["rag", "icl"])
async def test_a_requests_embedding_is_in_its_cost_span_and_budget(gemini_server: GeminiTestServer, tmp_path: Path,
                                                                   otel: Otel, backend: str) -> None:
    config = _config(gemini_server, tmp_path, policy={"kind": "budget", "per": "global", "budget_usd": 1.0,
                                                      "inner": {"kind": "static", "backend": backend},
                                                      "costs": {backend: 0.01}})
    router = Router.from_config(config, **otel.providers)
    try:
        await _fill(router, tmp_path)
        before = len(_embedded(gemini_server))
        question = "when does the bakery bake rye bread?"
        result = await router.agenerate(question)
        spent = budget_usage(router)["spent"]
    finally:
        await router.aclose()
    assert _embedded(gemini_server)[before:] == [question]  # one embedding: the request's
    embedding = estimate_tokens(question) * EMBED
    assert result.cost_usd == pytest.approx(ANSWER + embedding) and result.cost_estimated
    assert result.decision.rungs_tried[-1].cost_usd == pytest.approx(ANSWER + embedding)
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(ANSWER + embedding)
    (span,) = [s for s in otel.spans("embeddings") if s.parent and s.parent.trace_id == root.context.trace_id]
    assert span.attributes["gen_ai.usage.cost.amount"] == pytest.approx(embedding)
    # The Developer API counts no tokens: an estimate is marked on the cost, never reported as a count.
    assert "gen_ai.usage.input_tokens" not in span.attributes and span.attributes["genroute.cost.estimated"] is True
    assert spent == pytest.approx(ANSWER + embedding)  # the budget settled the rung at its whole cost
    assert result.usage.input_tokens == USAGE[0]  # embedding tokens are not the model's input tokens


async def test_a_semantic_decisions_embedding_is_in_the_requests_cost(gemini_server: GeminiTestServer,
                                                                      tmp_path: Path, otel: Otel) -> None:
    routes = {"rag": ["bake bread", "rye sourdough"]}
    config = _config(gemini_server, tmp_path, policy={"kind": "semantic", "routes": routes, "default": "chat"})
    router = Router.from_config(config, **otel.providers)
    try:
        before = len(_embedded(gemini_server))
        result = await router.agenerate("something else entirely")
        repeated = await router.agenerate("something else entirely")  # its embedding is reused: not billed again
    finally:
        await router.aclose()
    assert _embedded(gemini_server)[before:] == ["something else entirely"]
    embedding = estimate_tokens("something else entirely") * EMBED
    assert result.cost_usd == pytest.approx(ANSWER + embedding) and result.cost_estimated
    assert repeated.cost_usd == pytest.approx(ANSWER)
    first = min(otel.spans("genroute.generate"), key=lambda s: s.start_time)
    assert first.attributes["gen_ai.usage.cost.amount"] == pytest.approx(ANSWER + embedding)


async def test_an_outcome_records_the_routing_embedding_apart_from_the_served_backends_cost(
        gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    # The served side's cost was the request's, routing embedding included, while a shadow's side (or a bench row's
    # candidate) has none: a graduation or a compile from production read the served backend as dearer than it is.
    from genroute.outcomes import OutcomeStore

    routes = {"rag": ["bake bread", "rye sourdough"]}
    semantic = {"kind": "semantic", "routes": routes, "default": "chat"}
    config = _config(gemini_server, tmp_path, policy={"kind": "challenger", "task": "t", "backend": "twin",
                                                      "mode": "shadow", "share": 1.0, "policy": semantic},
                     outcomes={"path": str(tmp_path / "outcomes.db")})
    config["backends"]["twin"] = dict(config["backends"]["chat"])   # the same call as chat's, so the same cost
    router = Router.from_config(config)
    try:
        result = await router.agenerate("something else entirely", task="t")
        await router.adrain()
    finally:
        await router.aclose()
    embedding = estimate_tokens("something else entirely") * EMBED
    assert result.backend == "chat" and result.cost_usd == pytest.approx(ANSWER + embedding)   # the request's
    (record,) = OutcomeStore(tmp_path / "outcomes.db").records_sync()
    assert record.outcomes["chat"].cost_usd == pytest.approx(ANSWER) == record.outcomes["twin"].cost_usd
    assert record.metadata["routing_cost_usd"] == pytest.approx(embedding)


async def test_feedback_on_a_forgotten_result_keeps_its_routing_cost_apart(gemini_server: GeminiTestServer,
                                                                            tmp_path: Path) -> None:
    # Feedback on a result the router no longer held (past outcomes.max_pending) read the served side from the
    # result again, without the routing embedding, but the record lost what deciding cost: routing_cost_usd was kept
    # only for a result still held.
    from genroute.outcomes import OutcomeStore

    semantic = {"kind": "semantic", "routes": {"rag": ["bake bread", "rye sourdough"]}, "default": "chat"}
    config = _config(gemini_server, tmp_path, policy=semantic,
                     outcomes={"path": str(tmp_path / "outcomes.db"), "max_pending": 1})
    router = Router.from_config(config)
    try:
        first = await router.agenerate("something else entirely", task="t")
        await router.agenerate("and another thing", task="t")   # the first is forgotten
        await router.afeedback(first, score=1.0)
    finally:
        await router.aclose()
    embedding = estimate_tokens("something else entirely") * EMBED
    assert first.backend == "chat" and first.cost_usd == pytest.approx(ANSWER + embedding)
    (record,) = OutcomeStore(tmp_path / "outcomes.db").records_sync()
    assert record.outcomes["chat"].cost_usd == pytest.approx(ANSWER) and record.outcomes["chat"].score == 1.0
    assert record.metadata["routing_cost_usd"] == pytest.approx(embedding)


async def test_embedding_costs_are_on_the_cost_counter(gemini_server: GeminiTestServer, tmp_path: Path,
                                                        otel: Otel) -> None:
    routes = {"rag": ["bake bread", "rye sourdough"]}
    config = _config(gemini_server, tmp_path, policy={"kind": "semantic", "routes": routes, "default": "chat"})
    router = Router.from_config(config, **otel.providers)
    try:
        results = [await router.agenerate(text) for text in ("something else entirely", "bake me some bread")]
    finally:
        await router.aclose()
    metrics = otel.metrics()
    points = list(metrics["genroute.cost"].data.data_points)
    # The counter sums every paid call: the routes embedded when the router was built, then each request's.
    assert router.build_cost_usd > 0
    assert sum(p.value for p in points) == pytest.approx(router.build_cost_usd + sum(r.cost_usd for r in results))
    embedded = estimate_tokens("something else entirely") + estimate_tokens("bake me some bread")
    (embeddings,) = [p for p in points if p.attributes["gen_ai.operation.name"] == "embeddings"]
    assert embeddings.value == pytest.approx(router.build_cost_usd + embedded * EMBED)
    assert dict(embeddings.attributes) == {"gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "gcp.gemini",
                                           "gen_ai.request.model": "gemini-embedding-001",
                                           "genroute.cost.estimated": True}
    # Their tokens are estimates (the Developer API counts none): no token points, the cost marked instead.
    assert not [p for p in metrics["gen_ai.client.token.usage"].data.data_points
                if p.attributes["gen_ai.operation.name"] == "embeddings"]
    (duration,) = [p for p in metrics["gen_ai.client.operation.duration"].data.data_points
                   if p.attributes["gen_ai.operation.name"] == "embeddings"]
    assert duration.count == 3  # the routes, then one per request


def test_an_unpriced_embedding_model_is_a_config_error(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    config = _config(gemini_server, tmp_path)
    config["knowledge"]["embedder"]["model"] = "my-embedder-9"
    with pytest.raises(ConfigError) as caught:
        Router.from_config(config)
    assert caught.value.field == "knowledge.embedder.model" and "my-embedder-9" in str(caught.value)
    config["pricing"] = {"my-embedder-9": {"input": 0.2, "output": 0.0}}
    Router.from_config(config).close()


def test_the_retired_text_embedding_004_is_not_priced_at_nothing(gemini_server: GeminiTestServer,
                                                                tmp_path: Path) -> None:
    # It was in the built-in table at $0 (the Gemini API shut it down on 2026-01-14; Vertex AI bills its per
    # character): a store embedding with it reported every embedding as free. Now it needs a price, as any unpriced
    # model does; the current model keeps its list price.
    assert "text-embedding-004" not in DEFAULT_PRICES
    assert (DEFAULT_PRICES["gemini-embedding-001"].input, DEFAULT_PRICES["gemini-embedding-001"].output) == (0.15, 0.0)
    config = _config(gemini_server, tmp_path)
    config["knowledge"]["embedder"]["model"] = "text-embedding-004"
    with pytest.raises(ConfigError) as caught:
        Router.from_config(config)
    assert caught.value.field == "knowledge.embedder.model" and "text-embedding-004" in str(caught.value)
