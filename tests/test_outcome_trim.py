"""The shared outcome list is bounded: trimmed on the server with each append, readers keep their place.

The same cases run on the memory store and on a real ``redis-server`` (started by the fixture; CI fails without
it); the sharing claims are checked with real writer processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import pytest

from genroute import ConfigError, Router
from genroute.outcomes import OutcomeRecord, Side
from genroute.outcomes.shared import SharedOutcomeStore
from genroute.state import RedisStateConfig, StateStore
from genroute.state.memory import MemoryStateStore
from genroute.state.redis_store import RedisStateStore

from .held_calls import Held, cancel_first_read
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401
from .state_worker import run_together, spawn
from .test_outcomes import config


def _redis(server: RedisServer, prefix: str = "trim:") -> RedisStateStore:
    return RedisStateStore(RedisStateConfig(kind="redis", url=server.url, prefix=prefix, on_error="closed"))


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> tuple[StateStore, StateStore]:
    """Two handles on one shared state: two routers of one process (memory) or two clients of one Redis."""
    if request.param == "memory":
        state = MemoryStateStore()
        return state, state
    server = request.getfixturevalue("redis_server")
    return _redis(server), _redis(server)


def record(id: str, **side: Any) -> OutcomeRecord:
    return OutcomeRecord(metadata={"id": id, "task": "t"}, outcomes={"chat": Side(**side)})


async def test_a_reader_that_fell_behind_skips_what_was_trimmed_and_counts_it(stores, caplog) -> None:
    writer = SharedOutcomeStore(stores[0], max_items=4)
    reader = SharedOutcomeStore(stores[1], max_items=4)
    await writer.upsert(record("r0", score=1.0))
    assert [r.id for r in await reader.records()] == ["r0"]  # the reader's place: position 1
    for i in range(1, 10):
        await writer.upsert(record(f"r{i}", score=1.0))
    with caplog.at_level(logging.WARNING, logger="genroute.outcomes.shared"):
        found = await reader.records()
    assert [r.id for r in found] == ["r6", "r7", "r8", "r9"]  # r1-r5 trimmed before it read them: skipped
    assert reader.skipped == 5 and "5 outcome write(s) were trimmed" in caplog.text
    assert writer.skipped == 0  # it read after each of its writes
    assert [r.id for r in await writer.records()] == ["r6", "r7", "r8", "r9"]  # its own view is bounded too
    # A reader that restarts (a new process) starts at the oldest write kept: nothing to warn about.
    caplog.clear()
    restarted = SharedOutcomeStore(stores[1], max_items=4)
    with caplog.at_level(logging.WARNING, logger="genroute.outcomes.shared"):
        assert [r.id for r in await restarted.records()] == ["r6", "r7", "r8", "r9"]
    # Its logger's records only: the handler takes every logger's (an earlier test's task collected here logs too).
    assert restarted.skipped == 0 and not [r for r in caplog.records if r.name == "genroute.outcomes.shared"]
    for state in set(stores):
        await state.aclose()


async def test_writes_to_one_record_merge_and_nothing_is_lost_or_doubled_within_the_cap(stores) -> None:
    a = SharedOutcomeStore(stores[0], max_items=100)
    b = SharedOutcomeStore(stores[1], max_items=100)
    for i in range(30):  # served+shadow from one router, feedback from the other, interleaved
        await a.upsert(OutcomeRecord(metadata={"id": f"q{i}", "task": "t", "served": "chat"},
                                     outcomes={"chat": Side(cost_usd=0.5), "pro": Side(agreement=1.0)}))
        if i % 2:
            await b.upsert(record(f"q{i}", score=float(i % 3 == 0)))
    for store in (a, b, SharedOutcomeStore(stores[1], max_items=100)):
        found = await store.records()
        assert [r.id for r in found] == [f"q{i}" for i in range(30)]  # each once, in order of first write
        assert all(r.outcomes["chat"].cost_usd == 0.5 for r in found)
        assert [r.outcomes["chat"].score for r in found] == [None if i % 2 == 0 else float(i % 3 == 0)
                                                             for i in range(30)]
    assert (await stores[0].items("outcomes")).start == 0  # 45 writes, cap 100: nothing trimmed
    for state in set(stores):
        await state.aclose()


async def test_since_filters_on_when_a_record_was_first_written_as_the_sqlite_store_does(stores, tmp_path) -> None:
    """A feedback written to an old record later does not make it new: ``since`` is its creation, in the shared view
    and in the SQLite store alike."""
    from genroute.outcomes.store import OutcomeStore

    shared, archive = SharedOutcomeStore(stores[0], max_items=100), OutcomeStore(tmp_path / "o.db")
    for store in (shared, archive):
        await store.upsert(OutcomeRecord(metadata={"id": "old", "task": "t", "at": time.time()}))
    await asyncio.sleep(0.01)
    cut = time.time()
    await asyncio.sleep(0.01)
    for store in (shared, archive):
        await store.upsert(OutcomeRecord(metadata={"id": "new", "task": "t", "at": time.time()}))
        await store.upsert(OutcomeRecord(metadata={"id": "old", "at": time.time()}, outcomes={"chat": Side(score=1.0)}))
        assert [r.id for r in await store.records(since=cut)] == ["new"]
        assert [r.id for r in await store.records()] == ["old", "new"]
    for state in set(stores):
        await state.aclose()


async def test_writes_older_than_max_age_are_trimmed(stores) -> None:
    writer = SharedOutcomeStore(stores[0], max_items=None, max_age_s=0.3)
    await writer.upsert(record("old", score=1.0))
    await asyncio.sleep(0.5)
    await writer.upsert(record("new", score=0.0))
    assert [r.id for r in await SharedOutcomeStore(stores[1]).records()] == ["new"]
    assert (await stores[0].items("outcomes")).start == 1
    for state in set(stores):
        await state.aclose()


async def test_an_emptied_list_is_read_again_from_its_head(redis_server: RedisServer, caplog) -> None:
    state = _redis(redis_server)
    outcomes = SharedOutcomeStore(state)
    for i in range(3):
        await outcomes.upsert(record(f"a{i}", score=1.0))
    redis_server.flush()  # as a restart without persistence leaves it
    with caplog.at_level(logging.WARNING, logger="genroute.outcomes.shared"):
        await SharedOutcomeStore(state).upsert(record("b0", score=1.0))  # another process writes the first one
        assert (await outcomes.get("b0")) is not None  # position 0 again: read, not missed
    assert outcomes.resets == 1 and "not the one this process read before" in caplog.text
    await state.aclose()


async def test_an_archive_keeps_every_write_the_list_trimmed(stores, tmp_path) -> None:
    from genroute.outcomes import OutcomeStore
    from genroute.outcomes.stats import outcome_stats

    writer = SharedOutcomeStore(stores[0], max_items=3, archive=OutcomeStore(tmp_path / "a.db"))
    for i in range(10):
        await writer.upsert(record(f"r{i}", cost_usd=0.5, latency_s=0.2))
    await writer.upsert(record("r0", score=1.0))  # feedback for a record trimmed from the list long ago
    found = await writer.records()
    assert [r.id for r in found] == [f"r{i}" for i in range(10)]  # the file has them all, in order, once
    assert found[0].outcomes["chat"].score == 1.0 and found[0].outcomes["chat"].cost_usd == 0.5
    assert (await writer.get("r1")).outcomes["chat"].cost_usd == 0.5  # gone from list and view: from the file
    assert list(writer._merged) == ["r8", "r9", "r0"]  # memory stays bounded
    # Another process of the machine archiving into the same file: merging the writes again changes nothing.
    other = SharedOutcomeStore(stores[1], max_items=3, archive=OutcomeStore(tmp_path / "a.db"))
    assert await other.records() == found
    assert outcome_stats(found).tasks["t"]["chat"].n == 1  # the statistics still see the early feedback
    for state in set(stores):
        await state.aclose()


async def test_outcomes_written_while_redis_is_down_and_after_its_restart_are_read(redis_server: RedisServer) -> None:
    # Timeouts that bound a hang only: a stopped server refuses at once; a slow reply must not look like an outage.
    state = RedisStateStore(RedisStateConfig(kind="redis", url=redis_server.url, prefix="down:", on_error="open",
                                             retry_s=0.2, timeout_s=20, connect_timeout_s=20))
    outcomes = SharedOutcomeStore(state, max_items=100)
    for i in range(3):
        await outcomes.upsert(record(f"a{i}", score=1.0))
    redis_server.stop()
    try:  # fail open: the write goes to this process's memory (position 0 there), and is read back
        assert (await outcomes.upsert(record("down", score=0.5))).outcomes["chat"].score == 0.5
    finally:
        redis_server.start()  # an empty server: no persistence
    await asyncio.sleep(0.25)
    assert (await outcomes.upsert(record("after", score=0.0))).id == "after"
    assert [r.id for r in await outcomes.records()] == ["a0", "a1", "a2", "down", "after"]
    assert outcomes.resets == 2  # into the fallback's list, and into the restarted server's
    # The write made during the outage was replayed to the restarted server: another process reads it there.
    fresh = SharedOutcomeStore(_redis(redis_server, "down:"), max_items=100)
    assert [r.id for r in await fresh.records()] == ["down", "after"] and outcomes.replayed == 1
    await fresh.state.aclose()
    await state.aclose()


def _write_together(server: RedisServer, prefix: str, n: int, cap: int, names: tuple[str, str]) -> list[int]:
    """Two writer processes, started together: the writes each found trimmed before it read them."""
    return [int(out) for out in run_together([spawn("outcomes", server.url, prefix, name, n, cap) for name in names],
                                             timeout=120)]


def test_two_processes_share_one_capped_list_and_a_lagging_reader_catches_up(redis_server: RedisServer) -> None:
    prefix = f"mp{os.getpid()}:"
    state = _redis(redis_server, prefix)
    reader = SharedOutcomeStore(state, max_items=250)

    async def read() -> list[OutcomeRecord]:
        return await reader.records()

    asyncio.run(read())
    # 2 x 100 writes, within the cap: the reader gets every one exactly once.
    assert _write_together(redis_server, prefix, 100, 250, ("a", "b")) == [0, 0]
    found = asyncio.run(read())
    assert sorted(r.id for r in found) == sorted(f"{w}-{i}" for w in "ab" for i in range(100))
    for writer in "ab":  # each writer's records in its own order
        assert [r.metadata["i"] for r in found if r.metadata["writer"] == writer] == list(range(100))
    # 2 x 150 more while the reader is idle (300 behind, cap 250): 50 were trimmed before it read them.
    assert _write_together(redis_server, prefix, 150, 250, ("c", "d")) == [0, 0]
    found = asyncio.run(read())
    assert reader.skipped == 50
    restarted = asyncio.run(SharedOutcomeStore(_redis(redis_server, prefix), max_items=250).records())
    kept = [r.id for r in restarted]
    assert len(kept) == len(set(kept)) == 250 and all(r[0] in "cd" for r in kept)
    assert [r.id for r in found] == kept  # the lagging reader and a new one hold the same, bounded


def test_the_cap_is_config_and_validated(gemini_server, tmp_path, redis_server: RedisServer) -> None:
    cfg = config(gemini_server, tmp_path, shared_max_items=2)
    del cfg["outcomes"]["path"]
    cfg["state"] = {"kind": "redis", "url": redis_server.url, "prefix": "cap-test:", "on_error": "closed"}
    for _ in range(3):
        gemini_server.reply_text("positive", usage=(100, 5))
        gemini_server.reply_text("negative", usage=(120, 6))
    with Router.from_config(cfg) as serving, Router.from_config(cfg) as other:
        ids = []
        for _ in range(3):
            ids.append(serving.generate("The food was great.", task="sentiment").outcome_id)
            serving.drain()
        assert other.feedback(ids[2], score=1.0).outcomes["chat"].score == 1.0

        async def seen(router: Router) -> list[OutcomeRecord]:
            return await router._executor.outcomes.store.records()

        # Each router's view holds at most 2 records; the list keeps the last 2 of the 4 writes (3 shadows and
        # the feedback), both about the last request: a new process sees that one.
        assert [r.id for r in other._portal.call(seen(other))] == ids[1:]
        assert [r.id for r in serving._portal.call(seen(serving))] == ids[1:]
    fresh = SharedOutcomeStore(_redis(redis_server, "cap-test:"))
    (last,) = asyncio.run(fresh.records())
    assert last.id == ids[2] and last.outcomes["chat"].score == 1.0 and last.outcomes["pro"].agreement == 0.0
    # `path` beside a shared store: the file keeps every write the router read (the full history), refresh reads it.
    archived_cfg = {**cfg, "outcomes": {**cfg["outcomes"], "path": str(tmp_path / "archive.db")},
                    "state": {**cfg["state"], "prefix": "archive-test:"}}
    with Router.from_config(archived_cfg) as archived:
        archived_ids = []
        for _ in range(3):
            gemini_server.reply_text("positive", usage=(100, 5))
            gemini_server.reply_text("negative", usage=(120, 6))
            archived_ids.append(archived.generate("The food was great.", task="sentiment").outcome_id)
            archived.drain()
        assert [r.id for r in archived._portal.call(seen(archived))] == archived_ids
        assert len(archived._executor.outcomes.store._merged) == 2
    for field, value in (("shared_max_items", 0), ("shared_max_age_s", -1), ("shared_max_items", "many")):
        with pytest.raises(ConfigError) as err:
            Router.from_config({**cfg, "outcomes": {**cfg["outcomes"], field: value}})
        assert err.value.field == f"outcomes.{field}"


async def test_a_cancelled_read_leaves_the_view_to_its_merge_until_the_merge_ends(stores) -> None:
    # A catch-up of over 100 writes merges them on a worker thread, which a cancellation cannot stop: a read cancelled
    # meanwhile let go of the lock at once while its merge went on, and the next read merged the same page again at
    # the same time (or iterated the view while it changed: "dictionary changed size during iteration"). A wrapped
    # merge holds the first on its thread until the second read merges too or waits for the lock.
    writer = SharedOutcomeStore(stores[0], max_items=1000)
    reader = SharedOutcomeStore(stores[1], max_items=1000)
    for i in range(150):
        await writer.upsert(record(f"r{i:03}", score=float(i % 2)))
    held = Held(reader._merge)
    reader._merge = held  # type: ignore[method-assign]
    found = await cancel_first_read(held, reader.records, reader._lock)
    assert held.overlaps[:2] == [0, 0]  # never two merges at once
    assert [r.id for r in found] == [f"r{i:03}" for i in range(150)]
    assert [r.outcomes["chat"].score for r in found] == [float(i % 2) for i in range(150)]


async def test_a_read_filters_by_creation_the_view_it_copied_while_a_write_trims_it(stores, monkeypatch) -> None:
    # ``records(since=...)`` copied the view, parsed it on a worker thread, then read each record's creation time
    # from the live view: a write meanwhile that pushed the oldest records out of the bound took their times, so
    # records of the copy read as created at 0 and were left out (and nothing made the two reads one view on a
    # free-threaded Python). The parse is held until a write has trimmed the view.
    import genroute.outcomes.shared as shared

    writer = SharedOutcomeStore(stores[0], max_items=150)
    reader = SharedOutcomeStore(stores[1], max_items=150)
    now = time.time()
    for i in range(150):
        await writer.upsert(OutcomeRecord(metadata={"id": f"r{i:03}", "task": "t", "at": now},
                                          outcomes={"chat": Side(score=1.0)}))
    await reader.records()  # caught up: the next read copies the 150 records and parses them on a thread
    parse = shared._load_all
    held = Held(parse)
    monkeypatch.setattr(shared, "_load_all", lambda lines: held(lines) if len(lines) > 100 else parse(lines))
    read = asyncio.ensure_future(reader.records(since=now - 60))
    assert await asyncio.to_thread(held.entered.wait, 30)
    for i in range(150, 160):  # trims r000-r009 from the shared list and from the reader's view
        await writer.upsert(OutcomeRecord(metadata={"id": f"r{i:03}", "task": "t", "at": now},
                                          outcomes={"chat": Side(score=1.0)}))
    assert await reader.get("r000") is None and "r000" not in reader._created
    held.go.set()
    assert [r.id for r in await read] == [f"r{i:03}" for i in range(150)]  # the copy as it was, whole
