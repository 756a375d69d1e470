"""A request is embedded once: the policy that routes it (semantic, learned) and the backend that retrieves for it
(kNN ICL, RAG) share the vector when they embed the same text with embedders of one fingerprint, and it is charged
once. Real embedders (the offline MiniLM; Gemini over the loopback server), real embedded Chroma, real OTel SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.engines.gemini import GeminiEngine
from genroute.knowledge import aload_examples
from genroute.knowledge.embedders import GeminiEmbedder, aembed_text
from genroute.runtime.billing import estimate_tokens
from genroute.runtime.embeddings import RequestEmbeddings
from genroute.runtime.pricing import DEFAULT_PRICES
from genroute.testing import GeminiTestServer, Reply

from .conftest import TEST_KEY, Otel

EMBED = DEFAULT_PRICES["gemini-embedding-001"].input / 1e6  # USD per input token
FLASH_IN, FLASH_OUT = (DEFAULT_PRICES["gemini-2.5-flash"].input / 1e6, DEFAULT_PRICES["gemini-2.5-flash"].output / 1e6)
USAGE = (100, 10)
ANSWER = USAGE[0] * FLASH_IN + USAGE[1] * FLASH_OUT
SHOTS = [("is rye bread good?", "yes"), ("is spelt bread good?", "yes"), ("is stale bread good?", "no")]
# The loopback server's vectors are hashes of the text: a request routes by an utterance equal to it.
ROUTES = {"icl": ["is this bread good", "rate this loaf", "is this sourdough bread good?"],
          "rag": ["what does the bakery bake", "what does the bakery bake on sundays?"]}


def _config(server: GeminiTestServer, tmp_path: Path, embedder: dict[str, Any] | None) -> dict[str, Any]:
    server.default_reply = lambda request: Reply(parts=({"text": "ok [1]"},), usage=USAGE)
    flash = {"engine": "g", "model": "gemini-2.5-flash"}
    knowledge: dict[str, Any] = {"path": str(tmp_path / "chroma")}
    if embedder is not None:
        knowledge["embedder"] = embedder
    return {"engines": {"g": {"kind": "gemini", "base_url": server.base_url, "api_key": TEST_KEY}},
            "knowledge": knowledge,
            "backends": {"icl": {"kind": "icl", "collection": "shots", "selector": "knn", "k": 2, **flash},
                         "rag": {"kind": "rag", "collection": "docs", "max_distance": None, **flash},
                         "chat": {"kind": "prompt_template", **flash}},
            "policy": {"kind": "semantic", "routes": ROUTES, "default": "chat", "threshold": -1.0}}


async def _fill(router: Router, tmp_path: Path) -> None:
    from genroute.knowledge import aingest

    store = router.resources.knowledge
    examples = tmp_path / "shots.jsonl"
    examples.write_text("".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in SHOTS), encoding="utf-8")
    await aload_examples(store, [examples], collection="shots")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bakery.txt").write_text("Marta's bakery in Porto bakes rye sourdough every morning.", encoding="utf-8")
    await aingest(store, [docs], collection="docs", chunk_tokens=64)


def _embedded(server: GeminiTestServer) -> list[str]:
    """Every text the server was asked to embed, in order."""
    return [part["text"] for request in server.requests if request.action == "batchEmbedContents"
            for r in request.body["requests"] for part in r["content"]["parts"]]


async def _answer(router: Router, text: str, mode: str) -> Any:
    """``text`` answered the ``mode`` way: generate, agenerate, stream or astream (sync ones in a worker thread)."""
    if mode == "agenerate":
        return await router.agenerate(text)
    if mode == "astream":
        chunks = [chunk async for chunk in router.astream(text)]
        return chunks[-1].result
    if mode == "generate":
        return await asyncio.to_thread(router.generate, text)

    def streamed() -> Any:
        return list(router.stream(text))[-1].result

    return await asyncio.to_thread(streamed)


MODES = ["generate", "agenerate", "stream", "astream"]
GEMINI = {"kind": "gemini", "engine": "g", "dimension": 64}


async def _served(server: GeminiTestServer, tmp_path: Path, texts: list[str], mode: str = "agenerate", *,
                  otel: Otel | None = None, embedder: dict[str, Any] | None = GEMINI, feedback: bool = False,
                  **sections: Any) -> tuple[list[Any], list[str]]:
    """The results of ``texts`` served by a semantic -> ICL/RAG router, and the texts embedded while serving them."""
    config = {**_config(server, tmp_path, embedder), **sections}
    router = Router.from_config(config, **(otel.providers if otel is not None else {}))
    try:
        await _fill(router, tmp_path)
        before = len(_embedded(server))
        results = [await _answer(router, text, mode) for text in texts]
        for result in results if feedback else ():
            await router.afeedback(result, score=1.0)
    finally:
        await router.aclose()
    return results, _embedded(server)[before:]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("text,backend", [("is this sourdough bread good?", "icl"),
                                          ("what does the bakery bake on sundays?", "rag")])
async def test_a_semantic_policy_and_its_retrieving_backend_embed_the_request_once(
        gemini_server: GeminiTestServer, tmp_path: Path, otel: Otel, mode: str, text: str, backend: str) -> None:
    # It was embedded twice, once to route it and once to retrieve for it, and paid twice.
    (result,), embedded = await _served(gemini_server, tmp_path, [text], mode, otel=otel)
    assert result.backend == backend
    assert embedded == [text]  # one embedding call, for both
    embedding = estimate_tokens(text) * EMBED
    assert result.cost_usd == pytest.approx(ANSWER + embedding) and result.cost_estimated
    assert result.decision.rungs_tried[-1].cost_usd == pytest.approx(ANSWER)  # the rung reused deciding's vector
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(ANSWER + embedding)
    (span,) = [s for s in otel.spans("embeddings") if s.context.trace_id == root.context.trace_id]
    assert span.attributes["gen_ai.usage.cost.amount"] == pytest.approx(embedding)
    (retrieval,) = otel.spans("retrieval")
    assert retrieval.context.trace_id == root.context.trace_id and retrieval.attributes["genroute.retrieval.returned"]


async def test_an_outcome_keeps_the_shared_embedding_in_its_routing_cost_once(gemini_server: GeminiTestServer,
                                                                              tmp_path: Path) -> None:
    from genroute.outcomes import OutcomeStore

    (result,), _ = await _served(gemini_server, tmp_path, ["is this sourdough bread good?"], feedback=True,
                                 outcomes={"path": str(tmp_path / "outcomes.db")})
    embedding = estimate_tokens("is this sourdough bread good?") * EMBED
    assert result.backend == "icl" and result.cost_usd == pytest.approx(ANSWER + embedding)
    (record,) = OutcomeStore(tmp_path / "outcomes.db").records_sync()
    assert (record.outcomes["icl"].cost_usd, record.metadata["routing_cost_usd"]) == pytest.approx((ANSWER, embedding))


@pytest.mark.parametrize("mode", ["agenerate", "astream", "generate"])
async def test_the_offline_embedder_embeds_a_routed_knn_request_once(gemini_server: GeminiTestServer, tmp_path: Path,
                                                                     otel: Otel, mode: str) -> None:
    results, _ = await _served(gemini_server, tmp_path, ["is this rye loaf good?", "rate my baguette"], mode,
                               otel=otel, embedder=None)
    assert [r.backend for r in results] == ["icl", "icl"]
    for root in otel.spans("genroute.generate"):
        spans = [s for s in otel.spans("embeddings") if s.context.trace_id == root.context.trace_id]
        assert len(spans) == 1, [s.parent.span_id == root.context.span_id for s in spans]  # it was 2
        assert spans[0].attributes["gen_ai.usage.input_tokens"] > 0


async def test_a_learned_policy_shares_its_embedding_with_knn_selection(gemini_server: GeminiTestServer,
                                                                        tmp_path: Path, otel: Otel) -> None:
    from genroute.policies.learned import Outcome, train

    rows = [Outcome(input=f"is {w} bread good?", backend=b, score=s, record_id=w)
            for w in ("rye", "spelt", "oat", "corn", "wheat", "barley")
            for b, s in (("icl", 1.0), ("chat", 0.0))]
    train(rows, tmp_path / "router.npz", method="knn", k=3, test_share=0.0)
    learned = {"kind": "learned", "model_path": str(tmp_path / "router.npz"), "default": "chat"}
    (result,), _ = await _served(gemini_server, tmp_path, ["is this brioche good?"], otel=otel, embedder=None,
                                 policy=learned)
    assert result.backend == "icl"
    (root,) = otel.spans("genroute.generate")
    assert len([s for s in otel.spans("embeddings") if s.context.trace_id == root.context.trace_id]) == 1


def _engine(server: GeminiTestServer) -> GeminiEngine:
    return GeminiEngine("g", {"api_key": TEST_KEY, "base_url": server.base_url})


@pytest.mark.parametrize("other,shared", [("RETRIEVAL_QUERY", True), ("SEMANTIC_SIMILARITY", False), (None, False)])
async def test_a_vector_is_shared_only_by_embedders_of_one_task_type_and_width(
        gemini_server: GeminiTestServer, other: str | None, shared: bool) -> None:
    engine = _engine(gemini_server)
    query: Callable[..., GeminiEmbedder] = lambda **kw: GeminiEmbedder(engine, **{"dimension": 64, **kw})
    embeddings = RequestEmbeddings()
    try:
        first = await aembed_text(query(task_type="RETRIEVAL_QUERY"), "rye?", embeddings=embeddings)
        again = await aembed_text(query(task_type=other), "rye?", embeddings=embeddings)
        wider = await aembed_text(query(task_type="RETRIEVAL_QUERY", dimension=128), "rye?", embeddings=embeddings)
    finally:
        await engine.aclose()
    sent = [[r.get("taskType") for r in request.body["requests"]]
            for request in gemini_server.requests if request.action == "batchEmbedContents"]
    assert sent == ([["RETRIEVAL_QUERY"], ["RETRIEVAL_QUERY"]] if shared else
                    [["RETRIEVAL_QUERY"], [other], ["RETRIEVAL_QUERY"]])
    assert (again == first) if shared else len(embeddings) == 3
    assert len(wider) == 128  # another width: its own call


async def test_nothing_is_shared_across_requests(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    policy = {**_config(gemini_server, tmp_path, GEMINI)["policy"], "cache_size": 0}  # nor by the policy's own cache
    _, embedded = await _served(gemini_server, tmp_path, ["is this sourdough bread good?"] * 2, policy=policy)
    assert embedded == ["is this sourdough bread good?"] * 2  # one a request
