"""A store file in a directory this process cannot write (a read-only mount, an immutable directory, another user's
directory): read, also beside another process writing it, and each write refused with a ConfigError naming the
file."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.errors import ConfigError
from genroute.outcomes import OutcomeRecord, OutcomeStore, read_outcome_file

from .read_only_files import read_only  # noqa: F401
from .test_outcome_durability import record, shadowing


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


@contextlib.contextmanager
def read_only_view(directory: Path, view: Path) -> Iterator[None]:
    """``directory`` seen through ``view``, a read-only bind mount: the reader's view of the writer's directory (root
    only, as CI runs)."""
    if os.geteuid() != 0:
        pytest.fail("the reader's read-only view of the writer's directory is a bind mount: run the tests as root")
    view.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(view)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(view)], check=True)


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


def test_a_store_in_a_directory_this_user_may_not_write_is_read_and_a_write_names_the_file(tmp_path: Path) -> None:
    """A directory whose permissions the user lacks (another user's, or mode 555: the usual read-only directory for
    anyone but root) is SQLite's SQLITE_READONLY_DIRECTORY, not the SQLITE_CANTOPEN of an immutable directory or a
    read-only mount: such a store was still "cannot open the outcome store ...: attempt to write a readonly
    database". Root is held back by permissions only without its capability to override them: the reading runs so."""
    import json
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

    directory, view = tmp_path / "outcomes", tmp_path / "view"
    store = OutcomeStore(directory / "outcomes.db")
    store.upsert_many_sync([record("a"), record("b", 0.0)])
    store.close()
    with read_only_view(directory, view):
        writer = sqlite3.connect(directory / "outcomes.db")  # another process with the file open: its -wal is there
        writer.execute("SELECT COUNT(*) FROM outcomes").fetchone()
        assert (directory / "outcomes.db-wal").exists()
        reader = OutcomeStore(view / "outcomes.db")
        assert reader.count_sync() == 2
        writer.close()  # the writer ends, and its -wal file with it
        assert not (directory / "outcomes.db-wal").exists()
        assert [r.id for r in reader.records_sync()] == ["a", "b"] and reader.count_sync() == 2


def test_a_read_another_process_s_checkpoint_overlapped_in_a_read_only_directory_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in a directory this process cannot write is read unchanging: no lock, so another process may move its
    writes into the file in the middle of a read, which then saw pages of two states of it: with two readers beside
    a writer pausing now and then, 4 of ~90 reads were "database disk image is malformed" and one gave 20,205 rows
    for 20,000 (19,998 ids). Here the other process rewrites the file from inside the read (SQLite's progress
    handler, called by the reader's own query: no timing); the reader's view of the directory is a read-only bind
    mount (root only, as CI runs)."""
    import sys
    import textwrap

    from genroute.outcomes import sqlite_files
    from genroute.outcomes import store as store_module

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

    with read_only_view(directory, view):
        reader = OutcomeStore(view / "outcomes.db")
        assert reader._frozen
        monkeypatch.setattr(sqlite_files, "connect", connect)
        monkeypatch.setattr(store_module, "connect", connect)
        ids = [r.id for r in reader.records_sync()]
    assert rewritten == [0]
    assert ids == [f"b{i:04}" for i in range(1500)]


def test_a_router_with_its_store_in_a_read_only_directory_is_ready_its_health_saying_writes_are_refused(
        gemini_server, read_only_dir: Path) -> None:
    # Its health probe took the file's write lock, which a read-only directory refuses: such a router, which serves
    # and refreshes as production.md says, was never ready ("OperationalError: unable to open database file").
    with Router.from_config(shadowing(gemini_server, read_only_dir)) as router:
        health = router.health()
    (outcomes,) = [d for d in health.dependencies if d.name == "outcomes"]
    assert health.ready and outcomes.ok, outcomes
    assert outcomes.detail == ("outcomes.db: 2 records read; writes refused: its directory is read-only (SQLite writes "
                               "a -wal and a -shm file beside it)")


def test_a_file_another_process_writes_during_every_read_is_an_outcome_store_error_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in a directory this process cannot write is read again when another process wrote it meanwhile, 5
    times at most: after the 5th it was sqlite3's own OperationalError, where every other failure of the store is
    genroute's OutcomeStoreError naming the file. The other process's writing is a change of the file's times from
    inside each read (SQLite's progress handler, called by the reader's own query: no timing); the reader's view of
    the directory is a read-only bind mount (root only, as CI runs)."""

    from genroute.errors import OutcomeStoreError

    directory, view = tmp_path / "outcomes", tmp_path / "view"
    store = OutcomeStore(directory / "outcomes.db")
    store.upsert_many_sync([record("a"), record("b", 0.0)])
    store.close()
    with read_only_view(directory, view):
        reader = OutcomeStore(view / "outcomes.db")
        assert reader._frozen
        written_during_each_frozen_read(directory / "outcomes.db", monkeypatch)
        with pytest.raises(OutcomeStoreError) as refused:
            reader.count_sync()
    assert refused.value.path == str(view / "outcomes.db")
    assert str(view / "outcomes.db") in str(refused.value) and "changed during each of 5 reads" in str(refused.value)


def test_a_store_that_cannot_be_opened_for_another_process_writing_it_is_a_config_error_naming_its_field(
        read_only_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a store in a directory this process cannot write reads the file as it is (frozen): when another process
    wrote it during each of those reads, the store could not be built, a ConfigError naming outcomes.path ("cannot
    open the outcome store ..."), as every other failure to open it is. Since read_file raises OutcomeStoreError there
    (for a read of a store in use), that error escaped the constructor (and Router.from_config) instead, naming no
    field. The other process's writing is a change of the file's times from inside each read (no timing)."""
    written_during_each_frozen_read(read_only_dir, monkeypatch)
    with pytest.raises(ConfigError) as refused:
        OutcomeStore(read_only_dir)
    assert refused.value.field == "outcomes.path"
    assert str(refused.value).startswith(f"outcomes.path: cannot open the outcome store {str(read_only_dir)!r}: ")
    assert "changed during each of 5 reads" in str(refused.value)


def written_during_each_frozen_read(written: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frozen read (``read_file`` of a file in a directory this process cannot write) sees ``written`` change
    while it runs, as another process's writing changes it: its times are moved on from inside the read (SQLite's
    progress handler, called by the reader's own query: no timing)."""

    from genroute.outcomes import sqlite_files
    from genroute.outcomes import store as store_module

    touches: list[int] = []

    def written_meanwhile() -> int:
        touches.append(1)
        os.utime(written, ns=(len(touches) * 10**9, len(touches) * 10**9))
        return 0

    real_connect = sqlite_files.connect

    def connect(path: Path, *, frozen: bool = False, **options: Any) -> sqlite3.Connection:
        db = real_connect(path, frozen=frozen, **options)
        if frozen:
            db.set_progress_handler(written_meanwhile, 1)
        return db

    monkeypatch.setattr(sqlite_files, "connect", connect)
    monkeypatch.setattr(store_module, "connect", connect)
