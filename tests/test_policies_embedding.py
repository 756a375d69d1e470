"""Semantic and learned policies on the real offline MiniLM embedder (and real Chroma for the stored routes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry import trace
import pytest

from genroute import Router
from genroute.backends.prompt_template import PromptTemplateBackend, PromptTemplateConfig
from genroute.engines.gemini import GeminiEngine
from genroute.errors import ConfigError, UsageError
from genroute.knowledge.embedders import LocalEmbedder
from genroute.knowledge.store import KnowledgeStore, StoreConfig
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.policies.learned import LearnedConfig, LearnedPolicy, Outcome, RouterModel, best_backend, train
from genroute.policies.semantic import SemanticConfig, SemanticPolicy, utterance_id
from genroute.runtime.resources import Resources
from genroute.testing import GeminiTestServer
from genroute.types import GenerateRequest

from .conftest import TEST_KEY

CTX = PolicyContext(catalogue={})


class CountingEmbedder(LocalEmbedder):
    """The real offline MiniLM, remembering every text it was asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed_array(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> np.ndarray:
        self.texts += texts
        return super().embed_array(texts, tracer=tracer)


@pytest.fixture(scope="module")
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


ROUTES = {
    "tools": ("what is the weather in Paris today", "book a table for two tonight", "convert 20 euros to dollars"),
    "rag": ("what does the employee handbook say about parental leave", "find the refund policy document"),
    "icl": ("classify the sentiment of this review", "is this tweet positive or negative"),
}
#: (request, backend it must route to with ROUTES at threshold 0.35); the last matches nothing -> default.
TABLE = [
    ("will it rain in London tomorrow?", "tools"),
    ("reserve a table for four people at 8pm", "tools"),
    ("handbook rules on parental leave", "rag"),
    ("the sentiment of this movie review: loved it", "icl"),
    ("zxq vlorp 42 kk", "prompt"),
]


def semantic(embedder: Any, **overrides: Any) -> SemanticPolicy:
    config = SemanticConfig.model_validate({"kind": "semantic", "routes": ROUTES, "threshold": 0.35,
                                            "default": "prompt", **overrides})
    return SemanticPolicy(config, embedder=embedder)


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_semantic_nearest_route(embedder: LocalEmbedder, text: str, expected: str) -> None:
    decision = semantic(embedder).decide(GenerateRequest(input=text), CTX)
    assert decision.rungs[0].backend == expected
    assert "similarity" in decision.reason
    if expected == "prompt":
        assert "-> default prompt" in decision.reason


def test_semantic_top_k_vote(embedder: LocalEmbedder) -> None:
    policy = semantic(embedder, top_k=3)
    assert policy.decide(GenerateRequest(input="what's the weather like in Rome"), CTX).rungs[0].backend == "tools"


# -- routes stored in the router's knowledge store ----------------------------------------------------------


def start_router(server: GeminiTestServer, store: KnowledgeStore, routes: dict[str, Any], **policy: Any) -> Router:
    """A router over four prompt backends on the loopback wire, deciding with a semantic policy over ``routes``."""
    engine = GeminiEngine("g", {"base_url": server.base_url, "api_key": TEST_KEY})
    resources = Resources({"g": engine}, knowledge=store)
    backends = {name: PromptTemplateBackend(name, PromptTemplateConfig(engine="g", model="gemini-2.5-flash"),
                                            resources) for name in ("tools", "rag", "icl", "prompt")}
    config = SemanticConfig.model_validate({"kind": "semantic", "routes": routes, "threshold": 0.35,
                                            "default": "prompt", **policy})
    return Router(backends, SemanticPolicy(config), resources=resources)


def stored(path: Path, collection: str) -> dict[str, Any]:
    """What Chroma holds in ``collection``, read back with a client of its own."""
    import chromadb
    from chromadb.config import Settings

    # Chroma shares one system per directory, and it must be opened with the store's settings.
    col = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False)) \
        .get_collection(collection)
    got = col.get(include=["documents", "metadatas"])
    return {"metadata": col.metadata,
            "routes": sorted((m["backend"], d) for m, d in zip(got["metadatas"], got["documents"])),
            "ids": set(got["ids"])}


def all_routes(routes: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((b, u) for b, us in routes.items() for u in us)


def test_second_start_embeds_nothing_and_decides_alike(gemini_server: GeminiTestServer, embedder: CountingEmbedder,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    embedder.texts.clear()
    with start_router(gemini_server, KnowledgeStore(StoreConfig(path=str(path)), embedder=embedder),
                      ROUTES) as first:
        assert sorted(embedder.texts) == sorted(u for _, u in all_routes(ROUTES))  # each utterance once
        assert [first.decide(text).rungs[0].backend for text, _ in TABLE] == [b for _, b in TABLE]
    held = stored(path, "genroute-routes-policy")
    assert held["routes"] == all_routes(ROUTES)
    assert held["ids"] == {utterance_id(b, u) for b, u in all_routes(ROUTES)}  # keyed by content
    assert held["metadata"]["genroute.kind"] == "routes"
    assert (held["metadata"]["genroute.embedder_kind"], held["metadata"]["genroute.embedder"],
            held["metadata"]["genroute.dimension"]) == ("genroute_local_minilm", "all-MiniLM-L6-v2-int8", 384)

    embedder.texts.clear()
    gemini_server.reply_text("from the handbook")
    # A new store object on the same directory: what a restarted process sees.
    with start_router(gemini_server, KnowledgeStore(StoreConfig(path=str(path)), embedder=embedder),
                      ROUTES) as second:
        assert embedder.texts == []  # nothing re-embedded at start
        assert sorted(zip(second.policy.backends, second.policy.utterances)) == all_routes(ROUTES)
        decisions = [second.decide(text) for text, _ in TABLE]
        result = second.generate("handbook rules on parental leave")
    assert [d.rungs[0].backend for d in decisions] == [b for _, b in TABLE]  # the decision table still holds
    assert "-> default prompt" in decisions[-1].reason and "similarity" in decisions[0].reason
    assert result.backend == "rag" and result.text == "from the handbook"
    assert embedder.texts == [text for text, _ in TABLE]  # only requests were embedded (the last one cached)


def test_changed_utterances_are_added_and_removed(gemini_server: GeminiTestServer, embedder: CountingEmbedder,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    start_router(gemini_server, KnowledgeStore(StoreConfig(path=str(path)), embedder=embedder), ROUTES).close()
    changed = {**ROUTES, "rag": ("what does the employee handbook say about parental leave",
                                 "show me the travel expense guidelines"),
               "icl": ("is this tweet positive or negative",)}
    embedder.texts.clear()
    with start_router(gemini_server, KnowledgeStore(StoreConfig(path=str(path)), embedder=embedder),
                      changed) as router:
        assert embedder.texts == ["show me the travel expense guidelines"]  # only the new utterance
        assert sorted(zip(router.policy.backends, router.policy.utterances)) == all_routes(changed)
        expenses = router.decide("how do I claim travel expenses?")
        refund = router.decide("find the refund policy document")
    assert stored(path, "genroute-routes-policy")["routes"] == all_routes(changed)  # removed ones deleted
    assert expenses.rungs[0].backend == "rag" and "travel expense guidelines" in expenses.reason
    assert "refund" not in refund.reason  # the deleted utterance can no longer be the nearest route


def test_routes_from_config_persist_per_policy_field(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    # Nested in a split arm: the router hands its knowledge store down, the collection is named by the field.
    config = {"engines": {"g": {"kind": "gemini", "base_url": gemini_server.base_url, "api_key": TEST_KEY}},
              "backends": {b: {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}
                           for b in ("tools", "rag", "icl", "prompt")},
              "knowledge": {"path": str(tmp_path / "chroma")},
              "policy": {"kind": "split", "arms": [{"weight": 1, "policy": {
                  "kind": "semantic", "routes": ROUTES, "threshold": 0.35, "default": "prompt"}}]}}
    with Router.from_config(config) as router:
        decision = router.decide("handbook rules on parental leave")
    assert decision.rungs[0].backend == "rag"
    assert stored(tmp_path / "chroma", "genroute-routes-policy.arms.0.policy")["routes"] == all_routes(ROUTES)
    assert gemini_server.requests == []  # embedding is local; deciding calls no model

    # Without routes in config the policy serves whatever the collection holds; a backend the router
    # lacks is named by the collection field.
    config["backends"].pop("icl")
    config["policy"] = {"kind": "semantic", "collection": "genroute-routes-policy.arms.0.policy", "default": "prompt"}
    with pytest.raises(ConfigError) as err:
        Router.from_config(config)
    assert err.value.field == "policy.collection" and "icl" in str(err.value)


def test_embedder_mismatch_is_a_config_error(gemini_server: GeminiTestServer, embedder: CountingEmbedder,
                                             tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    start_router(gemini_server, KnowledgeStore(StoreConfig(path=str(path)), embedder=embedder), ROUTES).close()
    before = stored(path, "genroute-routes-policy")
    config = {"engines": {"g": {"kind": "gemini", "base_url": gemini_server.base_url, "api_key": TEST_KEY}},
              "backends": {b: {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}
                           for b in ("tools", "rag", "icl", "prompt")},
              # Same width as MiniLM, so only the recorded embedder kind and model can tell the vectors apart.
              "knowledge": {"path": str(path), "embedder": {"kind": "gemini", "engine": "g", "dimension": 384}},
              "policy": {"kind": "semantic", "routes": ROUTES, "default": "prompt"}}
    with pytest.raises(ConfigError) as err:
        Router.from_config(config)
    assert err.value.field == "knowledge.embedder"
    assert "'all-MiniLM-L6-v2-int8' (genroute_local_minilm)" in str(err.value) and "(genroute_gemini)" in str(err.value)
    assert "policy.collection" in str(err.value)  # the remedy that keeps the stored routes
    assert "ingest" not in str(err.value)  # routes are not ingested: the router writes them
    assert gemini_server.requests == []  # refused before embedding anything
    assert stored(path, "genroute-routes-policy") == before  # and the collection is left as it was


async def test_gemini_embedded_routes_in_async_code(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    # Built inside a running event loop, with an embedder that only has the async API at heart.
    config = {"engines": {"g": {"kind": "gemini", "base_url": gemini_server.base_url, "api_key": TEST_KEY}},
              "backends": {b: {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}
                           for b in ("tools", "rag", "icl", "prompt")},
              "knowledge": {"path": str(tmp_path / "chroma"),
                            "embedder": {"kind": "gemini", "engine": "g", "dimension": 64}},
              "policy": {"kind": "semantic", "routes": ROUTES, "threshold": 0.99, "default": "prompt"}}
    gemini_server.reply_text("booked")
    gemini_server.reply_text("hello")
    router = Router.from_config(config)
    try:
        # The loopback server's vectors are hashes of the text: an utterance is identical only to itself.
        same = await router.agenerate("book a table for two tonight")
        other = await router.agenerate("something else entirely")
    finally:
        await router.aclose()
    assert (same.backend, same.text, other.backend, other.text) == ("tools", "booked", "prompt", "hello")
    embeds = [r for r in gemini_server.requests if r.action in ("batchEmbedContents", "embedContent")]
    assert len(embeds) == 3  # the seven utterances in one call, then each request
    assert stored(tmp_path / "chroma", "genroute-routes-policy")["metadata"]["genroute.dimension"] == 64

    sent = len(gemini_server.requests)
    config["knowledge"] = {"path": str(tmp_path / "chroma"), "embedder": {"kind": "gemini", "engine": "g",
                                                                          "dimension": 32}}
    with pytest.raises(ConfigError) as err:  # the same model at another width refuses them
        Router.from_config(config)
    assert err.value.field == "knowledge.embedder.dimension" and "64" in str(err.value)
    config["knowledge"] = {"path": str(tmp_path / "chroma")}
    with pytest.raises(ConfigError) as err:  # and so does the local embedder
        Router.from_config(config)
    assert err.value.field == "knowledge.embedder"
    assert len(gemini_server.requests) == sent  # neither embedded anything


def test_store_embedder_is_the_one_used(embedder: CountingEmbedder, tmp_path: Path) -> None:
    store = KnowledgeStore(StoreConfig(path=str(tmp_path / "chroma")))  # its own (default) embedder
    with pytest.raises(UsageError) as err:
        semantic(embedder).bind(Resources({}, knowledge=store))
    assert err.value.field == "policy" and "KnowledgeStore" in str(err.value)
    store = KnowledgeStore(StoreConfig(path=str(tmp_path / "chroma")), embedder=embedder)
    SemanticPolicy(SemanticConfig(kind="semantic", default="prompt")).bind(Resources({}, knowledge=store))
    with pytest.raises(ConfigError) as err:  # nothing in config, nothing stored: the store's sync says so
        store.routes.sync()
    assert err.value.field == "policy.routes" and "empty" in str(err.value)


def test_binding_a_semantic_policy_writes_nothing_until_the_store_syncs(embedder: CountingEmbedder,
                                                                       tmp_path: Path) -> None:
    store = KnowledgeStore(StoreConfig(path=str(tmp_path / "chroma")), embedder=embedder)
    policy = semantic(embedder)
    embedder.texts.clear()
    policy.bind(Resources({}, knowledge=store))  # the policy only asks for its routes
    assert embedder.texts == []
    with pytest.raises(UsageError, match="unknown collection"):  # nothing was created
        store.count_sync(policy.collection_name, kind="routes")
    with pytest.raises(UsageError, match="not loaded yet"):
        policy.backends
    (synced,) = store.routes.sync()  # the store writes them and hands them back
    assert synced.added == len(policy.wanted) == len(policy.backends)
    assert store.count_sync(policy.collection_name, kind="routes") == len(policy.wanted)


def test_semantic_routes_file_and_unknown_backend(embedder: LocalEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "routes.jsonl"
    path.write_text(json.dumps({"backend": "ghost", "utterance": "boo"}) + "\n")
    policy = SemanticPolicy(SemanticConfig(kind="semantic", routes_file=str(path), default="prompt"),
                            embedder=embedder)
    with pytest.raises(ConfigError) as err:
        policy.validate_against({"prompt": BackendInfo("prompt", "prompt_template")})
    assert err.value.field == "policy.routes_file"
    path.write_text('{"utterance": "no backend"}\n')
    with pytest.raises(ConfigError, match="line 1") as err:
        SemanticPolicy(SemanticConfig(kind="semantic", routes_file=str(path), default="p"), embedder=embedder)
    assert err.value.field == "policy.routes_file"
    with pytest.raises(ConfigError) as err:  # no store to read routes from either
        SemanticPolicy(SemanticConfig(kind="semantic", default="p"), embedder=embedder).bind(Resources({}))
    assert err.value.field == "policy.routes"


def test_semantic_routes_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    from genroute.policies.semantic import read_routes_file

    # A Windows editor's BOM made line 1 "Unexpected UTF-8 BOM"; a config file with one reads fine.
    path = tmp_path / "routes.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"backend": "chat", "utterance": "hello"}).encode() + b"\n")
    assert read_routes_file(str(path), field="policy.routes_file") == [("chat", "hello")]


# -- learned --------------------------------------------------------------------------------------------

CARD = ["my card has not arrived", "where is my new card", "card delivery is late", "card still not here",
        "how long does card delivery take", "when will my card come", "I never received my card",
        "track my card delivery", "my card was not delivered", "card arrival time"]
FEES = ["why was I charged a fee", "there is an extra fee on my transfer", "what is this charge",
        "I was charged twice", "unexpected fee on statement", "why did the transfer cost money",
        "fee for topping up", "hidden charges on my account", "refund this fee", "what are the exchange fees"]
CRYPTO = ["buy bitcoin with my balance", "how do I sell my crypto", "can I trade ethereum here",
          "is cryptocurrency trading available", "withdraw my bitcoin to a wallet", "send crypto to another wallet",
          "my crypto purchase failed", "which cryptocurrencies can I buy", "why is my bitcoin sale pending",
          "crypto price alerts"]
#: (group, scores of cheap / mid / pricey): each group has one right answer — the cheapest correct backend.
GROUPS = [(CARD, (1.0, 1.0, 1.0)), (CRYPTO, (0.0, 1.0, 1.0)), (FEES, (0.0, 0.0, 1.0))]
COSTS = {"cheap": 0.0001, "mid": 0.0005, "pricey": 0.002}


def outcomes() -> list[dict[str, Any]]:
    """Card questions: the cheap backend is right. Crypto: mid and pricey. Fees: only the pricey one."""
    rows = []
    for texts, scores in GROUPS:
        for text in texts:
            for backend, score in zip(COSTS, scores):
                rows.append({"id": text, "input": text, "backend": backend, "score": score,
                             "cost_usd": COSTS[backend]})
    return rows


def test_best_backend_label() -> None:
    by = {b: Outcome(input="x", backend=b, score=s, cost_usd=c) for b, s, c in
          [("a", 1.0, 0.5), ("b", 1.0, 0.1), ("c", 0.0, 0.0)]}
    assert best_backend(by, 0.5) == "b"
    assert best_backend({"a": by["a"].model_copy(update={"score": 0.0}), "c": by["c"]}, 0.5) == "c"


@pytest.mark.parametrize("method", ["knn", "logreg"])
def test_learned_train_and_route(embedder: LocalEmbedder, tmp_path: Path, method: str) -> None:
    report = train(outcomes(), tmp_path / "router.npz", embedder=embedder, method=method, k=3,
                   test_share=0.3, seed=1)
    assert report.n_train + report.n_test == 30 and set(report.backends) == {"cheap", "mid", "pricey"}
    # Held out, the learned router must beat every router that ignores the input: the training split's
    # majority label and each single backend (each group's right answer is a different backend).
    baselines = [report.majority_routing_accuracy] + [b["routing_accuracy"] for b in report.single_backend.values()]
    assert max(baselines) <= 0.5 < report.routing_accuracy
    assert report.routing_accuracy >= max(baselines) + 0.3
    # Against the best single backend (pricey: always right, always dear): about as right, much cheaper.
    pricey = report.single_backend["pricey"]
    assert pricey["success_rate"] == 1.0 and report.success_rate >= 0.8
    assert report.mean_cost_usd < 0.75 * pricey["mean_cost_usd"]
    # Cost weight 0.3: 0.3 of predicted quality is worth the pricey backend's cost (cheap vs mid: 0.06).
    policy = LearnedPolicy(LearnedConfig(kind="learned", model_path=report.model_path, default="pricey",
                                         fallbacks=1, cost_weight=0.3), embedder=embedder)
    card = policy.decide(GenerateRequest(input="has my card been posted yet?"), CTX)
    fee = policy.decide(GenerateRequest(input="why is there a fee on my account?"), CTX)
    assert card.rungs[0].backend == "cheap" and len(card.rungs) == 2
    assert fee.rungs[0].backend == "pricey"
    assert card.reason.startswith(f"learned: {method} predicts cheap (quality")


def test_learned_min_confidence_and_model_file_errors(embedder: LocalEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    train(outcomes(), path, embedder=embedder, method="logreg")
    # A high cost weight picks the cheap backend, right only on card questions: its predicted quality on
    # an unrelated question is below the floor, so the default must answer.
    policy = LearnedPolicy(LearnedConfig(kind="learned", model_path=str(path), default="prompt",
                                         min_confidence=0.99, cost_weight=100.0), embedder=embedder)
    decision = policy.decide(GenerateRequest(input="a question about nothing in particular"), CTX)
    assert decision.rungs[0].backend == "prompt" and "-> default prompt" in decision.reason
    with pytest.raises(ConfigError) as err:
        policy.validate_against({"prompt": BackendInfo("prompt", "prompt_template")})
    assert err.value.field == "policy.model_path"
    assert RouterModel.load(path).meta["embedder"] == "all-MiniLM-L6-v2-int8"
    path.write_bytes(b"not a model")
    with pytest.raises(ConfigError) as err:
        LearnedPolicy(LearnedConfig(kind="learned", model_path=str(path), default="p"), embedder=embedder)
    assert err.value.field == "policy.model_path"


def test_request_embeddings_of_a_semantic_policy_go_to_the_routers_tracer(gemini_server: GeminiTestServer,
                                                                          embedder: CountingEmbedder,
                                                                          otel: Any) -> None:
    # The router hands its tracer over explicitly (Resources.tracer, read when the policy is bound): the
    # request's embedding span joins the request's trace in the router's own provider, not the global one.
    engine = GeminiEngine("g", {"base_url": gemini_server.base_url, "api_key": TEST_KEY})
    resources = Resources({"g": engine})
    backends = {name: PromptTemplateBackend(name, PromptTemplateConfig(engine="g", model="gemini-2.5-flash"),
                                            resources) for name in ("tools", "prompt")}
    config = SemanticConfig(kind="semantic", routes={"tools": ROUTES["tools"]}, threshold=0.35, default="prompt")
    gemini_server.reply_text("sunny")
    with Router(backends, SemanticPolicy(config, embedder=embedder), resources=resources, **otel.providers) as router:
        result = router.generate("will it rain in Lyon tomorrow?")
    assert result.backend == "tools"
    root = otel.spans("genroute.generate")[0]
    # The routes' embedding is in the build's genroute.routes.sync span; the request's in the request's trace.
    (sync,) = otel.spans("genroute.routes.sync")
    by_trace = {s.context.trace_id: s for s in otel.spans("embeddings")}
    assert set(by_trace) == {sync.context.trace_id, root.context.trace_id}
    assert by_trace[root.context.trace_id].parent.span_id == root.context.span_id


def test_request_embeddings_of_a_learned_policy_go_to_the_routers_tracer(gemini_server: GeminiTestServer,
                                                                         embedder: CountingEmbedder,
                                                                         otel: Any, tmp_path: Path) -> None:
    outcomes = [{"input": text, "backend": backend, "score": float(backend == want), "cost_usd": 0.0}
                for text, want in [(u, "tools") for u in ROUTES["tools"]] + [(u, "prompt") for u in ROUTES["rag"]]
                for backend in ("tools", "prompt")]
    train(outcomes, tmp_path / "m.npz", embedder=embedder, test_share=0.0, k=1)
    engine = GeminiEngine("g", {"base_url": gemini_server.base_url, "api_key": TEST_KEY})
    resources = Resources({"g": engine})
    backends = {name: PromptTemplateBackend(name, PromptTemplateConfig(engine="g", model="gemini-2.5-flash"),
                                            resources) for name in ("tools", "prompt")}
    policy = LearnedPolicy(LearnedConfig(model_path=str(tmp_path / "m.npz"), default="prompt"), embedder=embedder)
    gemini_server.reply_text("ok")
    with Router(backends, policy, resources=resources, **otel.providers) as router:
        router.generate("is it going to snow in Oslo?")
    root = otel.spans("genroute.generate")[0]
    (request_embedding,) = otel.spans("embeddings")
    assert request_embedding.parent.span_id == root.context.span_id
