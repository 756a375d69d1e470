"""What deciding may cost is held in the budget before the policy embeds the request, and settled once after.

A semantic policy embeds the request with Gemini embeddings (the loopback server; a real embedded Chroma holds
the routes), so deciding is priced; a budget policy wraps it. The budget holds the embedding's estimate before
the request is embedded: a request it has no room for is refused (``BudgetExceeded`` naming the decision) with
nothing embedded, concurrent requests cannot all embed past the limit, and every hold is settled at the real
cost — in process memory and, shared by two routers, in a real Redis. A decision that cannot cost (the offline
embedder) asks the store for nothing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from genroute import BackendRejected, BudgetExceeded, DeadlineExceeded, GenrouteError, Router
from genroute.policies import build_policy
from genroute.policies.challenger import ChallengerPolicy
from genroute.policies.remembered import RememberedEmbeddings
from genroute.state.memory import MemoryStateStore
from genroute.testing import GeminiTestServer

from .conftest import budget_usage
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401
from .test_cost_decision_budget import ANSWER, _config, _embedding, _generates, _until, held_embeddings  # noqa: F401

QUESTIONS = ["rye bread recipe one?", "rye bread recipe two?", "rye bread recipe 3rd?", "rye bread recipe 4th?"]


def _embeds(server: GeminiTestServer) -> int:
    return sum(1 for r in server.requests if r.action in ("batchEmbedContents", "embedContent"))


def _budget(config: dict[str, Any], usd: float) -> dict[str, Any]:
    # Rungs held at 0 and refused by the provider (not billed): the budget then counts the decisions alone.
    config["policy"].update(budget_usd=usd, costs={"chat": 0.0, "other": 0.0})
    return config


def _refuse_answers(server: GeminiTestServer, times: int) -> None:
    server.reply_json({"error": {"code": 400, "message": "no", "status": "INVALID_ARGUMENT"}},
                      path=r".*:generateContent", status=400, times=times)


async def test_a_request_the_budget_cannot_decide_for_is_refused_before_embedding(
        gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    question = QUESTIONS[0]
    router = Router.from_config(_budget(_config(gemini_server, tmp_path), 0.5 * _embedding(question)))
    try:
        embeds = _embeds(gemini_server)  # the routes', when the router was built
        with pytest.raises(BudgetExceeded, match=r"deciding \(the policy embeds the request\) needs up to") as caught:
            await router.agenerate(question)
        usage = budget_usage(router)
    finally:
        await router.aclose()
    assert _embeds(gemini_server) == embeds  # refused before the request was embedded
    assert caught.value.cost_usd == 0.0
    assert usage == {"spent": 0.0, "reserved": 0.0}


async def test_a_downgrading_budget_without_room_to_decide_answers_with_its_cheap_backend(
        gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    question = QUESTIONS[0]
    config = _budget(_config(gemini_server, tmp_path), 0.5 * _embedding(question))
    config["policy"].update(on_exhausted="downgrade", downgrade_to="other")
    router = Router.from_config(config)
    try:
        embeds = _embeds(gemini_server)
        result = await router.agenerate(question)
    finally:
        await router.aclose()
    assert _embeds(gemini_server) == embeds  # not embedded: the budget could not hold it
    assert result.backend == "other" and "no room to decide" in result.decision.reason


async def test_a_decision_whose_embedding_fails_releases_its_hold(gemini_server: GeminiTestServer,
                                                                 tmp_path: Path) -> None:
    router = Router.from_config(_config(gemini_server, tmp_path))
    gemini_server.reply_json({"error": {"code": 400, "message": "no", "status": "INVALID_ARGUMENT"}},
                             path=r".*:batchEmbedContents", status=400)
    try:
        with pytest.raises(GenrouteError) as caught:
            await router.agenerate(QUESTIONS[0])
        usage = await router.admission.budget().usage("*")
    finally:
        await router.aclose()
    assert _generates(gemini_server) == 0 and caught.value.cost_usd == 0.0  # refused by the provider: not billed
    assert usage == {"spent": 0.0, "reserved": 0.0}


async def test_concurrent_decisions_cannot_embed_past_the_budget(gemini_server: GeminiTestServer, tmp_path: Path,
                                                                 held_embeddings: Any) -> None:
    embedding = _embedding(QUESTIONS[0])
    assert {_embedding(q) for q in QUESTIONS} == {embedding}  # one estimate for all four
    router = Router.from_config(_budget(_config(gemini_server, tmp_path), 2.5 * embedding))
    try:
        embeds = _embeds(gemini_server)
        held_embeddings.hold()
        _refuse_answers(gemini_server, times=2)
        tasks = [asyncio.create_task(router.agenerate(q)) for q in QUESTIONS]
        await _until(lambda: _embeds(gemini_server) == embeds + 2 and sum(t.done() for t in tasks) == 2)
        during = await router.admission.budget().usage("*")  # two decisions embedding: their estimates held
        held_embeddings.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        after = await router.admission.budget().usage("*")
    finally:
        await router.aclose()
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    decided = [o for o in outcomes if isinstance(o, BackendRejected)]
    assert len(refused) == 2 and all("deciding" in str(o) for o in refused)
    assert len(decided) == 2 and all(o.cost_usd == pytest.approx(embedding) for o in decided)
    assert _embeds(gemini_server) == embeds + 2  # the two refused were never embedded
    assert during == {"spent": 0.0, "reserved": pytest.approx(2 * embedding)}
    assert after == {"spent": pytest.approx(2 * embedding), "reserved": 0.0}  # settled at the real cost, once


async def test_two_routers_hold_decisions_in_one_redis_budget(gemini_server: GeminiTestServer, tmp_path: Path,
                                                              redis_server: RedisServer, held_embeddings: Any) -> None:
    state = {"kind": "redis", "url": redis_server.url, "prefix": f"h{os.getpid()}:", "timeout_s": 20,
             "connect_timeout_s": 20}
    first, second = QUESTIONS[:2]
    embedding = _embedding(first)
    routers = [Router.from_config(_budget(_config(gemini_server, tmp_path / str(n), state=state), 1.5 * embedding))
               for n in range(2)]
    try:
        embeds = _embeds(gemini_server)
        held_embeddings.hold()
        _refuse_answers(gemini_server, times=1)
        deciding = asyncio.create_task(routers[0].agenerate(first))
        await _until(lambda: _embeds(gemini_server) == embeds + 1)
        seen = await routers[1].admission.budget().usage("*")  # the other process sees the hold
        with pytest.raises(BudgetExceeded, match="deciding"):
            await routers[1].agenerate(second)
        held_embeddings.set()
        with pytest.raises(BackendRejected) as caught:
            await deciding
        shared = [await router.admission.budget().usage("*") for router in routers]
    finally:
        held_embeddings.set()
        for router in routers:
            await router.aclose()
    assert _embeds(gemini_server) == embeds + 1  # the second router's request was not embedded
    assert seen == {"spent": 0.0, "reserved": pytest.approx(embedding)}
    assert caught.value.cost_usd == pytest.approx(embedding)
    assert shared == [{"spent": pytest.approx(embedding), "reserved": 0.0}] * 2


class CountingStore(MemoryStateStore):
    """The process-memory store, counting its admission calls (one per hold taken)."""

    def __init__(self) -> None:
        super().__init__()
        self.admits = 0

    async def admit(self, claims: Any) -> Any:
        self.admits += 1
        return await super().admit(claims)


class GatedStore(MemoryStateStore):
    """The process-memory store answering holds only once ``answer`` is set (a slow network to a shared store);
    ``asked`` is set when a hold is asked for, ``answered`` (if given) runs just before the answer is returned."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        self.answered: Any = None

    async def admit(self, claims: Any) -> Any:
        self.asked.set()
        await self.answer.wait()
        result = await super().admit(claims)
        if self.answered is not None:
            self.answered()
        return result


@pytest.mark.parametrize("ends", ["deadline", "cancelled", "cancelled-as-held"])
async def test_a_request_that_gives_up_while_its_decision_is_held_releases_the_hold(
        gemini_server: GeminiTestServer, tmp_path: Path, ends: str) -> None:
    store = GatedStore()
    router = Router.from_config(_config(gemini_server, tmp_path, timeout_s=0.3 if ends == "deadline" else None),
                                state=store)
    try:
        embeds = _embeds(gemini_server)
        task = asyncio.create_task(router.agenerate(QUESTIONS[0]))
        if ends == "deadline":  # the store answers only after the request's deadline
            with pytest.raises(DeadlineExceeded, match="policy decided"):
                await asyncio.wait_for(task, 60)
            store.answer.set()
        elif ends == "cancelled":  # the caller gives up while the store is taking the hold
            await asyncio.wait_for(store.asked.wait(), 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            store.answer.set()
        else:  # the caller gives up as the store answers: the hold is taken, the request has not seen it yet
            store.answered = task.cancel
            store.answer.set()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 60)
        await router._decisions.finish(60.0)  # the hold is taken after the request gave up, and released
        usage = await router.admission.budget().usage("*")
    finally:
        store.answer.set()
        await router.aclose()
    assert store.asked.is_set() and _embeds(gemini_server) == embeds  # held, never embedded
    assert usage == {"spent": 0.0, "reserved": 0.0}


def test_a_decision_that_cannot_cost_holds_nothing(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    config = _config(gemini_server, tmp_path)
    del config["knowledge"]  # the semantic policy embeds with the offline embedder: deciding is free
    store = CountingStore()
    with Router.from_config(config, state=store) as router:
        assert router.policy.blocking and router.policy.deciding_cost(router._request("rye?", {})) == 0.0
        router.generate("how do I bake rye bread?")
        usage = budget_usage(router)
    assert store.admits == 1  # the rung's hold only
    assert usage["reserved"] == 0.0 and usage["spent"] > 0.0


def test_a_priced_decision_holds_once_per_request(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    store = CountingStore()
    with Router.from_config(_config(gemini_server, tmp_path), state=store) as router:
        router.generate(QUESTIONS[0])
        first = store.admits
        embeds = _embeds(gemini_server)
        assert router.policy.deciding_cost(router._request(QUESTIONS[0], {})) == 0.0  # remembered: nothing to pay
        router.generate(QUESTIONS[0])
        usage = budget_usage(router)
    assert first == 2  # the decision's hold, then the rung's
    assert store.admits == first + 1 and _embeds(gemini_server) == embeds  # again: the rung's hold only
    assert usage["reserved"] == 0.0


def test_wrapping_policies_estimate_what_their_inner_decision_costs(gemini_server: GeminiTestServer,
                                                                    tmp_path: Path) -> None:
    question = QUESTIONS[0]
    with Router.from_config(_config(gemini_server, tmp_path)) as router:
        request = router._request(question, {})
        budget = router.policy
        challenger = ChallengerPolicy(ChallengerPolicy.Config(policy={"kind": "static", "backend": "chat"},
                                                              task="t", backend="other"), inner=budget)
        static = build_policy({"kind": "static", "backend": "chat"})
        assert budget.inner.deciding_cost(request) == pytest.approx(_embedding(question))  # the semantic policy
        assert budget.deciding_cost(request) == challenger.deciding_cost(request) == budget.inner.deciding_cost(request)
        assert static.deciding_cost(request) == 0.0


def test_a_split_arms_budget_holds_and_spends_that_arms_decision(gemini_server: GeminiTestServer,
                                                                 tmp_path: Path) -> None:
    question, field = QUESTIONS[0], "policy.arms.0.policy"
    config = _config(gemini_server, tmp_path)
    config["policy"] = {"kind": "split", "arms": [{"weight": 1, "policy": config["policy"]}]}
    with Router.from_config(config) as router:
        result = router.generate(question)
        usage = budget_usage(router, field=field)
    assert result.cost_usd > _embedding(question)
    assert usage == {"spent": pytest.approx(result.cost_usd), "reserved": 0.0}  # the decision and the rung, once


def test_remembered_embeddings_forget_the_least_recently_used() -> None:
    made: list[str] = []
    remembered = RememberedEmbeddings(lambda text: made.append(text) or text.upper(), size=2)
    assert [remembered(t) for t in ("a", "b", "a", "c")] == ["A", "B", "A", "C"]  # "c" pushes "b" out, not "a"
    assert made == ["a", "b", "c"] and remembered.known("a") and not remembered.known("b")
    remembered.cache_clear()
    assert not remembered.known("a") and not remembered.known("c")
    nothing = RememberedEmbeddings(lambda text: made.append(text) or text, size=0)
    assert nothing("x") == nothing("x") == "x" and made[-2:] == ["x", "x"] and not nothing.known("x")


def test_closing_waits_only_for_late_work_of_its_own_loop():
    """A router used from two loops (sync calls on its portal's, async ones on the application's) may hold late
    decision work of each: ``finish`` waits for the running loop's and leaves the other's to that loop (it used to
    wait on the other loop's too, which this loop never sees done: every close took its whole drain time)."""
    from genroute.router.deciding import CostedDecisions

    decisions = CostedDecisions()
    other = asyncio.new_event_loop()
    try:
        decisions.late.add(other.create_future())  # still pending on a loop that is not running here

        async def main() -> bool:
            mine = asyncio.get_running_loop().create_future()
            decisions._track(mine)
            asyncio.get_running_loop().call_later(0.05, mine.set_result, None)
            await asyncio.wait_for(decisions.finish(60.0), 10)  # returns when its own loop's work is done
            return mine.done()

        assert asyncio.run(main()) is True
        assert len(decisions.late) == 1  # the other loop's, untouched
    finally:
        other.close()


def test_a_decision_that_raises_timeout_error_of_its_own_is_not_taken_for_the_deadline():
    """A decision whose own work times out (a socket timeout, say) raises that ``TimeoutError``: only the request's
    deadline passing is ``expired()`` (a request with no deadline was told its deadline was exceeded)."""
    import time

    from genroute.router.deciding import CostedDecisions

    def decide() -> Any:
        raise TimeoutError("the decision's own call timed out")

    def expired() -> DeadlineExceeded:
        return DeadlineExceeded("deadline exceeded")

    async def main(deadline: float | None) -> None:
        with pytest.raises(TimeoutError, match="own call"):
            await CostedDecisions().run(decide, None, deadline, expired, policy=None, admission=None)  # type: ignore[arg-type]

    asyncio.run(main(None))
    asyncio.run(main(time.monotonic() + 30))


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_a_decision_its_loop_per_call_cut_off_spends_what_its_embedding_cost(
        gemini_server: GeminiTestServer, tmp_path: Path, request: pytest.FixtureRequest, held_embeddings: Any,
        shared: bool) -> None:
    # With a loop per call (asyncio.run per request, a Celery task's), a request whose policy was still embedding it
    # when its loop ended had its decision cancelled there while the worker thread went on embedding (billed): the
    # hold was given back at what the decision had cost when cancelled (nothing yet), so the budget never counted
    # the embedding. It is now settled when the thread ends, at what it cost (Redis gets it with its next call).
    state = {"kind": "redis", "url": request.getfixturevalue("redis_server").url, "prefix": f"l{time.monotonic_ns()}:",
             "timeout_s": 20,
             "connect_timeout_s": 20} if shared else None
    router = Router.from_config(_budget(_config(gemini_server, tmp_path, state=state), 1.0))
    warm, cut, after = "warm the pool up, please", QUESTIONS[0], QUESTIONS[1]
    try:
        async def left_embedding() -> None:
            await router.agenerate(warm)  # this loop's pool has its connection
            embeds = _embeds(gemini_server)
            held_embeddings.hold()
            asyncio.ensure_future(router.agenerate(cut))
            while _embeds(gemini_server) == embeds:  # the embedding is asked for; its answer waits
                await asyncio.sleep(0.01)
            # Answered once asyncio.run, returning, has cancelled the request (it then waits for the worker thread).
            threading.Timer(1.0, held_embeddings.set).start()

        asyncio.run(left_embedding())
        asyncio.run(router.agenerate(after))  # a new loop: what the cut-off decision owed is sent first
        usage = budget_usage(router)
    finally:
        router.close()
    embedded = _embedding(warm) + _embedding(cut) + _embedding(after)
    assert usage == {"spent": pytest.approx(2 * ANSWER + embedded), "reserved": 0.0}  # two answers, three embeddings
