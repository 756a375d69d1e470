"""Outcomes written while Redis is unreachable reach the shared log once it answers again: each once, in order.

Real parts only: a real ``redis-server`` (CI fails without it), a loopback TCP proxy in front of it for a network
partition and for a reply lost on the way back (the server ran the script, the client never heard of it), a
server killed with SIGKILL and restarted from its append-only file, and another process reading the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genroute import Router, StateUnavailable
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side
from genroute.outcomes.shared import SharedOutcomeStore
from genroute.state import ListReplay, RedisStateConfig
from genroute.state.redis_script import Push
from genroute.state.redis_store import REPLAY_BATCH, RedisStateStore
from genroute.state.unsent import UnsentWrites

from .chroma_fixtures import free_port
from .conftest import race
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401
from .state_worker import spawn
from .tcp_proxy import tcp_proxy
from .test_outcomes import config

RETRY_S = 0.2
#: Redis timeouts that only bound a hang: the outages here close connections (proxy) or refuse them (a killed
#: server), which the client sees at once; a loaded machine must not turn a slow reply into an outage.
TIMEOUT_S = 20.0


def _store(url: str, prefix: str, on_error: str = "open") -> RedisStateStore:
    return RedisStateStore(RedisStateConfig(kind="redis", url=url, prefix=prefix, on_error=on_error,
                                            retry_s=RETRY_S, timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S))


def served(id: str, at: float | None = None) -> OutcomeRecord:
    return OutcomeRecord(metadata={"id": id, "task": "t", "served": "chat", "at": time.time() if at is None else at},
                         outcomes={"chat": Side(cost_usd=0.5)})


def feedback(id: str, score: float) -> OutcomeRecord:
    return OutcomeRecord(metadata={"id": id, "feedback": {"score": score}}, outcomes={"chat": Side(score=score)})


def shared_log(server: RedisServer, prefix: str) -> tuple[list[tuple[str, bool]], list[dict[str, Any]]]:
    """Another process's view: the log's writes as (id, is feedback), and the records it merges from them."""
    worker = spawn("log", server.url, prefix)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    found = json.loads(out)
    return [(w["metadata"]["id"], "feedback" in w["metadata"]) for w in found["log"]], found["records"]


async def test_writes_made_during_a_partition_reach_the_shared_log_once_in_order(redis_server: RedisServer) -> None:
    with tcp_proxy(redis_server.port) as proxy:
        state = _store(proxy.url, "part:")
        outcomes = SharedOutcomeStore(state, max_items=100)
        other_state = _store(redis_server.url, "part:", on_error="closed")
        other = SharedOutcomeStore(other_state, max_items=100)  # another router on the same Redis
        for id in ("a0", "a1"):
            await outcomes.upsert(served(id))
        proxy.partition()
        await outcomes.upsert(served("d0"))
        await outcomes.upsert(feedback("a1", 1.0))  # feedback during the outage, for a record written before it
        await outcomes.upsert(served("d1"))
        await outcomes.upsert(feedback("d0", 0.0))  # and for one written during it
        await other.upsert(served("c0"))  # the other router goes on writing meanwhile
        assert state.degraded and state.replays("outcomes") == ListReplay(0, 0, 4)
        assert [r.id for r in await outcomes.records()] == ["a0", "a1", "d0", "d1"]  # its own view meanwhile
        proxy.heal()
        await asyncio.sleep(RETRY_S + 0.05)
        await outcomes.upsert(served("after"))
        assert not state.degraded and (outcomes.replayed, outcomes.dropped) == (4, 0)
        mine = await outcomes.records()
        theirs = await other.records()
        await state.aclose()
        await other_state.aclose()
    log, records = shared_log(redis_server, "part:")
    assert log == [("a0", False), ("a1", False), ("c0", False), ("d0", False), ("a1", True), ("d1", False),
                   ("d0", True), ("after", False)]  # each write once, this process's in the order it made them
    assert [r["metadata"]["id"] for r in records] == ["a0", "a1", "c0", "d0", "d1", "after"]
    assert [r.line() for r in theirs] == records
    scores = {r["metadata"]["id"]: r["outcomes"]["chat"].get("score") for r in records}
    assert scores == {"a0": None, "a1": 1.0, "c0": None, "d0": 0.0, "d1": None, "after": None}
    # This process read its outage writes from memory first: the same records, each once, in that order.
    assert [r.id for r in mine] == ["a0", "a1", "d0", "d1", "c0", "after"]
    assert {r.id: r.line() for r in mine} == {r["metadata"]["id"]: r for r in records}
    # It went back to the shared list where it left it: nothing read twice from its head, nothing skipped.
    assert outcomes.resets == 2 and outcomes.skipped == 0


@pytest.mark.parametrize("cut", [1, 2], ids=["first-batch", "second-batch"])
async def test_a_replay_cut_off_by_a_second_outage_sends_each_write_once(redis_server: RedisServer, cut: int) -> None:
    n = 2 * REPLAY_BATCH + 50  # three batches
    with tcp_proxy(redis_server.port) as proxy:
        state = _store(proxy.url, "cut:")
        outcomes = SharedOutcomeStore(state, max_items=1000)
        await outcomes.upsert(served("before"))
        proxy.partition()
        for i in range(n):
            await outcomes.upsert(served(f"d{i}"))
        proxy.heal()
        await asyncio.sleep(RETRY_S + 0.05)
        # The server runs the `cut`-th batch of the replay, but its reply is lost: a second outage, mid-replay.
        proxy.cut_reply(cut)
        await outcomes.upsert(feedback("d0", 1.0))
        assert proxy.cuts == 1 and state.degraded
        sent = (cut - 1) * REPLAY_BATCH  # the batches acknowledged before the cut
        assert state.replays("outcomes") == ListReplay(sent, 0, n - sent + 1)  # the cut batch was kept
        await asyncio.sleep(RETRY_S + 0.05)
        await outcomes.upsert(served("after"))
        assert state.replays("outcomes") == ListReplay(n + 1, 0, 0)
        assert [r.id for r in await outcomes.records()] == ["before", *(f"d{i}" for i in range(n)), "after"]
        await state.aclose()
    log, records = shared_log(redis_server, "cut:")
    # The cut batch ran twice on the server; its writes are in the log once (their ids were marked).
    assert log == [("before", False), *((f"d{i}", False) for i in range(n)), ("d0", True), ("after", False)]
    assert records[1]["outcomes"]["chat"]["score"] == 1.0


async def test_what_is_kept_for_replay_is_bounded_and_what_is_dropped_is_counted(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    with tcp_proxy(redis_server.port) as proxy:
        state = _store(proxy.url, "bound:")
        capped = SharedOutcomeStore(state, max_items=3)
        aged = SharedOutcomeStore(state, key="aged", max_items=None, max_age_s=60.0)
        proxy.partition()
        with caplog.at_level(logging.WARNING, logger="genroute.state.redis_store"):
            for i in range(5):  # the list keeps 3: so does what waits for it
                await capped.upsert(served(f"d{i}"))
            await aged.upsert(served("old", at=time.time() - 61.0))
            now = state._unsent.clock
            state._unsent.clock = lambda: now() + 61.0  # a minute on: "old" waited longer than the list keeps it
            await aged.upsert(served("new"))
        assert state.replays("outcomes") == ListReplay(0, 2, 3)
        assert "will not be replayed to it (more than 3 waiting)" in caplog.text
        proxy.heal()
        await asyncio.sleep(RETRY_S + 0.05)
        assert [r.id for r in await capped.records()] == ["d2", "d3", "d4"]
        assert (capped.replayed, capped.dropped) == (3, 2)
        assert [r.id for r in await aged.records()] == ["new"]  # "old" would have aged out of the list by now
        assert (aged.replayed, aged.dropped) == (1, 1)
        await state.aclose()
    log, _ = shared_log(redis_server, "bound:")
    assert log == [("d2", False), ("d3", False), ("d4", False)]


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of its own that writes every change to its append-only file before answering."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(free_port(), tmp_path / "redis.log", data_dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _down(server: RedisServer, *, kill: bool = False) -> Iterator[None]:
    """``server`` stopped for the block, then started again and, ``retry_s`` later, used again."""
    server.stop(kill=kill)
    try:
        yield
    finally:
        server.start()
    time.sleep(RETRY_S + 0.1)


def _ask(gemini_server: Any, router: Router) -> str:
    """One request answered by chat and shadowed by pro, its shadow drained: its outcome id."""
    gemini_server.reply_text("positive", usage=(100, 5))  # served (flash)
    gemini_server.reply_text("negative", usage=(120, 6))  # shadow (pro)
    result = router.generate("The food was great.", task="sentiment")
    router.drain()
    return result.outcome_id


def test_a_router_s_outcomes_and_feedback_during_an_outage_reach_other_routers_and_the_archive_once(
        gemini_server, otel, tmp_path: Path, persistent_redis: RedisServer) -> None:
    cfg = config(gemini_server, tmp_path)  # chat served, pro shadowed, label_accuracy scorer
    cfg["outcomes"]["path"] = str(tmp_path / "archive.db")
    cfg["state"] = {"kind": "redis", "url": persistent_redis.url, "prefix": "kill:", "on_error": "open",
                    "retry_s": RETRY_S, "timeout_s": TIMEOUT_S, "connect_timeout_s": TIMEOUT_S}

    ask = functools.partial(_ask, gemini_server)

    with Router.from_config(cfg, **otel.providers) as router:
        before = ask(router)
        with _down(persistent_redis, kill=True):  # SIGKILL: what it answered is in its append-only file
            during = [ask(router), ask(router)]
            router.feedback(during[0], label="positive")
            router.feedback(before, score=0.0)
        after = ask(router)
        store = router._executor.outcomes.store
        assert (store.replayed, store.dropped) == (4, 0)  # two shadow pairs and two feedbacks
        mine = router._portal.call(store.records())
    (point,) = otel.metrics()["genroute.state.replays"].data.data_points
    assert point.value == 4 and dict(point.attributes) == {"genroute.state.list": "outcomes",
                                                           "genroute.state.replay": "replayed"}
    ids = [before, *during, after]
    log, records = shared_log(persistent_redis, "kill:")
    assert log == [(before, False), (during[0], False), (during[1], False), (during[0], True), (before, True),
                   (after, False)]
    assert [r["metadata"]["id"] for r in records] == ids
    scores = [(r["outcomes"]["chat"].get("score"), r["outcomes"]["pro"].get("score")) for r in records]
    assert scores == [(0.0, None), (1.0, 0.0), (None, None), (None, None)]
    # The archive beside the shared store: every record once, merged as the log merges them.
    archive = OutcomeStore(tmp_path / "archive.db")
    assert archive.count_sync() == 4 and [r.line() for r in archive.records_sync()] == records
    assert [r.line() for r in mine] == records
    # Another router started now (its own archive) reads the same from the shared log.
    other_cfg = {**cfg, "outcomes": {**cfg["outcomes"], "path": str(tmp_path / "other.db")}}
    with Router.from_config(other_cfg) as other:
        theirs = other._portal.call(other._executor.outcomes.store.records())
    assert [r.line() for r in theirs] == records
    assert OutcomeStore(tmp_path / "other.db").count_sync() == 4


def test_with_on_error_closed_the_outcomes_of_requests_that_ran_during_an_outage_are_kept_and_replayed(
        gemini_server, tmp_path: Path, persistent_redis: RedisServer) -> None:
    # Fail closed refuses what would be admitted against the store, never what already ran: a router with no gate
    # answers while Redis is down, and its outcomes (shadow pairs, a feedback) were dropped; they are kept and written
    # once Redis answers, like a settle. A request the store's outage refused has no outcome.
    cfg = config(gemini_server, tmp_path)  # chat served, pro shadowed, label_accuracy scorer; no gate
    cfg["state"] = {"kind": "redis", "url": persistent_redis.url, "prefix": "closed:", "on_error": "closed",
                    "retry_s": RETRY_S, "timeout_s": TIMEOUT_S, "connect_timeout_s": TIMEOUT_S}
    budgeted = {**cfg, "policy": {"kind": "budget", "inner": cfg["policy"], "per": "global", "budget_usd": 100.0,
                                  "costs": {"chat": 0.01, "pro": 0.01}},
                "outcomes": {**cfg["outcomes"], "path": str(tmp_path / "budgeted.db")}}

    ask = functools.partial(_ask, gemini_server)

    with Router.from_config(cfg) as router, Router.from_config(budgeted) as refusing:
        before = ask(router)
        with _down(persistent_redis):
            during = [ask(router), ask(router)]
            with pytest.raises(StateUnavailable) as refused:
                router.feedback(during[0], label="positive")
            assert refused.value.kept
            with pytest.raises(StateUnavailable) as not_run:  # its budget could not be held: nothing ran
                refusing.generate("The food was great.", task="sentiment")
            assert not not_run.value.kept
        after = ask(router)
        store = router._executor.outcomes.store
        assert (store.replayed, store.dropped) == (3, 0)  # two shadow pairs and a feedback
        assert router._executor.outcomes.write_errors == 0
    log, records = shared_log(persistent_redis, "closed:")
    assert log == [(before, False), (during[0], False), (during[1], False), (during[0], True), (after, False)]
    scores = [(r["outcomes"]["chat"].get("score"), r["outcomes"]["pro"].get("score")) for r in records]
    assert scores == [(None, None), (1.0, 0.0), (None, None), (None, None)]


async def test_a_write_whose_reply_was_lost_as_the_outage_began_is_merged_once(redis_server: RedisServer) -> None:
    with tcp_proxy(redis_server.port) as proxy:
        state = _store(proxy.url, "lost:")
        outcomes = SharedOutcomeStore(state, max_items=100)
        await outcomes.upsert(served("a"))
        proxy.cut_reply(1)  # Redis appends "b"; the process never hears of it and keeps "b" for the replay
        await outcomes.upsert(feedback("a", 1.0))
        assert proxy.cuts == 1 and state.degraded
        await asyncio.sleep(RETRY_S + 0.05)
        await outcomes.upsert(served("c"))
        await state.aclose()
    log, records = shared_log(redis_server, "lost:")
    # The first try carried no id (a marker a write would cost Redis memory for a day): the replay appends it again.
    assert log == [("a", False), ("a", True), ("a", True), ("c", False)]
    assert [(r["metadata"]["id"], r["outcomes"]["chat"].get("score")) for r in records] == [("a", 1.0), ("c", None)]


async def test_writes_racing_the_replay_land_after_it_and_a_closing_store_sends_what_waits(
        redis_server: RedisServer) -> None:
    with tcp_proxy(redis_server.port) as proxy:
        state = _store(proxy.url, "race:")
        outcomes = SharedOutcomeStore(state, max_items=1000)
        await outcomes.upsert(served("before"))
        proxy.partition()
        for i in range(2 * REPLAY_BATCH):
            await outcomes.upsert(served(f"d{i}"))
        proxy.heal()
        await asyncio.sleep(RETRY_S + 0.05)
        # Twenty writes at once: one of them replays (two batches), the others wait for it, then append.
        await asyncio.gather(*(outcomes.upsert(served(f"r{i}")) for i in range(20)))
        log, _ = shared_log(redis_server, "race:")
        assert log[:1 + 2 * REPLAY_BATCH] == [("before", False), *((f"d{i}", False) for i in range(2 * REPLAY_BATCH))]
        assert sorted(log[1 + 2 * REPLAY_BATCH:]) == sorted((f"r{i}", False) for i in range(20))
        # Another outage; Redis is back by the time the router closes: what waits is sent then.
        proxy.partition()
        await outcomes.upsert(served("last"))
        proxy.heal()
        await asyncio.sleep(RETRY_S + 0.05)
        await state.aclose()
        assert state.replays("outcomes") == ListReplay(2 * REPLAY_BATCH + 1, 0, 0)
    log, _ = shared_log(redis_server, "race:")
    assert len(log) == len(set(log)) == 1 + 2 * REPLAY_BATCH + 20 + 1 and log[-1] == ("last", False)


async def test_a_second_outage_does_not_merge_the_first_one_s_writes_again(redis_server: RedisServer) -> None:
    with tcp_proxy(redis_server.port) as proxy:
        state = _store(proxy.url, "twice:")
        outcomes = SharedOutcomeStore(state, max_items=100)
        other_state = _store(redis_server.url, "twice:", on_error="closed")
        other = SharedOutcomeStore(other_state, max_items=100)
        await outcomes.upsert(served("x"))
        proxy.partition()
        await outcomes.upsert(feedback("x", 1.0))  # into memory (and replayed later)
        proxy.heal()
        await asyncio.sleep(RETRY_S + 0.05)
        assert (await outcomes.get("x")).outcomes["chat"].score == 1.0
        await other.upsert(feedback("x", 0.0))  # a later verdict, from another router
        assert (await outcomes.get("x")).outcomes["chat"].score == 0.0
        proxy.partition()  # back in memory: only what is new there is read, not the first outage's feedback
        assert (await outcomes.get("x")).outcomes["chat"].score == 0.0
        await outcomes.upsert(served("y"))
        assert [r.id for r in await outcomes.records()] == ["x", "y"]
        assert (await outcomes.get("x")).outcomes["chat"].score == 0.0
        proxy.heal()
        await asyncio.sleep(RETRY_S + 0.05)
        await outcomes.records()  # its next call to Redis replays first
        assert [r.id for r in await other.records()] == ["x", "y"] and outcomes.replayed == 2
        await state.aclose()
        await other_state.aclose()


async def test_only_appends_wait_for_a_replay_running_in_another_call(redis_server: RedisServer) -> None:
    with tcp_proxy(redis_server.port) as proxy:
        state = _store(proxy.url, "nowait:")
        outcomes = SharedOutcomeStore(state, max_items=10_000)
        await outcomes.upsert(served("before"))
        proxy.partition()
        for i in range(2 * REPLAY_BATCH):  # two batches to replay
            await outcomes.upsert(served(f"d{i}"))
        proxy.heal()
        await asyncio.sleep(RETRY_S + 0.05)
        replaying = state._client().replaying
        async with replaying:  # another call of this loop is replaying (it holds the replay's lock) ...
            # ... an outcome write waits for it, so that it lands after the writes made before it ...
            appending = asyncio.create_task(state.append(
                "outcomes", served("late").model_dump_json(exclude_unset=True).encode(), max_items=10_000))
            # ... while a budget read (an admission) is answered meanwhile, and does not replay either.
            assert await asyncio.wait_for(state.usage("tenant"), TIMEOUT_S) == (0, 0)
            assert not appending.done() and state.replays("outcomes").waiting == 2 * REPLAY_BATCH
        await asyncio.wait_for(appending, TIMEOUT_S)  # the lock free: the write replays what waits, then lands
        assert state.replays("outcomes") == ListReplay(2 * REPLAY_BATCH, 0, 0) and not state.degraded
        await state.aclose()
    log, _ = shared_log(redis_server, "nowait:")
    assert log == [("before", False), *((f"d{i}", False) for i in range(2 * REPLAY_BATCH)), ("late", False)]


def test_the_waiting_writes_are_shared_safely_by_threads() -> None:
    """A store used from several event loops (threads) shares one queue: nothing taken twice, nothing lost."""
    reported: list[tuple[str, str, int]] = []
    unsent = UnsentWrites(lambda key, fate, n: reported.append((key, fate, n)))
    taken: list[str] = []

    def write(name: str) -> None:
        for i in range(5_000):
            unsent.push(Push("outcomes", b"x", None, None), f"{name}-{i}")

    def send() -> None:
        for _ in range(400):
            batch = unsent.take(REPLAY_BATCH)
            if len(batch) % 2:  # give some back, as a failed send does
                unsent.give_back(batch[:1])
                batch = batch[1:]
            unsent.sent(batch)
            taken.extend(entry[1] for entry in batch)

    assert race(*(functools.partial(write, name) for name in "abcd"), send, send) == []
    left = [entry[1] for entry in unsent.take(10 ** 6)]
    assert len(taken) + len(left) == 20_000 and len(set(taken + left)) == 20_000
    assert unsent.counts("outcomes") == ListReplay(len(taken), 0, 0)
    assert sum(n for _, fate, n in reported if fate == "replayed") == len(taken)


def test_looking_at_the_waiting_writes_is_safe_while_threads_add_lists() -> None:
    """Whether writes wait, how many, and a list's counts are read while other threads start new lists' queues."""
    unsent = UnsentWrites(lambda key, fate, n: None)
    written = threading.Event()

    def write() -> None:
        for i in range(20_000):
            unsent.push(Push(f"list-{i}", b"x", None, None), str(i))
        written.set()

    def look() -> None:
        while not written.is_set():
            bool(unsent)
            unsent.waiting()
            unsent.counts("list-0")

    assert race(write, look) == []
    assert unsent.waiting() == 20_000


def test_a_router_without_admission_gates_counts_its_state_fallbacks(gemini_server, tmp_path, otel) -> None:
    # Outcome writes go through the state store too: a router with no budget, rate limit or breaker still counts
    # the calls its unreachable Redis left to process memory (genroute.state.fallbacks).
    cfg = config(gemini_server, tmp_path)  # a shadowed static policy: its shadow run writes the outcome record
    cfg["state"] = {"kind": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "on_error": "open",
                    "retry_s": RETRY_S, "timeout_s": TIMEOUT_S, "connect_timeout_s": TIMEOUT_S}  # nothing listens
    gemini_server.reply_text("positive")
    gemini_server.reply_text("negative")
    with Router.from_config(cfg, **otel.providers) as router:
        assert router._executor.admission is None  # no gates: its attempts pass none
        router.generate("The food was great.", task="sentiment")
        router.drain()
    fallbacks = otel.metrics()["genroute.state.fallbacks"]
    assert sum(p.value for p in fallbacks.data.data_points) >= 1


async def test_a_flapping_state_store_warns_of_the_switched_outcome_list_once_a_minute(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Each outage switches a reader to the fallback memory's list and back: each switch warned ("reading it from
    position 0"), so a state store flapping every few seconds filled the log. Three outages here: six switches,
    counted in ``resets``, one warning."""
    with caplog.at_level(logging.WARNING, logger="genroute.outcomes"), tcp_proxy(redis_server.port) as proxy:
        state = _store(proxy.url, "flap:")
        outcomes = SharedOutcomeStore(state, max_items=100)
        await outcomes.upsert(served("a"))
        for i in range(3):
            proxy.partition()
            await outcomes.upsert(served(f"down{i}"))
            assert state.degraded
            proxy.heal()
            deadline = time.monotonic() + 30
            while True:  # the store tries the server again RETRY_S after the outage began
                await asyncio.sleep(RETRY_S / 2)
                await outcomes.upsert(served(f"up{i}-{time.monotonic()}"))
                if not state.degraded:
                    break
                assert time.monotonic() < deadline
        await state.aclose()
    warned = [r.getMessage() for r in caplog.records if "shared outcome list is not the one" in r.getMessage()]
    assert outcomes.resets == 6 and len(warned) == 1, (outcomes.resets, warned)
