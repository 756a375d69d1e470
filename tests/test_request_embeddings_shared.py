"""Every backend of one request shares its embedding of a text: a fallback rung reuses the vector an earlier rung
made (a cascade RAG -> ICL embedded the question twice, and paid twice), and the shadows reuse the served rung's, or
make it once between them (each embedded it on its own). A vector is charged to whoever made it: a shadow's to the
shadow, never to the served answer. Real embedders (Gemini over the loopback server, counted in its request log;
the offline MiniLM, counted by its spans), real embedded Chroma, real OTel SDK.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from genroute import BackendRejected, Router
from genroute.knowledge.embedders import GeminiEmbedder, aembed_text
from genroute.runtime.billing import estimate_tokens
from genroute.runtime.embeddings import RequestEmbeddings
from genroute.testing import Fault, GeminiTestServer

from .conftest import Otel, budget_usage
from .test_request_embeddings import ANSWER, EMBED, GEMINI, _answer, _config, _embedded, _engine, _fill

QUESTION = "what does the bakery bake on sundays?"


def _router(server: GeminiTestServer, tmp_path: Path, otel: Otel, inner: dict[str, Any],
            embedder: dict[str, Any] | None = GEMINI, **sections: Any) -> Router:
    """A router whose policy is ``inner`` under a budget (so that what each attempt spent is settled there)."""
    config = {**_config(server, tmp_path, embedder), **sections}
    config["backends"]["strict_rag"] = {**config["backends"]["rag"], "max_distance": 0.0}  # finds nothing relevant
    config["policy"] = {"kind": "budget", "per": "global", "budget_usd": 1.0, "inner": inner,
                        "costs": {b: 0.01 for b in config["backends"]}}
    return Router.from_config(config, **otel.providers)


async def _run(router: Router, tmp_path: Path, server: GeminiTestServer, mode: str = "agenerate"
               ) -> tuple[Any, list[str], float]:
    """The result of ``QUESTION``, the texts embedded for it (its shadows done), and what its budget spent."""
    try:
        await _fill(router, tmp_path)
        before = len(_embedded(server))
        result = await _answer(router, QUESTION, mode)
        await router.adrain()
        spent = budget_usage(router)["spent"]
    finally:
        await router.aclose()
    return result, _embedded(server)[before:], spent


@pytest.mark.parametrize("mode", ["agenerate", "astream", "generate"])
async def test_a_fallback_rung_reuses_the_vector_an_earlier_rung_made(gemini_server: GeminiTestServer,
                                                                      tmp_path: Path, otel: Otel, mode: str) -> None:
    cascade = {"kind": "cascade", "rungs": [{"backend": "strict_rag"}, {"backend": "icl"}]}
    result, embedded, spent = await _run(_router(gemini_server, tmp_path, otel, cascade), tmp_path, gemini_server,
                                         mode)
    embedding = estimate_tokens(QUESTION) * EMBED
    assert [(r.backend, r.outcome) for r in result.decision.rungs_tried] == [("strict_rag", "error"), ("icl", "ok")]
    assert embedded == [QUESTION]  # it was [QUESTION, QUESTION]: RAG's retrieval, then ICL's selection
    rag, icl = result.decision.rungs_tried
    assert (rag.cost_usd, icl.cost_usd) == pytest.approx((embedding, ANSWER))  # charged once, to the rung that made it
    assert result.cost_usd == pytest.approx(ANSWER + embedding) and result.cost_estimated
    assert spent == pytest.approx(ANSWER + embedding)
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(ANSWER + embedding)
    assert len([s for s in otel.spans("embeddings") if s.context.trace_id == root.context.trace_id]) == 1


async def test_a_shadow_reuses_the_served_rungs_vector(gemini_server: GeminiTestServer, tmp_path: Path,
                                                       otel: Otel) -> None:
    cascade = {"kind": "cascade", "rungs": [{"backend": "rag"}], "shadow": ["icl"]}
    result, embedded, spent = await _run(_router(gemini_server, tmp_path, otel, cascade), tmp_path, gemini_server)
    embedding = estimate_tokens(QUESTION) * EMBED
    assert result.backend == "rag" and embedded == [QUESTION]  # the shadow embedded it again
    assert result.cost_usd == pytest.approx(ANSWER + embedding)
    (shadow,) = otel.spans("genroute.shadow")
    assert shadow.attributes["genroute.backend"] == "icl" and "error.type" not in shadow.attributes
    assert shadow.attributes["gen_ai.usage.cost.amount"] == pytest.approx(ANSWER)  # a reuse charges nothing
    assert spent == pytest.approx(2 * ANSWER + embedding)


async def test_shadows_embed_a_text_once_between_them_charged_to_the_shadow(gemini_server: GeminiTestServer,
                                                                           tmp_path: Path, otel: Otel) -> None:
    # The served answer embedded nothing; two shadows run at once and both retrieve for the question.
    cascade = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["rag", "icl"]}
    result, embedded, spent = await _run(_router(gemini_server, tmp_path, otel, cascade), tmp_path, gemini_server)
    embedding = estimate_tokens(QUESTION) * EMBED
    assert result.backend == "chat" and embedded == [QUESTION]  # it was twice, once a shadow
    assert result.cost_usd == pytest.approx(ANSWER) and not result.cost_estimated  # never the served answer's
    shadows = otel.spans("genroute.shadow")
    assert sorted(s.attributes["genroute.backend"] for s in shadows) == ["icl", "rag"]
    assert sorted(s.attributes["gen_ai.usage.cost.amount"] for s in shadows) == pytest.approx(
        [ANSWER, ANSWER + embedding])  # the shadow that made it pays for it
    assert spent == pytest.approx(3 * ANSWER + embedding)


@pytest.mark.parametrize("inner,served", [
    ({"kind": "cascade", "rungs": [{"backend": "rag"}], "shadow": ["icl"]}, "rag"),
    ({"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["rag", "icl"]}, "chat"),
], ids=["served-and-shadow", "shadows"])
async def test_a_shadows_outcome_side_counts_the_vector_it_reused(gemini_server: GeminiTestServer, tmp_path: Path,
                                                                  otel: Otel, inner: dict[str, Any],
                                                                  served: str) -> None:
    # Billed once, but compared as if each ran alone: a shadow that reused the served rung's (or another shadow's)
    # vector would otherwise look cheaper than the backend it is compared with by that embedding.
    from genroute.outcomes import OutcomeStore

    router = _router(gemini_server, tmp_path, otel, inner, outcomes={"path": str(tmp_path / "outcomes.db")})
    result, embedded, _ = await _run(router, tmp_path, gemini_server)
    embedding = estimate_tokens(QUESTION) * EMBED
    assert result.backend == served and embedded == [QUESTION]
    records = OutcomeStore(tmp_path / "outcomes.db").records_sync()
    sides = {name: side.cost_usd for record in records for name, side in record.outcomes.items()}
    expected = {"rag": ANSWER + embedding, "icl": ANSWER + embedding, **({"chat": ANSWER} if served == "chat" else {})}
    assert sides == pytest.approx(expected)  # the reusing shadow's side was ANSWER
    assert sum(s.attributes["gen_ai.usage.cost.amount"] for s in otel.spans("genroute.shadow")) == pytest.approx(
        (len(inner["shadow"])) * ANSWER + (embedding if served == "chat" else 0.0))  # billed: once, in the request


@pytest.mark.parametrize("inner", [
    {"kind": "cascade", "rungs": [{"backend": "strict_rag"}, {"backend": "icl"}]},
    {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["rag", "icl"]},
    {"kind": "cascade", "rungs": [{"backend": "rag"}], "shadow": ["icl"]},
], ids=["fallback", "shadows", "served-and-shadow"])
async def test_the_offline_embedder_embeds_a_request_once_across_rungs_and_shadows(
        gemini_server: GeminiTestServer, tmp_path: Path, otel: Otel, inner: dict[str, Any]) -> None:
    router = _router(gemini_server, tmp_path, otel, inner, embedder=None)
    try:
        await _fill(router, tmp_path)
        before = len(otel.spans("embeddings"))
        result = await router.agenerate(QUESTION)
        await router.adrain()
    finally:
        await router.aclose()
    assert result.cost_usd == pytest.approx(ANSWER)  # the offline embedder is free
    assert len(otel.spans("embeddings")[before:]) == 1  # it was 2


async def test_a_shadow_whose_embedding_failed_leaves_the_other_to_make_it(gemini_server: GeminiTestServer) -> None:
    # Two of a request's backends embed the same text at once: one waits for the other's call; when that call fails,
    # the waiter makes its own (it is neither failed with it nor left waiting).
    engine = _engine(gemini_server)
    embedder = GeminiEmbedder(engine, dimension=64)
    embeddings = RequestEmbeddings()
    gemini_server.fault(Fault.status(400))
    try:
        first, second = await asyncio.gather(aembed_text(embedder, QUESTION, embeddings=embeddings),
                                             aembed_text(embedder, QUESTION, embeddings=embeddings),
                                             return_exceptions=True)
        third = await aembed_text(embedder, QUESTION, embeddings=embeddings)
    finally:
        await engine.aclose()
    assert isinstance(first, BackendRejected)
    assert isinstance(second, list) and len(second) == 64 and third == second
    assert _embedded(gemini_server) == [QUESTION, QUESTION]  # the failed call, the waiter's own; the third reused it


async def test_a_reuse_reports_how_long_making_the_vector_took_less_what_it_waited_through() -> None:
    # A reusing shadow's own clock holds none of the making (or only the part it waited for): the reuse reports the
    # maker's recorded duration (minus what the caller waited), so the shadow's latency can count it as its cost does.
    from genroute.runtime.billing import Charges, charging

    embeddings = RequestEmbeddings()

    async def slow() -> list[float]:
        await asyncio.sleep(0.05)
        return [1.0, 0.0]

    async def never() -> list[float]:
        raise AssertionError("made again")

    async def reuse(embed: Any) -> float:
        charges = Charges()
        with charging(charges):
            assert await embeddings.avector("k", QUESTION, embed) == [1.0, 0.0]
        return charges.reused_s

    async def make() -> float:
        charges = Charges()
        with charging(charges):
            await embeddings.avector("k", QUESTION, slow)
        return charges.reused_s

    maker = asyncio.ensure_future(make())
    await asyncio.sleep(0)  # the maker has started making it
    waited_through = await reuse(never)  # waits for the vector being made
    later, again = await reuse(never), await reuse(never)
    assert await maker == 0.0  # the maker's own clock counts its making
    assert later == again >= 0.05  # the recorded duration, each time (the sleep bounds it below)
    assert 0.0 <= waited_through <= later  # the waiter's clock already holds what it waited for


async def test_a_reusing_shadows_outcome_latency_counts_the_embedding_it_reused(gemini_server: GeminiTestServer,
                                                                                tmp_path: Path, otel: Otel) -> None:
    # The served RAG rung's embedding call takes at least DELAY_S (the server holds it); the ICL shadow reuses the
    # vector. Its outcome side had only its own run's time (a loopback answer in milliseconds): it looked faster than
    # the same backend served, where its example selection would have embedded the question itself.
    from genroute.outcomes import OutcomeStore
    from genroute.testing import Fault

    delay_s = 0.5
    inner = {"kind": "cascade", "rungs": [{"backend": "rag"}], "shadow": ["icl"]}
    router = _router(gemini_server, tmp_path, otel, inner, outcomes={"path": str(tmp_path / "outcomes.db")})
    try:
        await _fill(router, tmp_path)
        gemini_server.fault(Fault.delay(delay_s))  # the next call: the served rung's embedding of the question
        result = await router.agenerate(QUESTION)
        await router.adrain()
    finally:
        await router.aclose()
    assert result.backend == "rag" and _embedded(gemini_server)[-1] == QUESTION
    (record,) = OutcomeStore(tmp_path / "outcomes.db").records_sync()
    icl, served = record.outcomes["icl"], record.outcomes["rag"]
    assert served.latency_s >= delay_s  # the served side's clock held it all along
    assert icl.latency_s >= delay_s  # it was the shadow's own run alone
    (shadow,) = otel.spans("genroute.shadow")
    reused_s = shadow.attributes["genroute.shadow.reused_embedding_s"]  # the served rung's recorded duration of it
    assert icl.latency_s > reused_s >= delay_s  # its own run's time, and the embedding's it reused
