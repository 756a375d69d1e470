"""The SQLite outcome store's writes: those that wait at once share one commit (a group commit), each caller's records
all or none, and what a write returned survives its process ending."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from genroute import Router
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side
from genroute.router.shadows import MAX_SHADOWS

from .conftest import gemini_config
from .read_only_files import read_only  # noqa: F401


def record(id: str, score: float = 1.0) -> OutcomeRecord:
    return OutcomeRecord(metadata={"id": id, "task": "t"}, outcomes={"chat": Side(score=score, cost_usd=1e-4)})


@contextmanager
def writes_held(path: Path) -> Iterator[None]:
    """Another connection holds the file's write lock (as another process writing would): the store's writer waits
    for it (SQLite's busy timeout) until the block ends."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("COMMIT")
        other.close()


async def until(check: Callable[[], bool]) -> None:
    """Wait for ``check`` (the writer's thread gets there in its own time); a generous bound, not a timing claim."""
    end = time.monotonic() + 30
    while not check():
        assert time.monotonic() < end, "still not there after 30 s"
        await asyncio.sleep(0.01)


async def test_writes_that_wait_at_once_share_one_commit_and_all_land(tmp_path: Path) -> None:
    """Each write was its own transaction, an fsync each (~25 ms): shadows of one sequential client queued behind
    them. The writes that wait while one is written now go in one transaction after it."""
    store = OutcomeStore(tmp_path / "outcomes.db")
    with writes_held(store.path):
        writes = [asyncio.ensure_future(store.upsert(record(f"r{i}"))) for i in range(20)]
        await until(lambda: store.unwritten == 20)
    stored = await asyncio.gather(*writes)
    assert [r.id for r in stored] == [f"r{i}" for i in range(20)]
    assert store.commits <= 2  # the lot the writer took before the lock was let go, and every one waiting meanwhile
    assert store.count_sync() == 20 and store.unwritten == 0
    numbers = [row[0] for row in sqlite3.connect(store.path).execute("SELECT seq FROM outcomes ORDER BY created_at")]
    assert numbers == sorted(set(numbers)) and len(numbers) == 20  # each write numbered, in order, for ``changes``


async def test_a_write_that_cannot_be_merged_fails_alone_in_a_shared_commit(tmp_path: Path) -> None:
    store = OutcomeStore(tmp_path / "outcomes.db")
    store.upsert_sync(record("bad"))
    with sqlite3.connect(store.path) as db:  # a row no genroute wrote: not an outcome record
        db.execute("UPDATE outcomes SET record = '{\"outcomes\": 3}' WHERE id = 'bad'")
    with writes_held(store.path):
        writes = [asyncio.ensure_future(store.upsert(record(id))) for id in ("a", "bad", "b", "a")]
        await until(lambda: store.unwritten == 4)
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["OutcomeRecord", "UsageError", "OutcomeRecord", "OutcomeRecord"]
    assert [store.get_sync(id) is not None for id in ("a", "b")] == [True, True] and store.count_sync() == 3


async def test_a_sequential_client_s_shadows_all_land_while_the_disk_is_slow(gemini_server, tmp_path: Path) -> None:
    """One client, one request after the other, each shadowed, the store's writes held up (a slow disk, another
    process writing): the shadows wait for one commit together, none is dropped at the shadow cap, every one is
    stored. Each was a transaction of its own after the one before it."""
    n = MAX_SHADOWS - 2
    cfg = gemini_config(gemini_server)
    cfg["backends"]["lite"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    cfg["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["lite"]}
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "normalized_exact"}
    async with await Router.acreate(cfg) as router:
        store = router._executor.outcomes.store
        assert isinstance(store, OutcomeStore)
        with writes_held(store.path):
            results = [await router.agenerate(f"question {i}") for i in range(n)]
            await until(lambda: store.unwritten == n)
        await router.adrain()
        assert router._executor.shadows_dropped == 0
        assert sorted(r.id for r in store.records_sync()) == sorted(r.outcome_id for r in results)
        assert store.commits <= 2


def test_what_a_write_returned_survives_its_process_ending_at_once(tmp_path: Path) -> None:
    """Commits are not synced one by one (``synchronous=NORMAL`` in WAL mode) and the writer keeps its connection
    open a moment after: a process that ends right after its writes returned (``os._exit``, a kill) still has them
    in the file (its -wal), read by the next process to open it."""
    path = tmp_path / "outcomes.db"
    script = (
        "import os, sys\n"
        "from genroute.outcomes import OutcomeRecord, OutcomeStore\n"
        "store = OutcomeStore(sys.argv[1])\n"
        "for i in range(5):\n"
        "    store.upsert_sync(OutcomeRecord(metadata={'id': f'r{i}'}, outcomes={'chat': {'score': 1.0}}))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    assert sorted(r.id for r in OutcomeStore(path).records_sync()) == [f"r{i}" for i in range(5)]


def test_close_leaves_the_writes_in_the_file_itself(tmp_path: Path) -> None:
    """A writer keeps its connection open a moment after its last write (its writes in the -wal file beside the
    file until then); ``close`` ends that at once: the file alone, copied, holds them."""
    store = OutcomeStore(tmp_path / "outcomes.db")
    store.upsert_many_sync([record("a"), record("b")])
    store.close()
    shutil.copy(store.path, tmp_path / "copy.db")  # the file alone, without its -wal
    assert sorted(r.id for r in OutcomeStore(tmp_path / "copy.db").records_sync()) == ["a", "b"]
    store.upsert_sync(record("c"))  # still usable
    assert store.count_sync() == 3


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_store_file_in_either_journal_mode_is_written(tmp_path: Path, journal: str) -> None:
    """A file another tool made in SQLite's default mode is switched to WAL on open; written either way."""
    path = tmp_path / "outcomes.db"
    sqlite3.connect(path, isolation_level=None).execute(f"PRAGMA journal_mode={journal}").close()
    store = OutcomeStore(path)
    store.upsert_many_sync([record("a"), record("b", 0.0)])
    store.upsert_sync(record("a", 0.0))
    assert [(r.id, r.outcomes["chat"].score) for r in store.records_sync()] == [("a", 0.0), ("b", 0.0)]


@pytest.mark.parametrize(("journal", "synchronous"), [("wal", 1), ("delete", 2)])
def test_commits_are_synced_one_by_one_only_outside_wal_mode(tmp_path: Path, read_only: Callable[..., None],
                                                             journal: str, synchronous: int) -> None:
    """In WAL mode the writer's connection is ``synchronous=NORMAL`` (1: no fsync per commit, durable against a
    process crash, not a power loss); a read-only file SQLite could not switch to WAL keeps its default, FULL (2), as
    NORMAL in a rollback journal could leave a torn file. Each commit was synced (~25 ms)."""
    path = tmp_path / "outcomes.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute("CREATE TABLE outcomes (id TEXT PRIMARY KEY, task TEXT, created_at REAL NOT NULL, updated_at REAL NOT "
               "NULL, captured INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL, seq INTEGER)")
    db.execute("CREATE INDEX outcomes_task ON outcomes (task, created_at)")
    db.execute("CREATE INDEX outcomes_seq ON outcomes (seq)")
    db.close()
    if journal == "delete":
        read_only(path)  # opened as it is
    store = OutcomeStore(path)
    assert store._writing().execute("PRAGMA synchronous").fetchone()[0] == synchronous  # the writer's connection


def _write_in_child(store: OutcomeStore) -> None:
    store.upsert_sync(record("child"))


def test_a_process_forked_while_the_writer_runs_writes_with_its_own(tmp_path: Path) -> None:
    """Forked while the parent's writer thread still held its connection (a pre-fork server, ``multiprocessing`` with
    ``fork``): the child has no such thread, so its write would wait for ever on one it believed running. It starts
    its own, on a connection of its own."""
    import multiprocessing

    store = OutcomeStore(tmp_path / "outcomes.db")
    store.upsert_sync(record("parent"))  # the writer lingers a moment after it, its connection open
    child = multiprocessing.get_context("fork").Process(target=_write_in_child, args=(store,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    store.upsert_sync(record("parent again"))
    assert sorted(r.id for r in store.records_sync()) == ["child", "parent", "parent again"]


async def test_a_write_whose_caller_was_cancelled_is_still_written(tmp_path: Path) -> None:
    """A shadow cancelled while its outcome waits for the writer (``adrain`` giving up, its loop ending): the record
    handed over is written all the same, as a write already on a worker thread was."""
    store = OutcomeStore(tmp_path / "outcomes.db")
    with writes_held(store.path):
        write = asyncio.ensure_future(store.upsert(record("a")))
        await until(lambda: store.unwritten == 1)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
    store.close()
    assert store.get_sync("a") is not None and store.unwritten == 0
