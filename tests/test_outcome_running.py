"""A refresh reads only the outcome records written since the last one and folds them into the running statistics;
what it hands the policy equals a full read's (``outcome_stats``, ``training_rows``). On the SQLite file and on the
shared list (process memory and a real ``redis-server``), including a trim between reads; a read-only store file made
before reads were numbered is read whole each time."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from genroute.errors import ConfigError
from genroute.outcomes import OutcomeRecord, Side, read_outcome_file
from genroute.outcomes.running import RunningOutcomes
from genroute.outcomes.shared import SharedOutcomeStore
from genroute.outcomes.stats import outcome_stats, training_rows
from genroute.outcomes.store import OutcomeStore

from .held_calls import Held, cancel_first_read
from .read_only_files import read_only  # noqa: F401
from .redis_fixtures import redis_server, redis_session  # noqa: F401
from .test_outcome_trim import stores  # noqa: F401  (a writer's and a reader's handle: memory, a real Redis)


def record(id: str, task: str | None = "t", input: str | None = None, **sides: dict[str, Any]) -> OutcomeRecord:
    metadata: dict[str, Any] = {"id": id} if task is None else {"id": id, "task": task}
    return OutcomeRecord(input=input, metadata=metadata, outcomes={b: Side(**s) for b, s in sides.items()})


def free(score: float | None = None, **more: Any) -> dict[str, Any]:
    """A local model's side: free, priced by its cloud equivalent."""
    return {"score": score, "cost_usd": 0.0, "cloud_equivalent_cost_usd": 1e-4, "latency_s": 0.1, **more}


async def same_as_full_read(running: RunningOutcomes, store: OutcomeStore | SharedOutcomeStore) -> None:
    stats, rows = await running.read()
    records = await store.records()
    expected = outcome_stats(records, min_n=running.min_n)
    assert stats.tasks == expected.tasks
    assert [(t, list(by)) for t, by in stats.tasks.items()] == [(t, list(by)) for t, by in expected.tasks.items()]
    assert rows == training_rows(records)


async def test_refresh_reads_what_the_file_store_wrote_since_and_equals_a_full_read(tmp_path: Path) -> None:
    store = OutcomeStore(tmp_path / "outcomes.db")
    running = RunningOutcomes(store, min_n=2)
    store.upsert_many_sync([record(f"r{i}", input=f"q{i}", local=free(float(i % 2)), pro=free(1.0)) for i in range(4)]
                           + [record("u0", task="u", local=free(0.5)), record("u1", task="u", local=free(0.7))])
    await same_as_full_read(running, store)  # every side free with a cloud equivalent: priced by that
    assert running.full_reads == 1
    place = running._place
    store.upsert_many_sync([
        record("r1", pro={"score": 0.0}),  # feedback on an old record: its side changes, its place does not
        record("r9", task=None, input="q9", pro={"score": 1.0, "cost_usd": 3e-4, "latency_s": 0.3}),  # paid: cost
        record("u1", task="t"),  # a record moved to another task
    ])
    assert len((await store.changes(place)).records) == 3  # only what was written since
    await same_as_full_read(running, store)
    assert running.full_reads == 1
    await same_as_full_read(running, store)  # nothing new: nothing read, the same statistics
    assert running.full_reads == 1

    other = OutcomeStore(tmp_path / "other.db")  # another file at the path: everything is read again
    other.upsert_many_sync([record("x0", local=free(1.0)), record("x1", local=free(0.0))])
    # Each store's writer done with its file (a writer keeps its connection open a moment after its last write, its
    # writes in the -wal file beside it): a file replaced under an open connection mixes up the two files' -wal.
    store.close()
    other.close()
    os.replace(tmp_path / "other.db", tmp_path / "outcomes.db")
    await same_as_full_read(running, store)
    assert running.full_reads == 2

    store.upsert_sync(record("x2", local=free(1.0)))
    with sqlite3.connect(tmp_path / "outcomes.db") as db:  # a row an older genroute wrote, without a number
        db.execute("UPDATE outcomes SET seq = NULL WHERE id = 'x0'")
    await same_as_full_read(running, store)
    assert running.full_reads == 3


def test_a_store_file_made_before_write_numbers_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE outcomes (id TEXT PRIMARY KEY, task TEXT, created_at REAL NOT NULL, "
                   "updated_at REAL NOT NULL, captured INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL)")
        db.execute("INSERT INTO outcomes VALUES ('a', 't', 1.0, 1.0, 0, '{\"metadata\": {\"id\": \"a\"}}')")
    store = OutcomeStore(path)
    store.upsert_sync(record("b", chat={"score": 1.0}))
    first = store.changes_sync(None)
    assert first.full and [r.id for _, r in first.records] == ["a", "b"]
    store.upsert_sync(record("c", chat={"score": 1.0}))
    later = store.changes_sync(first.place)
    assert not later.full and [r.id for _, r in later.records] == ["c"]


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_a_read_only_store_file_made_before_write_numbers_is_read_whole_each_time(
        tmp_path: Path, read_only: Callable[..., None], journal: str) -> None:
    """It was a ConfigError ("cannot open the outcome store ...: attempt to write a readonly database"): opening
    added the seq column. A genroute file is in WAL mode; one in SQLite's default mode is read too."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.executescript("CREATE TABLE outcomes (id TEXT PRIMARY KEY, task TEXT, created_at REAL NOT NULL, "
                     "updated_at REAL NOT NULL, captured INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL); "
                     "CREATE INDEX outcomes_task ON outcomes (task, created_at);")
    for i, old in enumerate([record("a", chat=free(1.0)), record("b", chat=free(0.0), pro=free(1.0))]):
        db.execute("INSERT INTO outcomes VALUES (?, ?, ?, ?, 0, ?)", (old.id, old.task, i, i, json.dumps(old.line())))
    db.close()
    read_only(path)

    store = OutcomeStore(path)
    assert [r.id for r in store.records_sync()] == ["a", "b"] and store.count_sync() == 2
    assert [r.id for r in read_outcome_file(path)] == ["a", "b"]
    first = store.changes_sync(None)
    assert first.full and [r.id for _, r in first.records] == ["a", "b"]
    again = store.changes_sync(first.place)  # no place to read from: whole again
    assert again.full and [r.id for _, r in again.records] == ["a", "b"]
    running = RunningOutcomes(store, min_n=1)
    await same_as_full_read(running, store)
    await same_as_full_read(running, store)
    assert running.full_reads == 2
    with pytest.raises(ConfigError, match="the file is read-only"):  # as a read-only file that has seq refuses it
        store.upsert_sync(record("c", chat=free(1.0)))
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as check:  # the file is as it was
        assert "seq" not in {row[1] for row in check.execute("PRAGMA table_info(outcomes)")}


async def test_refresh_reads_what_the_shared_list_took_since_a_trim_included(stores) -> None:
    writer = SharedOutcomeStore(stores[0], max_items=5)
    reader = SharedOutcomeStore(stores[1], max_items=5)
    running = RunningOutcomes(reader, min_n=1)
    for i in range(4):
        await writer.upsert(record(f"r{i}", input=f"q{i}", chat={"score": float(i % 2), "cost_usd": 1e-5},
                                   pro={"score": 1.0, "cost_usd": 4e-5, "latency_s": 0.2}))
    await same_as_full_read(running, reader)
    for i in range(4, 9):  # the list and the reader's view keep the newest 5: r0-r3 are dropped from both
        await writer.upsert(record(f"r{i}", task="u" if i % 2 else "t", chat={"score": 0.5, "cost_usd": 2e-5}))
    await writer.upsert(record("r8", pro={"score": 0.0, "cost_usd": 5e-5}))  # a feedback on a kept record
    await same_as_full_read(running, reader)
    kept = [r.id for r in await reader.records()]
    assert len(kept) == 5 and "r0" not in kept and "r8" in kept  # the oldest dropped from the reader's view
    for i in range(9, 30):  # the reader falls behind the trim: it skips what it never read
        await writer.upsert(record(f"r{i}", chat={"score": 1.0, "cost_usd": 1e-5}))
    await same_as_full_read(running, reader)
    assert reader.skipped > 0
    assert running.full_reads == 1  # trims, drops and skips reach it as changes: never read in full again


async def test_a_record_dropped_while_the_shared_list_parses_its_changes_is_still_answered(monkeypatch) -> None:
    # ``changes`` parses more than 100 records on a worker thread, outside its lock: a write meanwhile (a feedback on
    # the event loop) that drops the oldest record from the bounded view made it a KeyError (the dropped id's rank,
    # read after the parse), and Router.refresh raised it. What was held at the place read is answered, and the drop
    # reaches the next read.
    import asyncio
    import threading

    from genroute.outcomes import shared
    from genroute.state.memory import MemoryStateStore

    store = SharedOutcomeStore(MemoryStateStore(), max_items=150)
    for i in range(150):
        await store.upsert(record(f"r{i:03}", chat={"score": 1.0, "cost_usd": 1e-5}))
    loop = asyncio.get_running_loop()
    load_all = shared._load_all

    def parse_while_a_write_lands(lines: list[bytes]) -> list[OutcomeRecord]:
        if threading.current_thread() is not threading.main_thread():  # the parse of changes' records
            asyncio.run_coroutine_threadsafe(store.upsert(record("new", chat={"score": 0.0})), loop).result(10)
        return load_all(lines)

    monkeypatch.setattr(shared, "_load_all", parse_while_a_write_lands)
    changes = await store.changes(None)
    assert [r.id for _, r in changes.records][:2] == ["r000", "r001"] and len(changes.records) == 150
    monkeypatch.setattr(shared, "_load_all", load_all)
    later = await store.changes(changes.place)
    assert later.removed == ["r000"] and [r.id for _, r in later.records] == ["new"]


async def test_a_cancelled_refresh_keeps_the_running_statistics_until_its_fold_ends(tmp_path: Path) -> None:
    # The fold runs on a worker thread, which a cancellation cannot stop: a refresh cancelled meanwhile let go of the
    # lock at once while its fold went on, and the next refresh folded at the same time, over the same records and
    # groups. A wrapped fold holds the first on its thread until the second refresh folds too or waits for the lock.
    store = OutcomeStore(tmp_path / "outcomes.db")
    store.upsert_many_sync([record(f"r{i}", local=free(float(i % 2))) for i in range(4)])
    running = RunningOutcomes(store, min_n=1)
    held = Held(running._fold)
    running._fold = held  # type: ignore[method-assign]
    await cancel_first_read(held, running.read, running._lock)
    assert held.overlaps == [0, 0]  # never two folds at once
    await same_as_full_read(running, store)


async def test_the_running_statistics_keep_a_compact_form_of_each_record_not_the_parsed_record(tmp_path: Path) -> None:
    # They keep every record for the process's life: as parsed OutcomeRecords (metadata, output and every field of
    # every side) that was ~5 KB a record, ~9x its JSON (benchmarks/running_memory.py); now what the statistics and
    # the training rows read of it. The same statistics and rows as a full read.
    import gc
    import tracemalloc

    store = OutcomeStore(tmp_path / "outcomes.db")
    features = {f"feature_{i}": i * 0.5 for i in range(12)}
    store.upsert_many_sync([
        OutcomeRecord(input=f"question {i}" if i % 3 else None, output="an answer the statistics never read",
                      metadata={"id": f"r{i:04}", "task": "t", "source": "production", "trace_id": f"{i:032x}",
                                "scorer": "label_accuracy", "at": 1.7e9 + i, "features": features, "served": "chat"},
                      outcomes={"chat": Side(role="served", score=float(i % 2), cost_usd=1e-5, latency_s=0.3,
                                             input_tokens=120, output_tokens=5),
                                "pro": Side(role="shadow", score=1.0 if i % 4 else None, cost_usd=4e-5,
                                            latency_s=0.9, input_tokens=120, output_tokens=5, agreement=1.0)})
        for i in range(2000)])
    await RunningOutcomes(store, min_n=1).read()  # what a first read loads once (modules, the store's connection)
    running = RunningOutcomes(store, min_n=1)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await running.read()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept / 2000 < 1500  # bytes a record, training rows included (parsed records: over 4,000)
    await same_as_full_read(running, store)


async def test_what_the_running_statistics_keep_adds_one_object_a_record_for_the_collector_to_scan(
        tmp_path: Path) -> None:
    # The compact form kept each side as an object of its own in a tuple with its backend: six objects a record of two
    # sides that every full collection scanned, which made the first full fold of 100,000 records ~1.4 s slower
    # (benchmarks/running_memory.py). Each side is now a plain tuple of numbers, which the collector untracks: what
    # is left to scan is the record's own object.
    import gc

    store = OutcomeStore(tmp_path / "outcomes.db")
    store.upsert_many_sync([
        OutcomeRecord(input=f"question {i}", metadata={"id": f"r{i:04}", "task": "t", "at": 1.7e9 + i},
                      outcomes={"chat": Side(role="served", score=float(i % 2), cost_usd=1e-5, latency_s=0.3),
                                "pro": Side(role="shadow", score=1.0, cost_usd=4e-5, latency_s=0.9)})
        for i in range(2000)])
    running = RunningOutcomes(store, min_n=1)
    await running.read()
    gc.collect()  # a tuple holding only untracked objects is untracked by a collection
    held = list(running._records.values())
    assert len(held) == 2000 and all(len(h.sides) == 2 for h in held)
    tracked = sum(gc.is_tracked(side) for h in held for side in h.sides)
    assert tracked == 0, tracked  # the previous compact form: 4,000 side objects, each scanned by every collection
    await same_as_full_read(RunningOutcomes(store, min_n=1), store)
