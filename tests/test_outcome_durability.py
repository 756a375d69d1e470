"""The SQLite outcome store in production: shadows that do not wait for their writes, `outcomes.synchronous`, a
router's close leaving every write in the file itself (a store file in a read-only directory:
test_outcome_read_only.py)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.errors import ConfigError
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side
from genroute.outcomes import recorder as recorder_module
from genroute.router import lifecycle
from genroute.router.shadows import MAX_SHADOWS

from .conftest import gemini_config
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


async def test_a_shadow_that_ended_holds_no_place_before_its_loop_runs_its_done_callback(gemini_server,
                                                                                          tmp_path: Path) -> None:
    """A shadow run that had ended kept its place under ``max_shadows`` until its done callback ran, a turn of its
    loop later: a request coming in that turn found the cap full and dropped its shadow, and the test above, which
    looked when the last write was handed over, failed on a loaded machine (a finished task among the live ones).
    Here the test wakes in the very step the shadow ends in (its write handed over), before that callback runs."""
    from .test_executor import Gate

    async with await Router.acreate(shadowing(gemini_server, tmp_path / "outcomes.db")) as router:
        executor, store = router._executor, router._executor.outcomes.store
        gate = Gate(gemini_server, "gemini-2.5-flash-lite", hold_s=60)  # the shadow's model answers when released
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        submit = store.submit

        def submit_and_wake(record: OutcomeRecord) -> Any:
            written = submit(record)
            handed.set_result(None)  # this test's turn comes before the done callbacks of the shadow, which ends now
            return written

        store.submit = submit_and_wake
        try:
            await router.agenerate("question")
            (shadow,) = executor._shadows
            gate.release.set()
            async with asyncio.timeout(60):  # (not wait_for: its own callbacks would let the shadow's run first)
                await handed
            assert shadow.done()  # it ended in the step that handed its write over
            assert not executor._live_shadows()  # and holds no place any more
        finally:
            gate.release.set()
            del store.submit
        await router.adrain()
    assert executor.shadows_dropped == 0 and len(store.records_sync()) == 1


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


def test_a_flush_waiting_as_the_writer_thread_fails_to_start_returns_once_the_writes_are_answered() -> None:
    """The writer's thread failing to start cleared ``writing`` without telling a ``flush`` waiting for it: one with
    no timeout waited for good (one with a timeout sat it out, then said the writer was done)."""
    from genroute.outcomes.writer import GroupWriter

    starting, go = threading.Event(), threading.Event()

    class NoThread(threading.Thread):
        """A process out of threads, once ``go`` is set (``start`` waits for it, so that a flush can wait first)."""

        def start(self) -> None:
            starting.set()
            go.wait()
            raise RuntimeError("can't start new thread")

    writer: GroupWriter[str] = GroupWriter(lambda items: items, thread=NoThread)
    refused: list[BaseException] = []

    def hand_over() -> None:
        try:
            writer.submit(["lost"])
        except RuntimeError as exc:
            refused.append(exc)

    handing = threading.Thread(target=hand_over, daemon=True)
    handing.start()
    assert starting.wait(60)
    flushed: list[tuple[bool, int]] = []
    flushing = threading.Thread(target=lambda: flushed.append((writer.flush(), writer.unwritten)), daemon=True)
    flushing.start()
    while writer._flushing == 0:  # the flush waits for the writer that is starting
        time.sleep(0.01)
    go.set()
    handing.join(60)
    flushing.join(60)  # a bound on a hang, not a timing: without the notify this flush never returns
    assert refused and flushed == [(True, 0)]
    with pytest.raises(RuntimeError, match="can't start new thread"):
        writer.write(["after"])  # the next write tries again, and is told the same
    assert writer.unwritten == 0 and writer.flush()


def test_a_process_exiting_without_closing_its_store_waits_for_its_writes_a_bounded_time(tmp_path: Path) -> None:
    """The writer's thread was not a daemon, so that the writes handed over are written before the process exits: with
    the file locked by another process, the exit waited SQLite's busy timeout (30 s) for each lot of writes, 61 s for
    three writes, without a word. The exit now waits EXIT_WAIT_S (10 s; 0.5 here) in all, then logs the writes not
    written as lost, naming the file, and answers those still waiting with an OutcomeStoreError (what a router's
    recorder counts as lost)."""
    import json
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "outcomes.db"
    OutcomeStore(path).close()
    script = textwrap.dedent("""
        import atexit, json, logging, sys

        answered = []
        atexit.register(lambda: print(json.dumps(answered)))  # registered first: runs after genroute's own
        logging.basicConfig()
        from genroute.outcomes import OutcomeRecord, OutcomeStore, writer

        writer.EXIT_WAIT_S = 0.5
        store = OutcomeStore(sys.argv[1])
        for i in range(3):
            store.submit(OutcomeRecord(metadata={"id": f"r{i}", "task": "t"})).add_done_callback(
                lambda done: answered.append(type(done.exception()).__name__))
        # the process ends without store.close()
    """)
    with writes_held(path):
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"3 outcome write(s) to {str(path)!r} were not written within 0.5 s of the process exiting" in done.stderr
    assert set(json.loads(done.stdout)) <= {"OutcomeStoreError"}
    assert OutcomeStore(path).count_sync() == 0  # the lot being written was cut off: rolled back, the file whole


def test_an_exit_finding_every_write_written_reports_none_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer whose writes were all written but whose thread was still tidying up (closing its connection: a
    checkpoint) when the exit's wait ran out was given up on all the same: the store logged '0 outcome write(s) to ...
    were not written ... lost' at ERROR, a loss that never happened. Nothing is said of a writer with none unwritten."""
    from genroute.outcomes import writer as writer_module
    from genroute.outcomes.writer import GroupWriter

    idling, go = threading.Event(), threading.Event()

    def idle() -> None:
        idling.set()
        go.wait(30)

    told: list[int] = []

    def at_exit(n: int, closing_s: float) -> BaseException:
        told.append(n)
        return RuntimeError(f"{n} lost")

    writer: GroupWriter[str] = GroupWriter(lambda items: items, idle=idle, at_exit=at_exit)
    try:
        assert writer.write(["a"]) == ["a"]
        assert idling.wait(30)  # written; the writer tidies up as the exit comes
        monkeypatch.setattr(writer_module, "EXIT_WAIT_S", 0.0)
        writer_module._flush_at_exit()
    finally:
        go.set()
    assert writer.flush(30)
    assert told == []


def test_an_exit_after_a_close_that_gave_up_does_not_wait_for_the_same_writes_again(tmp_path: Path) -> None:
    """A close whose writes were stuck (another process holding the file's lock) waited its bound (a router's close:
    10 s), then the process's exit waited EXIT_WAIT_S (10 s) again for the same writes: 20 s for an app whose store is
    stuck. The exit now waits EXIT_WAIT_S less what the close waited for them in vain (0.5 s each here: nothing more),
    and says so when it gives them up. The script prints how long its close and its exit took."""
    import json
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "outcomes.db"
    OutcomeStore(path).close()
    script = textwrap.dedent("""
        import atexit, json, logging, sys, time

        answered, times = [], {}

        def report():  # registered first: runs after genroute's own
            times["exit_s"] = round(time.monotonic() - times.pop("closed"), 3)
            print(json.dumps({"answered": answered, **times}))

        atexit.register(report)
        logging.basicConfig()
        from genroute.outcomes import OutcomeRecord, OutcomeStore, writer

        writer.EXIT_WAIT_S = float(sys.argv[2])
        store = OutcomeStore(sys.argv[1])
        for i in range(3):
            store.submit(OutcomeRecord(metadata={"id": f"r{i}", "task": "t"})).add_done_callback(
                lambda done: answered.append(type(done.exception()).__name__))
        begun = time.monotonic()
        store.close(float(sys.argv[2]))  # as a router's close does: it gives up on them, logged
        times["closed"] = time.monotonic()
        times["close_s"] = round(times["closed"] - begun, 3)
    """)
    with writes_held(path):
        done = subprocess.run([sys.executable, "-c", script, str(path), "0.5"], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    print(done.stdout)  # the close's wait and the exit's (seconds)
    assert "were not written within 0.5 s of closing the store" in done.stderr
    assert (f"3 outcome write(s) to {str(path)!r} were not written within 0.5 s of closing the store and 0.0 s more "
            "of the process exiting" in done.stderr), done.stderr
    assert set(json.loads(done.stdout)["answered"]) <= {"OutcomeStoreError"}
    assert OutcomeStore(path).count_sync() == 0


def test_a_routers_close_that_gave_up_on_a_stuck_store_is_the_only_wait(gemini_server: Any, tmp_path: Path) -> None:
    """The same through a router: its close waited for the shadow's outcome write twice, draining the shadows (5 s)
    then closing the store (10 s; 0.5 here), and the exit waited 10 s again for it: 25 s for one stuck write. The
    drain leaves the writes to the store's close, and the exit gives the write up at once, saying the close waited for
    it. The drain's bound is 600 s here: a drain that still waited for the write would run the subprocess into its
    timeout (a bound on a hang, not a timing)."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "outcomes.db"
    OutcomeStore(path).close()
    script = textwrap.dedent("""
        import json, logging, sys, time

        logging.basicConfig()
        from genroute import Router
        from genroute.outcomes import writer
        from genroute.router import lifecycle, shadows

        writer.EXIT_WAIT_S = lifecycle._OUTCOMES_CLOSE_S = 0.5
        shadows.CLOSE_SHADOWS_S = 600.0
        router = Router.from_config(json.loads(sys.argv[1]))
        router.generate("question")
        end = time.monotonic() + 60
        while router._executor.outcomes.writes_behind < 1:  # the shadow's write, handed to the stuck writer
            assert time.monotonic() < end
            time.sleep(0.01)
        router.close()
    """)
    root = Path(__file__).resolve().parent.parent
    with writes_held(path):
        done = subprocess.run([sys.executable, "-c", script, json.dumps(shadowing(gemini_server, path))],
                              capture_output=True, text=True, timeout=120, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert "were not written within 0.5 s of closing the store (another process holds its lock?)" in done.stderr
    assert (f"1 outcome write(s) to {str(path)!r} were not written within 0.5 s of closing the store and 0.0 s more "
            "of the process exiting" in done.stderr), done.stderr


def test_an_exit_after_a_close_that_saw_writes_answered_waits_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A close's flush that timed out counted its whole wait as waited in vain even when a write was answered during
    it (the writer slow, not stuck): the exit then waited nothing more and gave up on writes it would have saved in
    its own wait, as it did before the close and the exit shared one bound. What the close waited before its last
    write was answered is not in vain: here the close waits 6 s, its first write is answered 1.5 s or more after it
    began (at any time: a write answered after the close gave up makes the exit wait its whole bound), so the exit
    still waits 4.5 s or more for the second, which is let go once the exit waits for it."""
    from genroute.outcomes import writer as writer_module
    from genroute.outcomes.writer import GroupWriter

    gates = {"a": threading.Event(), "b": threading.Event()}
    committing: list[str] = []

    def commit(items: list[str]) -> list[str]:
        for item in items:
            committing.append(item)
            assert gates[item].wait(60)
        return items

    over, exiting = threading.Event(), threading.Event()

    def wait_until(check: Any) -> None:
        end = time.monotonic() + 60
        while not check() and not over.is_set():
            assert time.monotonic() < end
            time.sleep(0.01)

    told: list[int] = []

    def at_exit(n: int, closing_s: float) -> BaseException:
        told.append(n)
        return RuntimeError(f"{n} lost")

    writer: GroupWriter[str] = GroupWriter(commit, at_exit=at_exit)
    monkeypatch.setattr(writer_module, "EXIT_WAIT_S", 6.0)

    def let_go() -> None:
        wait_until(lambda: writer._flushing == 1)  # the close waits
        time.sleep(1.5)
        gates["a"].set()  # answered while the close still waits: the writer gets on
        wait_until(exiting.is_set)  # the close gave up on "b"
        wait_until(lambda: writer._flushing == 1)  # the exit waits
        gates["b"].set()

    first = writer.submit(["a"])
    wait_until(lambda: committing == ["a"])
    second = writer.submit(["b"])
    helper = threading.Thread(target=let_go, daemon=True)
    helper.start()
    try:
        assert not writer.flush(6.0)  # the close's bound, "b" still being written
        assert first.result(60) == ["a"]
        exiting.set()
        writer_module._flush_at_exit()
    finally:
        over.set()
        gates["a"].set()
        gates["b"].set()
        helper.join(60)
    assert second.result(60) == ["b"]
    assert told == []
