"""A semantic decision's embedding of the request is spent in the budget once, however the request ends.

The decision embeds the request with Gemini embeddings (the loopback server, a real embedded Chroma holding the
routes), so it is priced; a budget policy wraps the semantic policy. Its spend must hold the embedding and the
rung, no more and no less, when the answer comes back, when the backend refuses, when the request times out
while the rung runs and when it times out while the policy is still embedding — in process memory and, shared
by two routers, in a real Redis.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genroute import BackendRejected, DeadlineExceeded, Router
from genroute.runtime.billing import estimate_tokens
from genroute.runtime.pricing import DEFAULT_PRICES
from genroute.testing import GeminiTestServer, Reply
from genroute.testing.replies import embed_response

from .conftest import TEST_KEY, Otel, budget_usage
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401

EMBED = DEFAULT_PRICES["gemini-embedding-001"].input / 1e6  # USD per input token
FLASH_IN, FLASH_OUT = (DEFAULT_PRICES["gemini-2.5-flash"].input / 1e6, DEFAULT_PRICES["gemini-2.5-flash"].output / 1e6)
USAGE = (100, 10)
ANSWER = USAGE[0] * FLASH_IN + USAGE[1] * FLASH_OUT
ROUTES = {"chat": ["bake bread", "rye sourdough"], "other": ["weather in Paris"]}


def _embedding(text: str) -> float:
    return estimate_tokens(text) * EMBED


def _config(server: GeminiTestServer, tmp_path: Path, *, state: dict[str, Any] | None = None,
            timeout_s: float | None = None) -> dict[str, Any]:
    server.default_reply = lambda request: Reply(parts=({"text": "ok"},), usage=USAGE)
    flash = {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}
    config: dict[str, Any] = {
        "engines": {"g": {"kind": "gemini", "base_url": server.base_url, "api_key": TEST_KEY,
                          "retry": {"attempts": 1}}},
        "knowledge": {"path": str(tmp_path / "chroma"),
                      "embedder": {"kind": "gemini", "engine": "g", "dimension": 64}},
        "backends": {"chat": flash, "other": flash},
        "policy": {"kind": "budget", "per": "global", "budget_usd": 1.0, "costs": {"chat": 0.01, "other": 0.01},
                   "inner": {"kind": "semantic", "routes": ROUTES, "default": "chat"}},
    }
    if state is not None:
        config["state"] = state
    if timeout_s is not None:
        config["timeout_s"] = timeout_s
    return config


@pytest.fixture
def held_embeddings(gemini_server: GeminiTestServer) -> Iterator[threading.Event]:
    """Install with ``hold()``: embedding answers then wait until the event is set (set at the end regardless)."""
    gate = threading.Event()

    def answer(server: GeminiTestServer, request: Any, match: Any) -> dict[str, Any]:
        gate.wait(60)  # bounds a hang only
        return embed_response(request.action or "", request.body, server.embedding_dim, tokens=server.embed_tokens)

    gate.hold = lambda: gemini_server.route("POST", r"/[^/]+/[^:]+:(embedContent|batchEmbedContents)", answer)
    try:
        yield gate
    finally:
        gate.set()


async def _until(predicate: Any, seconds: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not predicate():
        assert loop.time() < end, "timed out waiting"
        await asyncio.sleep(0.01)


def _generates(server: GeminiTestServer) -> int:
    return sum(1 for r in server.requests if r.action == "generateContent")


async def test_an_answered_requests_decision_is_spent_once(gemini_server: GeminiTestServer, tmp_path: Path,
                                                           otel: Otel) -> None:
    question = "how do I bake rye bread at home?"
    router = Router.from_config(_config(gemini_server, tmp_path), **otel.providers)
    try:
        result = await router.agenerate(question)
        repeated = await router.agenerate(question)  # the policy remembers the embedding: nothing more to spend
        spent = budget_usage(router)["spent"]
    finally:
        await router.aclose()
    embedding = _embedding(question)
    assert result.cost_usd == pytest.approx(ANSWER + embedding) and result.cost_estimated
    assert result.decision.rungs_tried[0].cost_usd == pytest.approx(ANSWER)  # the rung's own cost
    assert repeated.cost_usd == pytest.approx(ANSWER)
    assert spent == pytest.approx(2 * ANSWER + embedding)  # the embedding once, each answer once
    first = min(otel.spans("genroute.generate"), key=lambda s: s.start_time)
    assert first.attributes["gen_ai.usage.cost.amount"] == pytest.approx(ANSWER + embedding)
    assert first.attributes["genroute.cost.estimated"] is True


async def test_a_refused_requests_decision_is_spent(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    question = "weather in Paris tomorrow?"
    router = Router.from_config(_config(gemini_server, tmp_path))
    gemini_server.reply_json({"error": {"code": 400, "message": "bad request", "status": "INVALID_ARGUMENT"}},
                             path=r".*:generateContent", status=400)
    try:
        with pytest.raises(BackendRejected) as caught:
            await router.agenerate(question)
        spent = budget_usage(router)["spent"]
    finally:
        await router.aclose()
    embedding = _embedding(question)
    assert _generates(gemini_server) == 1  # sent and refused: the provider bills nothing for it
    assert caught.value.cost_usd == pytest.approx(embedding) and caught.value.cost_estimated
    assert spent == pytest.approx(embedding)


async def test_a_request_timed_out_in_its_rung_spends_its_decision(gemini_server: GeminiTestServer,
                                                                   tmp_path: Path) -> None:
    question = "rye sourdough starter tips"
    router = Router.from_config(_config(gemini_server, tmp_path, timeout_s=2.0))
    answer = threading.Event()  # the answer comes after the request's deadline (set when the test ends)
    gemini_server.default_reply = lambda request: (answer.wait(60), Reply(parts=({"text": "late"},), usage=USAGE))[1]
    try:
        with pytest.raises(DeadlineExceeded) as caught:
            await router.agenerate(question)
        spent = budget_usage(router)["spent"]
    finally:
        answer.set()
        await router.aclose(drain_s=0.1)
    error = caught.value
    embedding = _embedding(question)
    assert _generates(gemini_server) == 1
    # The timed-out attempt is billed at its estimated input; the decision's embedding comes on top, once.
    assert error.cost_usd > embedding and error.cost_estimated
    assert spent == pytest.approx(error.cost_usd)


async def test_a_decision_that_outlives_its_request_is_spent_when_it_ends(gemini_server: GeminiTestServer,
                                                                         tmp_path: Path, held_embeddings: Any) -> None:
    question = "bake bread without yeast"
    router = Router.from_config(_config(gemini_server, tmp_path, timeout_s=0.5))
    held_embeddings.hold()  # the decision's embedding is answered only after the request's deadline
    try:
        with pytest.raises(DeadlineExceeded, match="policy decided") as caught:
            await router.agenerate(question)
        assert _generates(gemini_server) == 0
        assert caught.value.cost_usd == 0.0  # raised before the embedding's cost was known (docs/costs.md says so)
        # The embedding is still on its way: it is spent when it is answered, after the request gave up.
        held_embeddings.set()
        await router._decisions.finish(60.0)
        spent = (await router.admission.budget().usage("*"))["spent"]
        await router._decisions.finish(60.0)  # nothing else to wait for: spent once
        again = await router.admission.budget().usage("*")
    finally:
        await router.aclose()
    assert spent == pytest.approx(_embedding(question))
    assert again == {"spent": spent, "reserved": 0.0}  # once, and its hold released


def test_two_routers_spend_their_decisions_in_one_redis_budget(gemini_server: GeminiTestServer, tmp_path: Path,
                                                               redis_server: RedisServer) -> None:
    state = {"kind": "redis", "url": redis_server.url, "prefix": f"d{os.getpid()}:", "timeout_s": 20,
             "connect_timeout_s": 20}
    questions = ["how long to proof rye dough?", "is it raining in Paris?"]
    routers = [Router.from_config(_config(gemini_server, tmp_path / str(n), state=state)) for n in range(2)]
    try:
        for router, question in zip(routers, questions, strict=True):
            router.generate(question)
        gemini_server.reply_json({"error": {"code": 400, "message": "no", "status": "INVALID_ARGUMENT"}},
                                 path=r".*:generateContent", status=400)
        with pytest.raises(BackendRejected):
            routers[0].generate("a refused question about bread")
        shared = [budget_usage(router)["spent"] for router in routers]
    finally:
        for router in routers:
            router.close()
    expected = 2 * ANSWER + sum(map(_embedding, questions)) + _embedding("a refused question about bread")
    assert shared == [pytest.approx(expected)] * 2  # one account, seen alike from both routers


async def test_a_cancelled_request_spends_its_decision_once(gemini_server: GeminiTestServer, tmp_path: Path,
                                                            held_embeddings: Any) -> None:
    question = "rye bread for a cancelled caller"
    router = Router.from_config(_config(gemini_server, tmp_path))
    held_embeddings.hold()  # the decision's embedding is answered after the caller gave up
    try:
        sent = len(gemini_server.requests)  # the routes' embedding, when the router was built
        task = asyncio.create_task(router.agenerate(question))
        await _until(lambda: len(gemini_server.requests) > sent)  # the decision's embedding is on its way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held_embeddings.set()
        await router._decisions.finish(60.0)
        spent = (await router.admission.budget().usage("*"))["spent"]
        reserved = (await router.admission.budget().usage("*"))["reserved"]
    finally:
        await router.aclose()
    assert _generates(gemini_server) == 0
    assert spent == pytest.approx(_embedding(question))
    assert reserved == 0.0  # the decision's hold is settled, not left to lapse


def test_a_preview_carries_what_deciding_cost_and_spends_nothing(gemini_server: GeminiTestServer, tmp_path: Path,
                                                                 otel: Otel) -> None:
    question = "how long should rye dough proof?"
    with Router.from_config(_config(gemini_server, tmp_path), **otel.providers) as router:
        routes = len(otel.spans("embeddings"))  # the routes' own embeddings, made when the router was built
        decision = router.decide(question)
        again = router.decide(question)  # the policy remembers the embedding: nothing more to pay
        chosen = router.decide(question + " today", backend="other")  # an explicit backend: the policy is not asked
        usage = budget_usage(router)
    assert _generates(gemini_server) == 0  # a preview generates nothing
    embedding = _embedding(question)
    assert decision.rungs[0].backend == "chat"
    assert decision.cost_usd == pytest.approx(embedding) and decision.cost_estimated  # the API counts no tokens
    assert (again.cost_usd, again.cost_estimated) == (0.0, False)
    assert (chosen.rungs[0].backend, chosen.cost_usd, chosen.cost_estimated) == ("other", 0.0, False)
    assert usage == {"spent": 0.0, "reserved": 0.0}  # a preview is not a request: nothing held, nothing spent
    (embedded,) = otel.spans("embeddings")[routes:]
    assert embedded.attributes["gen_ai.usage.cost.amount"] == pytest.approx(decision.cost_usd)


async def test_an_async_preview_embeds_off_the_event_loop(gemini_server: GeminiTestServer, tmp_path: Path,
                                                           held_embeddings: Any) -> None:
    # decide() embedded the request on the caller's thread: inside a running loop it blocked that loop.
    question = "how long should rye dough proof?"
    router = Router.from_config(_config(gemini_server, tmp_path))
    held_embeddings.hold()
    try:
        sent = len(gemini_server.requests)  # the routes' embedding, when the router was built
        task = asyncio.create_task(router.adecide(question))
        await _until(lambda: len(gemini_server.requests) > sent)  # the loop runs on while the request is embedded
        assert not task.done()
        held_embeddings.set()
        decision = await task
        usage = await router.admission.budget().usage("*")
    finally:
        await router.aclose()
    assert _generates(gemini_server) == 0
    assert decision.rungs[0].backend == "chat"
    assert decision.cost_usd == pytest.approx(_embedding(question)) and decision.cost_estimated
    assert usage == {"spent": 0.0, "reserved": 0.0}  # a preview is not a request


def test_a_preview_of_a_policy_that_embeds_nothing_costs_nothing(gemini_server: GeminiTestServer,
                                                                 tmp_path: Path) -> None:
    config = _config(gemini_server, tmp_path)
    config["policy"] = {"kind": "static", "backend": "other"}
    with Router.from_config(config) as router:
        decision = router.decide("how long should rye dough proof?")
    assert (decision.rungs[0].backend, decision.cost_usd, decision.cost_estimated) == ("other", 0.0, False)
