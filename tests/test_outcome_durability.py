"""The SQLite outcome store in production: shadows that do not wait for their writes, `outcomes.synchronous`, a
router's close leaving every write in the file itself, and a store file in a read-only directory."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.errors import ConfigError
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side, read_outcome_file
from genroute.outcomes import recorder as recorder_module
from genroute.router import lifecycle
from genroute.router.shadows import MAX_SHADOWS

from .conftest import gemini_config
from .read_only_files import read_only  # noqa: F401
from .test_outcome_writes import until, writes_held


def record(id: str, score: float = 1.0) -> OutcomeRecord:
    return OutcomeRecord(metadata={"id": id, "task": "t"}, outcomes={"chat": Side(score=score, cost_usd=1e-4)})


def shadowing(server: Any, path: Path, **outcomes: Any) -> dict[str, Any]:
    """A router serving with ``chat`` and shadowing every request with ``lite``, its outcomes in ``path``."""
    cfg = gemini_config(server)
    cfg["backends"]["lite"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    cfg["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["lite"]}
    cfg["outcomes"] = {"path": str(path), "scorer": "normalized_exact", **outcomes}
    return cfg


def writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "genroute-outcome-writer" and t.is_alive()]


async def test_a_shadow_frees_its_place_once_its_model_ran_not_once_its_write_is_answered(gemini_server,
                                                                                          tmp_path: Path) -> None:
    """A shadow kept its place under the cap of shadows in flight until its outcome write was answered: while the
    store's writes are held up (a slow disk, another process writing), a sequential client's shadows past the cap
    were dropped (a quarter at 8 busy clients, benchmarks/RESULTS.md). Its write is handed over and the shadow ends."""
    n = 2 * MAX_SHADOWS
    async with await Router.acreate(shadowing(gemini_server, tmp_path / "outcomes.db")) as router:
        recorder = router._executor.outcomes
        store = recorder.store
        assert isinstance(store, OutcomeStore)
        with writes_held(store.path):
            results = [await router.agenerate(f"question {i}") for i in range(n)]
            await until(lambda: recorder.writes_behind == n)
            assert not router._executor._live_shadows()  # every shadow ended, its write still waiting
            assert store.unwritten == n
        await router.adrain()  # waits for the writes behind too
        assert recorder.writes_behind == 0 and router._executor.shadows_dropped == 0
        assert sorted(r.id for r in store.records_sync()) == sorted(r.outcome_id for r in results)


async def test_past_the_bound_on_writes_behind_a_shadow_waits_and_new_ones_are_dropped_and_counted(
        gemini_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Memory stays bounded: past ``MAX_WRITES_BEHIND`` unanswered writes a shadow waits for its own (its place
    taken), so at the cap it is new shadows that are dropped, counted and logged, before their model runs; no
    outcome of a shadow that ran is lost."""
    behind, extra = 3, 4
    monkeypatch.setattr(recorder_module, "MAX_WRITES_BEHIND", behind)
    async with await Router.acreate(shadowing(gemini_server, tmp_path / "outcomes.db")) as router:
        recorder = router._executor.outcomes
        store = recorder.store
        with writes_held(store.path):
            results = [await router.agenerate(f"question {i}") for i in range(behind + MAX_SHADOWS)]
            await until(lambda: store.unwritten == behind + MAX_SHADOWS)
            assert recorder.writes_behind == behind and len(router._executor._live_shadows()) == MAX_SHADOWS
            with caplog.at_level(logging.WARNING, logger="genroute"):
                for i in range(extra):
                    await router.agenerate(f"more {i}")
            assert router._executor.shadows_dropped == extra
            assert "dropped 1 shadow run(s) so far" in caplog.text
        await router.adrain()
        assert sorted(r.id for r in store.records_sync()) == sorted(r.outcome_id for r in results)
        assert recorder.write_errors == 0


@pytest.mark.parametrize(("given", "pragma"), [({}, 1), ({"synchronous": "normal"}, 1), ({"synchronous": "full"}, 2)])
def test_outcomes_synchronous_reaches_the_writer_s_connection(gemini_server, tmp_path: Path, given: dict[str, str],
                                                              pragma: int) -> None:
    """Nothing brought back an fsync per commit (power-loss durability) once WAL with NORMAL was chosen."""
    with Router.from_config(shadowing(gemini_server, tmp_path / "outcomes.db", **given)) as router:
        store = router._executor.outcomes.store
        assert store._writing().execute("PRAGMA synchronous").fetchone()[0] == pragma
        router.generate("hello")
        router.drain()
        assert store.count_sync() == 1


@pytest.mark.parametrize("value", ["fast", "FULL", 2, True, None])
def test_outcomes_synchronous_refuses_what_it_does_not_know_naming_the_field(gemini_server, tmp_path: Path,
                                                                              value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Router.from_config(shadowing(gemini_server, tmp_path / "outcomes.db", synchronous=value))
    assert info.value.field == "outcomes.synchronous"
    with pytest.raises(ConfigError) as info:
        OutcomeStore(tmp_path / "code.db", synchronous=value)  # type: ignore[arg-type]
    assert info.value.field == "outcomes.synchronous"


def test_closing_a_router_leaves_every_outcome_in_the_file_alone_and_ends_the_writer(gemini_server,
                                                                                     tmp_path: Path) -> None:
    """``close`` did not flush the store: for 0.2 s after a write its records were in the ``-wal`` file only (and
    with another connection open to the file, until SQLite's next checkpoint), so a copy of the file made after
    close missed them; and the writer thread outlived the router."""
    path = tmp_path / "outcomes.db"
    router = Router.from_config(shadowing(gemini_server, path))
    results = [router.generate(f"question {i}") for i in range(5)]
    reader = sqlite3.connect(path)  # another process reading the file now and then: closing is not the last close
    try:
        assert reader.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] <= len(results)
        router.close()
        assert writers() == []
        shutil.copy(path, tmp_path / "copy.db")  # the file alone, without its -wal
    finally:
        reader.close()
    copied = OutcomeStore(tmp_path / "copy.db").records_sync()
    assert sorted(r.id for r in copied) == sorted(r.outcome_id for r in results)


def test_closing_a_router_moves_into_the_file_what_a_reader_kept_its_writer_from_moving(gemini_server,
                                                                                        tmp_path: Path) -> None:
    """The writer moves its writes into the file when it pauses, but not past an older snapshot another process is
    reading then: those stayed in the ``-wal`` file until a later checkpoint. The close moves them (the test above
    passes on the writer's pause alone)."""
    path = tmp_path / "outcomes.db"
    router = Router.from_config(shadowing(gemini_server, path))
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 0  # a snapshot held meanwhile
        results = [router.generate(f"question {i}") for i in range(5)]
        router.drain()
        end = time.monotonic() + 30
        while writers():  # the writer paused (its checkpoint could not pass the snapshot) and ended
            assert time.monotonic() < end, "the writer did not end"
            time.sleep(0.01)
        reader.execute("COMMIT")  # done reading, still open
        router.close()
        shutil.copy(path, tmp_path / "copy.db")  # the file alone, without its -wal
    finally:
        reader.close()
    copied = OutcomeStore(tmp_path / "copy.db").records_sync()
    assert sorted(r.id for r in copied) == sorted(r.outcome_id for r in results)


def test_a_close_whose_writes_cannot_be_answered_in_time_says_so(gemini_server, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Another process holds the file's lock past the close's wait: the writes still waiting are logged as an error
    naming the file (and written once the lock is let go, the process living)."""
    monkeypatch.setattr(lifecycle, "_OUTCOMES_CLOSE_S", 0.2)
    path = tmp_path / "outcomes.db"
    router = Router.from_config(shadowing(gemini_server, path))
    store = router._executor.outcomes.store
    with writes_held(path):
        router.generate("question")
        with caplog.at_level(logging.ERROR, logger="genroute"):
            router.close()
        assert store.unwritten == 1
        assert "1 outcome write(s)" in caplog.text and str(path) in caplog.text
    store.close()
    assert store.count_sync() == 1


@pytest.fixture
def read_only_dir(tmp_path: Path, read_only: Callable[..., None]) -> Iterator[Path]:  # noqa: F811
    """A store file with two records, closed (every write in the file itself), in a directory made read-only (for
    root too: immutable, so SQLite cannot make its ``-wal``/``-shm`` files there)."""
    directory = tmp_path / "outcomes"
    store = OutcomeStore(directory / "outcomes.db")
    store.upsert_many_sync([record("a"), record("b", 0.0)])
    store.close()
    assert sorted(p.name for p in directory.iterdir()) == ["outcomes.db"]
    read_only(directory)
    yield directory / "outcomes.db"


def test_a_store_in_a_read_only_directory_is_read_and_a_write_names_the_file(read_only_dir: Path) -> None:
    """It could not be opened at all: "cannot open the outcome store ...: unable to open database file"."""
    store = OutcomeStore(read_only_dir)
    assert [(r.id, r.outcomes["chat"].score) for r in store.records_sync()] == [("a", 1.0), ("b", 0.0)]
    assert store.count_sync() == 2 and store.get_sync("b") is not None
    changes = store.changes_sync(None)
    assert changes.full and [r.id for _, r in changes.records] == ["a", "b"]
    assert not store.changes_sync(changes.place).records
    assert [r.id for r in read_outcome_file(read_only_dir)] == ["a", "b"]
    with pytest.raises(ConfigError) as info:  # was sqlite3.OperationalError("unable to open database file")
        store.upsert_sync(record("c"))
    assert info.value.field == "outcomes.path" and str(read_only_dir) in str(info.value)
    assert "directory is read-only" in str(info.value)
    store.close()
    assert sorted(p.name for p in read_only_dir.parent.iterdir()) == ["outcomes.db"]


def test_genroute_compile_reads_outcomes_in_a_read_only_directory(read_only_dir: Path, tmp_path: Path) -> None:
    from genroute.cli import main as cli

    out = tmp_path / "compiled"
    assert cli(["compile", "--outcomes", str(read_only_dir), "--out", str(out), "--no-learned", "--min-n", "1"]) == 0
    assert (out / "stats.json").exists()


def test_a_router_with_its_store_in_a_read_only_directory_serves_and_refuses_feedback_naming_the_file(
        gemini_server, read_only_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Router.from_config(shadowing(gemini_server, read_only_dir)) as router:
        recorder = router._executor.outcomes
        assert router.refresh() in (True, False)  # reads the store
        result = router.generate("hello")
        with caplog.at_level(logging.WARNING, logger="genroute"):
            router.drain()
        assert recorder.write_errors == 1 and "not stored: ConfigError" in caplog.text  # the shadow's outcome
        # with the file and why, as production.md says: it was the error's type alone
        assert str(read_only_dir) in caplog.text and "directory is read-only" in caplog.text
        with pytest.raises(ConfigError) as info:
            router.feedback(result, score=1.0)
        assert info.value.field == "outcomes.path" and str(read_only_dir) in str(info.value)
    assert [r.id for r in OutcomeStore(read_only_dir).records_sync()] == ["a", "b"]


def _writes_behind_in_child(recorder: Any, answer: Any) -> None:
    answer.put(recorder.writes_behind)


async def test_a_process_forked_while_writes_are_behind_does_not_count_the_parent_s(gemini_server,
                                                                                    tmp_path: Path) -> None:
    """The parent's writer answers its writes in the parent: a child forked meanwhile (a pre-fork server) would wait
    for them in its ``drain`` and have that much less room under ``MAX_WRITES_BEHIND``, for good."""
    import multiprocessing

    async with await Router.acreate(shadowing(gemini_server, tmp_path / "outcomes.db")) as router:
        recorder = router._executor.outcomes
        with writes_held(recorder.store.path):
            await router.agenerate("question")
            await until(lambda: recorder.writes_behind == 1)
            context = multiprocessing.get_context("fork")
            answer = context.SimpleQueue()
            child = context.Process(target=_writes_behind_in_child, args=(recorder, answer))
            child.start()
            child.join(60)
            assert child.exitcode == 0 and answer.get() == 0
        await router.adrain()
        assert recorder.writes_behind == 0 and recorder.store.count_sync() == 1


def test_writes_handed_over_from_a_daemon_thread_are_written_before_the_process_exits(tmp_path):
    # A router's loop thread is a daemon, and a thread inherits that: the writer it started was killed at the
    # interpreter's exit with the shadow outcomes it had been handed. The sleep only makes the writer slower than
    # the exit; nothing is timed.
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "written.txt"
    script = textwrap.dedent("""
        import sys, threading, time
        from genroute.outcomes.writer import GroupWriter

        def commit(items):
            time.sleep(0.3)
            with open(sys.argv[1], "a", encoding="utf-8") as handle:
                handle.write("".join(items))
            return items

        writer = GroupWriter(commit)
        handing = threading.Thread(target=lambda: writer.submit(["handed over"]), daemon=True)
        handing.start()
        handing.join()
    """)
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == "handed over"


def test_a_store_in_a_directory_this_user_may_not_write_is_read_and_a_write_names_the_file(tmp_path: Path) -> None:
    """A directory whose permissions the user lacks (another user's, or mode 555: the usual read-only directory for
    anyone but root) is SQLite's SQLITE_READONLY_DIRECTORY, not the SQLITE_CANTOPEN of an immutable directory or a
    read-only mount: such a store was still "cannot open the outcome store ...: attempt to write a readonly
    database". Root is held back by permissions only without its capability to override them: the reading runs so."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    directory = tmp_path / "outcomes"
    path = directory / "outcomes.db"
    store = OutcomeStore(path)
    store.upsert_many_sync([record("a"), record("b", 0.0)])
    store.close()
    script = textwrap.dedent("""
        import json, sys
        from genroute.errors import ConfigError
        from genroute.outcomes import OutcomeRecord, OutcomeStore

        store = OutcomeStore(sys.argv[1])
        answer = {"ids": [r.id for r in store.records_sync()], "count": store.count_sync()}
        try:
            store.upsert_sync(OutcomeRecord(metadata={"id": "c"}))
        except ConfigError as exc:
            answer["refused"] = [exc.field, str(exc)]
        print(json.dumps(answer))
    """)
    if os.geteuid() == 0:  # another user's directory, and root without CAP_DAC_OVERRIDE (util-linux's setpriv)
        os.chown(directory, 65534, 65534)
        directory.chmod(0o755)
        path.chmod(0o644)
        run = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    else:
        directory.chmod(0o555)
        run = []
    try:
        done = subprocess.run([*run, sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                              timeout=60)
    finally:
        directory.chmod(0o700)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ids"] == ["a", "b"] and answer["count"] == 2
    field, message = answer["refused"]
    assert field == "outcomes.path" and str(path) in message and "directory is read-only" in message
    assert sorted(p.name for p in directory.iterdir()) == ["outcomes.db"]


def test_a_store_opened_in_a_read_only_directory_beside_a_writer_is_read_once_the_writer_ended(tmp_path: Path) -> None:
    """Whether the file was read as an unchanging one was settled when the store was opened: opened while another
    process wrote it (its -wal file there, so the first read worked), every read once that writer paused or ended
    (its -wal file gone) was "unable to open database file": 2,784 of 2,801 reads of a reader, through a read-only
    mount, of a file a process beside it wrote now and then. The directory is the same one writable (the writer's)
    and read-only (the reader's, a read-only bind mount: root only, as CI runs)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.fail("the reader's read-only view of the writer's directory is a bind mount: run the tests as root")
    directory, view = tmp_path / "outcomes", tmp_path / "view"
    store = OutcomeStore(directory / "outcomes.db")
    store.upsert_many_sync([record("a"), record("b", 0.0)])
    store.close()
    view.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(view)], check=True)
    try:
        writer = sqlite3.connect(directory / "outcomes.db")  # another process with the file open: its -wal is there
        writer.execute("SELECT COUNT(*) FROM outcomes").fetchone()
        assert (directory / "outcomes.db-wal").exists()
        reader = OutcomeStore(view / "outcomes.db")
        assert reader.count_sync() == 2
        writer.close()  # the writer ends, and its -wal file with it
        assert not (directory / "outcomes.db-wal").exists()
        assert [r.id for r in reader.records_sync()] == ["a", "b"] and reader.count_sync() == 2
    finally:
        subprocess.run(["umount", "--lazy", str(view)], check=True)


def test_a_read_another_process_s_checkpoint_overlapped_in_a_read_only_directory_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in a directory this process cannot write is read unchanging: no lock, so another process may move its
    writes into the file in the middle of a read, which then saw pages of two states of it: with two readers beside
    a writer pausing now and then, 4 of ~90 reads were "database disk image is malformed" and one gave 20,205 rows
    for 20,000 (19,998 ids). Here the other process rewrites the file from inside the read (SQLite's progress
    handler, called by the reader's own query: no timing); the reader's view of the directory is a read-only bind
    mount (root only, as CI runs)."""
    import os
    import subprocess
    import sys
    import textwrap

    from genroute.outcomes import sqlite_files
    from genroute.outcomes import store as store_module

    if os.geteuid() != 0:
        pytest.fail("the reader's read-only view of the writer's directory is a bind mount: run the tests as root")
    directory, view = tmp_path / "outcomes", tmp_path / "view"
    store = OutcomeStore(directory / "outcomes.db")
    store.upsert_many_sync([OutcomeRecord(input="x" * 1000, output="y", metadata={"id": f"a{i:04}", "task": "t"})
                            for i in range(2000)])
    store.close()
    rewrite = textwrap.dedent("""
        import sqlite3, sys
        from genroute.outcomes import OutcomeRecord, OutcomeStore

        with sqlite3.connect(sys.argv[1]) as db:
            db.execute("DELETE FROM outcomes")
        store = OutcomeStore(sys.argv[1])
        store.upsert_many_sync([OutcomeRecord(input="z" * 700, output="w", metadata={"id": f"b{i:04}", "task": "t"})
                                for i in range(1500)])
        store.close()
    """)
    rewritten: list[int] = []

    def in_the_middle() -> int:
        if not rewritten:
            rewritten.append(subprocess.run([sys.executable, "-c", rewrite, str(directory / "outcomes.db")],
                                            timeout=120).returncode)
        return 0

    real_connect = sqlite_files.connect

    def connect(path: Path, *, frozen: bool = False, **options: Any) -> sqlite3.Connection:
        db = real_connect(path, frozen=frozen, **options)
        if frozen and not sqlite_files.wal_file(path).exists():  # read unchanging, the writer rewriting it meanwhile
            db.set_progress_handler(in_the_middle, 1000)
        return db

    view.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(view)], check=True)
    try:
        reader = OutcomeStore(view / "outcomes.db")
        assert reader._frozen
        monkeypatch.setattr(sqlite_files, "connect", connect)
        monkeypatch.setattr(store_module, "connect", connect)
        ids = [r.id for r in reader.records_sync()]
    finally:
        subprocess.run(["umount", "--lazy", str(view)], check=True)
    assert rewritten == [0]
    assert ids == [f"b{i:04}" for i in range(1500)]
