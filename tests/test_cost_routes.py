"""Embedding a semantic policy's routes when the router is built is costed: on the router (``build_cost_usd``),
the policy's ``last_sync`` and a ``genroute.routes.sync`` span — with a knowledge store (only new utterances are
embedded, so a rebuild costs nothing) and without one (every utterance, at every start).

Gemini embeddings over the loopback server; a real embedded Chroma; the real OTel SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.engines.gemini import GeminiEngine
from genroute.knowledge.embedders import GeminiEmbedder
from genroute.policies.semantic import SemanticConfig, SemanticPolicy
from genroute.runtime.billing import estimate_tokens
from genroute.runtime.pricing import DEFAULT_PRICES
from genroute.testing import GeminiTestServer

from .conftest import TEST_KEY, Otel

EMBED = DEFAULT_PRICES["gemini-embedding-001"].input / 1e6
ROUTES = {"chat": ["bake bread", "rye sourdough starter"], "other": ["weather in Paris", "will it rain"]}


def _cost(utterances: list[str]) -> float:
    return sum(estimate_tokens(u) for u in utterances) * EMBED


def _config(server: GeminiTestServer, tmp_path: Path, routes: dict[str, list[str]], *,
            store: bool = True) -> dict[str, Any]:
    flash = {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}
    config: dict[str, Any] = {
        "engines": {"g": {"kind": "gemini", "base_url": server.base_url, "api_key": TEST_KEY}},
        "backends": {"chat": flash, "other": flash},
        "policy": {"kind": "semantic", "routes": routes, "default": "chat"},
    }
    if store:
        config["knowledge"] = {"path": str(tmp_path / "chroma"),
                               "embedder": {"kind": "gemini", "engine": "g", "dimension": 32}}
    return config


def _embedded(server: GeminiTestServer) -> list[str]:
    return [p["text"] for r in server.requests if r.action == "batchEmbedContents"
            for q in r.body["requests"] for p in q["content"]["parts"]]


def test_stored_routes_cost_what_was_embedded_and_a_rebuild_nothing(gemini_server: GeminiTestServer,
                                                                    tmp_path: Path, otel: Otel) -> None:
    every = [u for us in ROUTES.values() for u in us]
    with Router.from_config(_config(gemini_server, tmp_path, ROUTES), **otel.providers) as router:
        first = router.policy.last_sync
        built = (router.build_cost_usd, router.build_cost_estimated)
    assert sorted(_embedded(gemini_server)) == sorted(every)
    assert built == (pytest.approx(_cost(every)), True)
    assert (first.collection, first.added, first.loaded) == ("genroute-routes-policy", 4, 4)
    assert first.cost_usd == pytest.approx(_cost(every)) and first.cost_estimated
    (span,) = otel.spans("genroute.routes.sync")
    assert span.attributes["gen_ai.usage.cost.amount"] == pytest.approx(_cost(every))
    assert span.attributes["genroute.cost.estimated"] is True
    assert span.attributes["genroute.routes.collection"] == "genroute-routes-policy"
    assert (span.attributes["genroute.routes.added"], span.attributes["genroute.policy.field"]) == (4, "policy")
    (embedding,) = otel.spans("embeddings")
    assert embedding.parent.span_id == span.context.span_id  # the embeddings call sits in the sync

    again = Router.from_config(_config(gemini_server, tmp_path, ROUTES))  # the same store: nothing new
    assert (again.build_cost_usd, again.build_cost_estimated) == (0.0, False)
    assert again.policy.last_sync.added == 0 and again.policy.last_sync.cost_usd == 0.0
    again.close()

    more = {**ROUTES, "other": [*ROUTES["other"], "sunny tomorrow in Lyon?"]}
    with Router.from_config(_config(gemini_server, tmp_path, more)) as grown:
        assert grown.build_cost_usd == pytest.approx(_cost(["sunny tomorrow in Lyon?"]))  # only the new one
    assert len(_embedded(gemini_server)) == 5


async def test_routes_embedded_at_start_without_a_store_are_costed(gemini_server: GeminiTestServer,
                                                                   tmp_path: Path, otel: Otel) -> None:
    config = _config(gemini_server, tmp_path, ROUTES, store=False)
    engine = GeminiEngine("g", {"base_url": gemini_server.base_url, "api_key": TEST_KEY})
    policy = SemanticPolicy(SemanticConfig(routes=ROUTES, default="chat"),
                            embedder=GeminiEmbedder(engine, dimension=32))
    router = await Router.acreate(config, policy=policy, **otel.providers)
    try:
        report = router.policy.last_sync
    finally:
        await router.aclose()
        await engine.aclose()
    every = [u for us in ROUTES.values() for u in us]
    assert router.build_cost_usd == pytest.approx(_cost(every)) and router.build_cost_estimated
    assert report.collection is None and report.added == report.loaded == 4
    assert report.cost_usd == pytest.approx(_cost(every)) and report.cost_estimated
    (span,) = otel.spans("genroute.routes.sync")
    assert span.attributes["gen_ai.usage.cost.amount"] == pytest.approx(_cost(every))
    assert "genroute.routes.collection" not in span.attributes
