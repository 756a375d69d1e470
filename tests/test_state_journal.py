"""``state.journal``: the writes a replica owes Redis during an outage, kept in a local SQLite file as well as in
memory, so that a replica killed meanwhile (SIGKILL) does not take its share of the shared spend with it. Real
processes, a real ``redis-server`` and the loopback Gemini server, whose request log is the wire's bill."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.errors import ConfigError
from genroute.state import RedisStateConfig
from genroute.state.redis_store import RedisStateStore
from genroute.testing import Reply

from .conftest import budget_usage, gemini_config
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401
from .server_ports import free_port
from .test_outcome_outage import persistent_redis  # noqa: F401
from .test_outcomes import FLASH, cost
from .test_state_processes import RETRY_S, TIMEOUT_S, _line, _running, _say, _worker

USAGE = (100, 5)


def _rows(journal: Path) -> int:
    db = sqlite3.connect(journal)
    try:
        return int(db.execute("SELECT count(*) FROM unsent").fetchone()[0])
    finally:
        db.close()


def _store(url: str, journal: Path, prefix: str = "j:") -> RedisStateStore:
    return RedisStateStore(RedisStateConfig(kind="redis", url=url, prefix=prefix, journal=str(journal), retry_s=3600,
                                            timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S))


def _down_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: refused at once


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "memory-only"])
def test_a_replica_killed_during_an_outage_leaves_its_spend_to_the_next_router_on_its_journal(
        journal: bool, gemini_server, tmp_path: Path, persistent_redis: RedisServer) -> None:  # noqa: F811
    # A replica answers 3 requests with Redis up and 4 while Redis is down (admitted and settled in its memory, owed to
    # Redis), and is SIGKILLed before Redis is back. With a journal, a router started on that file sends what it owed
    # on its first contact with Redis: the shared spend is the wire's bill, exactly. Without one (today's default) the
    # 4 settles die with the process: the shared budget stays short by them.
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    one = cost(FLASH, USAGE)
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": 100.0, "costs": {"chat": 0.01}, "window": "day"}
    config["state"] = {"kind": "redis", "url": persistent_redis.url, "prefix": "kill:", "retry_s": RETRY_S,
                       "timeout_s": TIMEOUT_S, "connect_timeout_s": TIMEOUT_S}
    path = tmp_path / "replica" / "journal.db"
    if journal:
        config["state"]["journal"] = str(path)
    with _running([_worker("tests.router_phases_worker", json.dumps(config), "3,4")]) as (worker,):
        assert _line(worker) == "ready"
        _say(worker)
        assert _line(worker) == "done"  # 3 answered, settled in Redis
        persistent_redis.stop(kill=True)
        try:
            _say(worker)
            assert _line(worker) == "done"  # 4 answered from memory, their settles owed to Redis
            if journal:
                assert _rows(path) == 4
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=30)
        finally:
            persistent_redis.start()
    bill = len([r for r in gemini_server.requests if r.action == "generateContent"])
    assert bill == 7
    with Router.from_config(config) as router:
        usage = budget_usage(router)
    if journal:
        assert usage == {"spent": pytest.approx(bill * one), "reserved": 0.0}
        assert _rows(path) == 0  # deleted once Redis applied them
        assert oct(path.stat().st_mode & 0o777) == "0o600" and list((tmp_path / "replica" / "journal.db.owners"
                                                                       ).iterdir()) == []
    else:
        assert usage == {"spent": pytest.approx((bill - 4) * one), "reserved": 0.0}  # the killed replica's 4: lost


def test_two_processes_starting_on_a_killed_replica_s_journal_take_its_writes_over_once(
        tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    # The killed replica's writes (5 settles, 5 outcome appends) are taken over by exactly one of two processes that
    # open its journal at once; once that one is killed too, a router with Redis up sends them all, in order.
    journal, down = tmp_path / "journal.db", _down_url()
    with _running([_worker("tests.journal_worker", "owe", down, "j:", str(journal), "5")]) as (owing,):
        assert _line(owing) == "kept 10"
        owing.send_signal(signal.SIGKILL)
        owing.communicate(timeout=30)
    assert _rows(journal) == 10
    with _running([_worker("tests.journal_worker", "adopt", down, "j:", str(journal)) for _ in range(2)]) as pair:
        assert [_line(w) for w in pair] == ["ready"] * 2
        for w in pair:
            _say(w)
        assert sorted(int(_line(w)) for w in pair) == [0, 10]
    # Both killed on the way out: their writes are anyone's again.

    async def replay() -> tuple[tuple[int, int], list[bytes]]:
        store = _store(redis_server.url, journal)
        assert store._unsent.waiting() == 10
        usage, items = await store.usage("acct"), (await store.items("log")).items
        await store.aclose()
        return usage, items

    import asyncio

    usage, items = asyncio.run(replay())
    assert usage == (5, 0) and items == [f"item {i}".encode() for i in range(5)]
    assert _rows(journal) == 0


async def test_a_live_router_s_writes_are_not_taken_over_and_a_closed_one_s_are(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal, down = tmp_path / "journal.db", _down_url()
    first = _store(down, journal)
    await first.settle("acct", None, 3, keep_s=600)
    assert _store(down, journal)._unsent.waiting() == 0  # its owner lives: not another router's to send
    with caplog.at_level(logging.WARNING, logger="genroute.state"):
        await first.aclose()  # Redis still down: kept in the journal, and said so
    assert f"until a router started with the journal {journal} sends them" in caplog.text
    assert _store(down, journal)._unsent.waiting() == 1
    assert _store(down, journal, prefix="other:")._unsent.waiting() == 0  # another prefix: another Redis's writes


async def test_a_journaled_settle_older_than_the_markers_hour_is_replayed_and_counted(
        tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    # Redis's settle markers live an hour: a replay after that may count one that reached Redis before its reply was
    # lost twice. Skipping it would under-count every one that never reached Redis (the usual case): replayed, counted.
    journal = tmp_path / "journal.db"
    first = _store(_down_url(), journal)
    await first.settle("acct", None, 7, keep_s=600)
    await first.aclose()
    db = sqlite3.connect(journal)
    db.execute("UPDATE unsent SET made = made - 7200")
    db.commit()
    db.close()
    with caplog.at_level(logging.WARNING, logger="genroute.state"):
        second = _store(redis_server.url, journal)
    assert second._unsent.journal is not None and second._unsent.journal.stale == 1
    assert "older than an hour" in caplog.text
    assert await second.usage("acct") == (7, 0)
    await second.aclose()


def test_a_journal_that_cannot_be_one_is_a_config_error_naming_it_at_build(gemini_server, tmp_path: Path) -> None:
    def build(journal: Any, kind: str = "redis") -> ConfigError:
        config = gemini_config(gemini_server)
        config["state"] = {"kind": kind, "journal": journal, **({"url": _down_url()} if kind == "redis" else {})}
        with pytest.raises(ConfigError) as caught:
            Router.from_config(config)
        assert caught.value.field == "state.journal"
        return caught.value

    assert "is a directory" in str(build(str(tmp_path)))
    (tmp_path / "file").write_text("")
    assert "cannot use" in str(build(str(tmp_path / "file" / "journal.db")))  # its "directory" is a file
    shared = tmp_path / "shared.db"
    shared.touch(mode=0o666)
    os.chmod(shared, 0o666)
    assert "may be written by its group or other users" in str(build(str(shared)))
    (tmp_path / "link.db").symlink_to(tmp_path / "elsewhere.db")
    assert "not a regular file" in str(build(str(tmp_path / "link.db")))
    open_dir = tmp_path / "tmp"  # as /tmp: anyone may add a file to it (a journal.db-wal SQLite would read)
    open_dir.mkdir()
    os.chmod(open_dir, 0o1777)
    assert "directory" in str(refused := build(str(open_dir / "journal.db"))) and "may be written by" in str(refused)
    assert not (open_dir / "journal.db").exists()  # refused before anything is made there
    build(str(tmp_path / "j.db"), kind="memory")  # only a shared store owes anything
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs.db"
        theirs.touch(mode=0o600)
        os.chown(theirs, 65534, 65534)
        assert "belongs to another user" in str(build(str(theirs)))



class _Busy:
    """Another process's write transaction on the journal (a neighbour taking over a large one, or stopped mid-write),
    let go when the test says, or after ``WATCHDOG_S`` at the latest (then ``gave_up`` is set)."""

    WATCHDOG_S = 20.0

    def __init__(self, journal: Path) -> None:
        import threading

        self._db = sqlite3.connect(journal, isolation_level=None, check_same_thread=False)
        self._db.execute("BEGIN IMMEDIATE")
        self.gave_up = threading.Event()
        self._lock = threading.Lock()
        self._timer = threading.Timer(self.WATCHDOG_S, self._end, kwargs={"watchdog": True})
        self._timer.start()

    def _end(self, *, watchdog: bool = False) -> None:
        with self._lock:
            if self._db is None:
                return
            if watchdog:
                self.gave_up.set()
            self._db.execute("ROLLBACK")
            self._db.close()
            self._db = None

    def end(self) -> None:
        self._timer.cancel()
        self._end()


async def test_a_busy_journal_does_not_hold_up_a_request_and_what_redis_applied_is_deleted_with_the_next_write(
        tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    # A write runs on the event loop of the request that settles: one that finds the file busy (another process's
    # transaction) is kept in memory only and counted, not waited for (it waited up to 30 s: every request of the
    # replica stalled meanwhile). A deletion the busy file refused is made with the next write: left in the file, the
    # write would be sent again by the router that takes it over (twice, after the markers' hour).
    journal, down = tmp_path / "journal.db", _down_url()
    first = _store(down, journal)
    await first.settle("acct", None, 3, keep_s=600)
    busy = _Busy(journal)
    try:
        await first.settle("acct", None, 4, keep_s=600)
        assert not busy.gave_up.is_set()  # it returned while the file was still busy
    finally:
        busy.end()
    assert first._unsent.journal is not None and first._unsent.journal.failures == 1
    assert first._unsent.waiting() == 2 and _rows(journal) == 1  # the 4: in this process's memory only
    await first.aclose()  # Redis still down: the 3 is left in the file for the next router

    second = _store(redis_server.url, journal)  # takes the 3 over
    busy = _Busy(journal)
    try:
        assert await second.usage("acct") == (3, 0)  # sent; its deletion refused by the busy file
        assert not busy.gave_up.is_set() and _rows(journal) == 1
    finally:
        busy.end()
    await second.aclose()
    assert _rows(journal) == 0  # deleted with the next write (the close's)


async def test_a_large_journal_is_taken_over_a_part_at_a_time(
        tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # Killed processes may leave a journal large (each up to MAX_UNSETTLED settles, and as many appends a list). A
    # router taking it over read it into memory whole, at build and on the request path, past its queue's bounds (its
    # own settles beyond MAX_UNSETTLED then went unsent). It takes a part at a time now, the next once those are sent.
    from genroute.state import unsent

    monkeypatch.setattr(unsent, "ADOPT_MAX", 4, raising=False)  # 10,000 as shipped
    journal, down = tmp_path / "journal.db", _down_url()
    first = _store(down, journal)
    for _ in range(10):
        await first.settle("acct", None, 1, keep_s=600)
    await first.aclose()  # Redis down: its 10 are left in the file
    second = _store(down, journal)
    assert second._unsent.waiting() == 4 and _rows(journal) == 10  # the oldest 4 taken over, the rest still there
    await second.aclose()
    third = _store(redis_server.url, journal)
    assert await third.usage("acct") == (10, 0)  # all sent, a part at a time
    assert _rows(journal) == 0
    await third.aclose()


def test_workers_forked_from_a_preloading_master_send_what_it_took_over_once(
        tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    # gunicorn --preload: the master builds the router, taking over what a killed replica left in the journal, then
    # forks the workers, and forks one again each time one is recycled (max_requests), hours or days later. Each worker
    # inherited the master's queue and sent it on its first call, and the master sent it once more when it closed:
    # counted again each time Redis's settle markers (an hour) had expired. A write is now sent only by the process
    # that owns its row: the first worker takes the master's over; later ones, and the master, leave them.
    import asyncio

    import redis

    journal, down = tmp_path / "journal.db", _down_url()

    async def owe() -> None:
        killed = _store(down, journal)
        await killed.settle("acct", None, 7, keep_s=600)
        await killed.aclose()  # Redis down: left in the file

    async def usage() -> tuple[int, int]:
        reader = RedisStateStore(RedisStateConfig(kind="redis", url=redis_server.url, prefix="j:"))
        try:
            return await reader.usage("acct")
        finally:
            await reader.aclose()

    asyncio.run(owe())
    client = redis.Redis.from_url(redis_server.url)
    try:
        with _running([_worker("tests.journal_worker", "preload", redis_server.url, "j:", str(journal))]) as (master,):
            assert _line(master) == "ready 1"
            for _ in range(2):  # a worker, then its replacement after the markers' hour
                _say(master)
                assert _line(master) == "served"
                assert asyncio.run(usage()) == (7, 0)
                for marker in client.keys("j:sb:*"):  # the settle markers' hour passes
                    client.delete(marker)
            _say(master, "close")
            assert _line(master) == "closed"
        assert asyncio.run(usage()) == (7, 0) and _rows(journal) == 0
    finally:
        client.close()
    # Each worker that sent writes left its lock file (it ended without closing its store); the next router removes
    # those of owners that are gone and own no row (one a worker's life, else, in the directory for ever).
    owners = tmp_path / "journal.db.owners"
    assert len(list(owners.iterdir())) == 2
    _store(down, journal)
    assert list(owners.iterdir()) == []
