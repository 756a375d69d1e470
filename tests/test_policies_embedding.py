"""Semantic and learned policies on the real offline MiniLM embedder (and real Chroma for the store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genroute.errors import ConfigError
from genroute.knowledge.embedders import LocalEmbedder
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.policies.learned import LearnedConfig, LearnedPolicy, Outcome, RouterModel, best_backend, train
from genroute.policies.semantic import SemanticConfig, SemanticPolicy
from genroute.types import GenerateRequest

CTX = PolicyContext(catalogue={})


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


ROUTES = {
    "tools": ("what is the weather in Paris today", "book a table for two tonight", "convert 20 euros to dollars"),
    "rag": ("what does the employee handbook say about parental leave", "find the refund policy document"),
    "icl": ("classify the sentiment of this review", "is this tweet positive or negative"),
}


def semantic(embedder: LocalEmbedder, **overrides: Any) -> SemanticPolicy:
    config = SemanticConfig.model_validate({"kind": "semantic", "routes": ROUTES, "threshold": 0.35,
                                            "default": "prompt", **overrides})
    return SemanticPolicy(config, embedder=embedder)


@pytest.mark.parametrize(("text", "expected"), [
    ("will it rain in London tomorrow?", "tools"),
    ("reserve a table for four people at 8pm", "tools"),
    ("handbook rules on parental leave", "rag"),
    ("the sentiment of this movie review: loved it", "icl"),
    ("zxq vlorp 42 kk", "prompt"),  # nothing near -> default
])
def test_semantic_nearest_route(embedder: LocalEmbedder, text: str, expected: str) -> None:
    decision = semantic(embedder).decide(GenerateRequest(input=text), CTX)
    assert decision.rungs[0].backend == expected
    assert "similarity" in decision.reason
    if expected == "prompt":
        assert "-> default prompt" in decision.reason


def test_semantic_top_k_vote(embedder: LocalEmbedder) -> None:
    policy = semantic(embedder, top_k=3)
    assert policy.decide(GenerateRequest(input="what's the weather like in Rome"), CTX).rungs[0].backend == "tools"


def test_semantic_store_persists_and_reopens(embedder: LocalEmbedder, tmp_path: Path) -> None:
    store = {"path": str(tmp_path / "chroma"), "collection": "routes-test"}
    first = semantic(embedder, store=store)
    assert first.matrix.shape == (7, 384)
    # A config without routes reads every utterance back from the store, without embedding them again.
    reopened = SemanticPolicy(SemanticConfig(kind="semantic", store=store, default="prompt", threshold=0.35),
                              embedder=embedder)
    assert sorted(reopened.utterances) == sorted(u for us in ROUTES.values() for u in us)
    via_chroma = semantic(embedder, store=store, search="chroma")
    text = GenerateRequest(input="find the document about refunds")
    assert via_chroma.decide(text, CTX).rungs[0].backend == reopened.decide(text, CTX).rungs[0].backend == "rag"


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
    policy = LearnedPolicy(LearnedConfig(kind="learned", model_path=report.model_path, default="pricey",
                                         fallbacks=1), embedder=embedder)
    card = policy.decide(GenerateRequest(input="has my card been posted yet?"), CTX)
    fee = policy.decide(GenerateRequest(input="why is there a fee on my account?"), CTX)
    assert card.rungs[0].backend == "cheap" and len(card.rungs) == 2
    assert fee.rungs[0].backend == "pricey"
    assert card.reason.startswith(f"learned: {method} predicts cheap (confidence")


def test_learned_min_confidence_and_model_file_errors(embedder: LocalEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    train(outcomes(), path, embedder=embedder, method="logreg")
    # A softmax over two classes trained briefly never reaches certainty: the default must answer.
    policy = LearnedPolicy(LearnedConfig(kind="learned", model_path=str(path), default="prompt",
                                         min_confidence=0.9999), embedder=embedder)
    decision = policy.decide(GenerateRequest(input="a question about nothing in particular"), CTX)
    assert decision.rungs[0].backend == "prompt" and "-> default prompt" in decision.reason
    with pytest.raises(ConfigError) as err:
        policy.validate_against({"prompt": BackendInfo("prompt", "prompt_template")})
    assert err.value.field == "policy.model_path"
    assert RouterModel.load(path).meta["embedder"] == "all-MiniLM-L6-v2"
    path.write_bytes(b"not a model")
    with pytest.raises(ConfigError) as err:
        LearnedPolicy(LearnedConfig(kind="learned", model_path=str(path), default="p"), embedder=embedder)
    assert err.value.field == "policy.model_path"
