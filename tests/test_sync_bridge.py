"""The sync bridge (a router's portal loop thread) across a fork, a stream that outlives its router's last
reference, and a signal handler that calls in while the same thread waits in a sync call.

Each case that used to hang runs in a process or thread of its own with a generous bound: a hang fails the test
instead of stopping the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import os
import signal
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from genroute import Router, UsageError
from genroute.runtime.portal import Portal
from genroute.testing import Reply
from genroute.testing.replies import default_text

from .conftest import budget_usage, closes_everything, gemini_config, in_thread

HANG_CAP_S = 60.0  # far beyond any answer on loopback: only a hang reaches it


def _in_thread(fn: Any) -> dict[str, Any]:
    """Run ``fn`` in a daemon thread; what it returned or raised (``{}``: it still ran after ``HANG_CAP_S``)."""
    thread, out = in_thread(fn)
    thread.join(HANG_CAP_S)
    return out


def _exit_code(pid: int) -> int | None:
    """The child's exit code, or ``None`` (and the child killed) if it is still running after ``HANG_CAP_S``."""
    end = time.monotonic() + HANG_CAP_S
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _in_child(work: Any) -> Any:
    """``work()`` run in a forked child; what it returned (JSON), or the assertion fails with what it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (pre-fork servers): report through the pipe
        code = 1
        try:
            os.write(write, json.dumps(work()).encode())
            code = 0
        except BaseException as exc:  # reported to the parent
            os.write(write, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write)
    code = _exit_code(pid)
    report = os.read(read, 65536).decode()
    os.close(read)
    assert code is not None, "the forked child hung"
    assert code == 0, report
    return json.loads(report)


def test_a_forked_child_starts_a_loop_thread_of_its_own(gemini_server):
    router = Router.from_config(gemini_config(gemini_server))
    try:
        assert router.generate("parent").text == "echo: parent"  # the parent's loop thread is running

        def child() -> list[str]:  # answer, stream, close
            texts = [router.generate("child").text, "".join(c.text for c in router.stream("child stream"))]
            router.close()
            return texts

        assert _in_child(child) == ["echo: child", "echo: child stream"]
        assert router.generate("parent again").text == "echo: parent again"  # the parent's thread is untouched
    finally:
        router.close()


def test_a_forked_child_does_not_wait_for_the_parents_requests_in_flight(gemini_server):
    """A request the parent had in flight at the fork does not run in the child: the child's ``close`` has nothing
    of it to drain (it waited out its whole drain and unwind bounds before)."""
    from genroute.testing import Fault

    router = Router.from_config(gemini_config(gemini_server))
    try:
        gemini_server.fault(Fault.delay(3.0))
        slow, _ = in_thread(lambda: router.generate("slow"))
        deadline = time.monotonic() + 10
        while not router._inflight._tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert router._inflight._tasks, "the parent's request is in flight"

        def child() -> float:
            started = time.monotonic()
            router.close(drain_s=60)
            return time.monotonic() - started

        assert _in_child(child) < 30  # a hang check: it would have drained for 60 s
        slow.join(timeout=30)
    finally:
        router.close()


def test_a_forked_child_runs_the_sync_tools_of_a_backend_its_parent_used(gemini_server):
    """A function-calling backend's tool threads do not come along into a child either: every sync tool call there
    timed out (its pool, counting the parent's threads idle, started none)."""
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    config = gemini_config(gemini_server)
    config["backends"]["chat"] = {"kind": "function_calling", "engine": "gemini", "model": "gemini-2.5-flash",
                                  "tools": ["get_weather"], "tool_timeout_s": 5}
    router = Router.from_config(config, tools={"get_weather": get_weather})
    try:
        for _ in range(2):  # the parent's request, then the child's (the server runs in this process)
            gemini_server.reply_function_call("get_weather", {"city": "Paris"})
            gemini_server.reply_text("done")
        assert router.generate("weather?").tool_calls[0].result == "sunny in Paris"  # the pool has a thread

        def child() -> list[Any]:
            calls = router.generate("weather?").tool_calls
            router.close()
            return [(call.result, call.error) for call in calls]

        assert _in_child(child) == [["sunny in Paris", None]]
    finally:
        router.close()


@pytest.mark.local
def test_a_forked_child_runs_the_local_model_its_parent_used():
    """The local engine's worker threads do not come along into a child (Celery prefork, gunicorn --preload,
    ProcessPoolExecutor): its executor, counting the parent's threads idle, started none, and every request in the
    child waited out its deadline."""
    pytest.importorskip("llama_cpp")
    config = {"engines": {"local": {"kind": "local", "n_threads": 1}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                    "generation": {"max_output_tokens": 2, "temperature": 0}}},
              "timeout_s": 30}
    router = Router.from_config(config)
    try:
        parent = router.generate("The capital of France is").text  # the parent's workers and model are up

        def child() -> str:
            text = router.generate("The capital of France is").text
            router.close()
            return text

        assert _in_child(child) == parent
        assert router.generate("The capital of France is").text == parent  # the parent's engine is untouched
    finally:
        router.close()


def _collected_on(router: Router) -> list[str]:
    """The name of the thread ``router`` will be collected on, once it is."""
    threads: list[str] = []
    weakref.finalize(router, lambda: threads.append(threading.current_thread().name))
    return threads


def test_a_sync_stream_keeps_its_router_until_it_ends(gemini_server):
    router = Router.from_config(gemini_config(gemini_server))
    collected = _collected_on(router)
    chunks = router.stream("hello world")
    del router  # the stream is all that references it now

    out = _in_thread(lambda: ([c.text for c in chunks], threading.current_thread().name))
    assert "result" in out, out or "the stream hung"
    texts, consumer = out["result"]
    assert "".join(texts) == "echo: hello world"
    # Let go on the consumer's thread as the stream ended, not on its loop thread as that handed over the last chunk.
    assert collected == [consumer]


def test_a_sync_stream_dropped_after_one_chunk_with_its_router_closes_it(gemini_server):
    def drop() -> tuple[list[str], list[str], threading.Thread]:
        router = Router.from_config(gemini_config(gemini_server))
        collected = _collected_on(router)
        chunks = router.stream("hello world")
        first = next(chunks).text
        loop_thread = router._portal._thread
        del router, chunks  # closes the stream, then the router goes
        return [first, threading.current_thread().name], collected, loop_thread

    out = _in_thread(drop)
    assert "result" in out, out or "dropping the stream hung"
    (first, consumer), collected, loop_thread = out["result"]
    assert first == "echo: "
    assert collected == [consumer]
    loop_thread.join(HANG_CAP_S)
    assert not loop_thread.is_alive()  # the router's loop thread ended with it


def test_a_router_collected_unclosed_closes_its_connections_on_its_loop(gemini_server):
    """A router dropped without ``close()`` ends its loop thread as ``asyncio.run`` ends a loop: the engine's HTTP
    session closes its connections there, instead of leaving them open for the garbage collector (aiohttp's
    "unclosed transport" ResourceWarning)."""
    script = textwrap.dedent(f"""
        import gc, json
        from genroute import Router
        router = Router.from_config(json.loads({json.dumps(json.dumps(gemini_config(gemini_server)))}))
        print(router.generate("hi").text)
        loops = router.resources.engines["gemini"]._loops  # the engine outlives the router here
        del router
        gc.collect()
        (_, session), = loops._own.values()
        print(session.closed)
        gc.collect()
    """)
    assert closes_everything(script) == ["echo: hi", "True"]


def test_a_portal_closed_on_its_own_loop_thread_still_answers_the_waiter():
    portal = Portal()

    async def collected_here() -> str:
        portal.close()  # as a router collected on its loop thread does (its finalizer)
        await asyncio.sleep(0)  # the answer is handed over a loop iteration later
        return "answered"

    out = _in_thread(lambda: portal.call(collected_here()))
    assert out, "the waiter was stranded"
    # Answered, or told the router was closed under it: either way woken.
    assert out.get("result") == "answered" or isinstance(out.get("error"), UsageError), out


def test_a_sync_call_from_a_signal_handler_inside_a_sync_call_is_refused(gemini_server):
    router = Router.from_config(gemini_config(gemini_server))
    sent = threading.Event()
    nested: list[Any] = []

    def handler(signum: int, frame: Any) -> None:
        for call in (lambda: router.generate("nested"), lambda: list(router.stream("nested"))):
            try:
                nested.append(call())
            except UsageError as exc:
                nested.append(exc.message)

    def reply(request: Any) -> Reply:
        if not sent.is_set():  # the outer call only: signal the main thread while it waits for this answer
            sent.set()
            while not router._portal._waiting:  # listed only once it is marked as waiting
                time.sleep(0.001)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)
        return Reply(parts=({"text": default_text(request.body)},))

    gemini_server.default_reply = reply
    previous = signal.signal(signal.SIGALRM, handler)
    faulthandler.dump_traceback_later(HANG_CAP_S, exit=True)  # signals need the main thread: a hang ends the run
    try:
        assert router.generate("outer").text == "echo: outer"
        assert nested == ["a sync genroute call cannot run inside another one on the same thread (e.g. from a "
                          "signal handler that interrupted it)"] * 2
        assert router.generate("after").text == "echo: after"  # nothing was left locked
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
        router.close()


class _Interrupted(Exception):
    """What the test's signal handler raises, as Ctrl-C raises KeyboardInterrupt."""


@contextlib.contextmanager
def _interrupted_in_its_wait(router: Router, server: Any, *, elsewhere: bool = False) -> Iterator[threading.Event]:
    """The server's first answer interrupts the main thread (``_Interrupted``) while it waits on ``router``, and is
    held until the yielded event is set (by the test, or by the reply itself after half the hang cap: an answer
    sent unreleased). ``elsewhere``: the signal is taken by the server's thread, not the main one (the kernel hands a
    process's Ctrl-C to any of its threads)."""
    release = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted

    def reply(request: Any) -> Reply:
        if not release.is_set():
            while not router._portal._waiting:
                time.sleep(0.001)
            signal.pthread_kill(threading.get_ident() if elsewhere else threading.main_thread().ident, signal.SIGALRM)
            # Answered unreleased before the hang cap, and said so (release set): a call the interruption did not end
            # then fails its test (not release.is_set()) instead of the faulthandler ending the whole run unnamed.
            if not release.wait(HANG_CAP_S / 2):
                release.set()
        return Reply(parts=({"text": default_text(request.body)},))

    server.default_reply = reply
    previous = signal.signal(signal.SIGALRM, handler)
    faulthandler.dump_traceback_later(HANG_CAP_S, exit=True)
    try:
        yield release
    finally:
        release.set()
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
        router.close()


def test_a_sync_stream_interrupted_while_it_waits_ends_with_the_interruption(gemini_server):
    # The interrupted step is still running on the loop: closing the stream used to raise "aclose(): asynchronous
    # generator is already running" in place of the interruption (a traceback and exit 1 for `generate --stream`).
    router = Router.from_config(gemini_config(gemini_server))
    with _interrupted_in_its_wait(router, gemini_server) as release:
        with contextlib.suppress(_Interrupted):  # what the caller pressed, and nothing raised over it
            for _ in router.stream("interrupted"):
                pass
        release.set()
        assert router.generate("after").text == "echo: after"


def test_a_sync_call_interrupted_on_another_thread_ends_before_its_answer(gemini_server):
    # A Ctrl-C taken by another thread than the waiting main one: Python runs the handler only on the main thread,
    # which waited on a lock that the signal did not end, so `router.generate` was interrupted only once its answer
    # came (here held back; before, the hang cap ended the run).
    router = Router.from_config(gemini_config(gemini_server))
    with _interrupted_in_its_wait(router, gemini_server, elsewhere=True) as release:
        with pytest.raises(_Interrupted):
            router.generate("interrupted")
        assert not release.is_set()  # the answer still held back


def test_a_sync_call_interrupted_while_it_waits_cancels_its_request(gemini_server):
    # Ctrl-C in `router.generate`: the request the caller gave up on is cancelled (its budget hold settled) at
    # once; it used to run on, holding its reservation, until it ended or close() cancelled it after drain_s.
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "inner": config["policy"], "budget_usd": 1.0, "costs": {"chat": 0.01},
                        "per": "global"}
    router = Router.from_config(config)
    with _interrupted_in_its_wait(router, gemini_server) as release:
        with contextlib.suppress(_Interrupted):
            router.generate("interrupted")
        end = time.monotonic() + HANG_CAP_S / 2
        while budget_usage(router)["reserved"] and time.monotonic() < end:  # while the server still holds it
            time.sleep(0.01)
        assert budget_usage(router)["reserved"] == 0
        assert not release.is_set()


def test_a_child_forked_inside_a_running_loop_serves_on_loops_of_its_own(gemini_server):
    """A bare ``os.fork()`` from a coroutine (not multiprocessing): the child inherits the parent's loop, a task of it
    holding a ``LoopsLock``, and the aiohttp session the Gemini engine made for that loop, none of which is the
    child's. On a loop of its own the child takes the lock and gets a session of its own (the parent's is left to the
    parent: closing it would close connections the parent still uses); through the sync API too."""
    from genroute.runtime.locks import LoopsLock

    router = Router.from_config(gemini_config(gemini_server))
    clients = router.resources.engines["gemini"]._loops
    lock = LoopsLock()

    async def parent() -> Any:
        assert (await router.agenerate("parent")).text == "echo: parent"  # a session for this loop
        (_, inherited), = clients._own.values()
        held = asyncio.Event()

        async def hold() -> None:
            async with lock:
                held.set()
                await asyncio.sleep(3600)

        holder = asyncio.ensure_future(hold())
        await held.wait()

        def child() -> list[Any]:
            # The inherited loop is this thread's running loop still (Python 3.11): the child serves from another
            # thread, as a server's worker would.
            async def own() -> list[Any]:
                async with lock:
                    text = (await router.agenerate("child")).text
                (_, session), = clients._own.values()
                return [text, session is not inherited, inherited.closed]

            out: dict[str, Any] = {}
            worker = threading.Thread(target=lambda: out.update(
                mine=asyncio.run(asyncio.wait_for(own(), 10)), sync=router.generate("child sync").text))
            worker.start()
            worker.join(HANG_CAP_S)
            router.close()
            return [*out["mine"], out["sync"]]

        try:
            return _in_child(child)
        finally:
            holder.cancel()

    try:
        assert asyncio.run(parent()) == ["echo: child", True, False, "echo: child sync"]
        assert router.generate("parent again").text == "echo: parent again"
    finally:
        router.close()


def test_a_sync_wait_whose_call_ends_as_a_slice_of_it_times_out_returns_its_answer() -> None:
    # The main thread waits in quarter-second slices (to take a Ctrl-C another thread was given). A call that ended
    # just after a slice timed out, before the wait looked again, was read as the call's own TimeoutError: a sync
    # router call that had its answer raised TimeoutError instead. Here the answer lands exactly then.
    import concurrent.futures

    from genroute.runtime.portal import _result

    assert threading.current_thread() is threading.main_thread()  # the slices are the main thread's

    class EndsAsTheSliceTimesOut(concurrent.futures.Future[str]):
        def result(self, timeout: float | None = None) -> str:
            if timeout is not None and not self.done():
                self.set_result("answer")  # the loop thread finishes it...
                raise concurrent.futures.TimeoutError  # ...as this slice's wait times out
            return super().result(timeout)

    assert _result(EndsAsTheSliceTimesOut(), None) == "answer"
    assert _result(EndsAsTheSliceTimesOut(), 30.0) == "answer"
    own = concurrent.futures.Future[str]()
    own.set_exception(TimeoutError("the call's own"))
    with pytest.raises(TimeoutError, match="the call's own"):  # a call that raised TimeoutError still raises it
        _result(own, None)


def test_a_sync_stream_read_from_a_second_thread_meanwhile_is_a_usage_error(gemini_server):
    # Two threads sharing one `router.stream(...)` got Python's "generator already executing" ValueError: the
    # second reader (or closer) is told what to do instead, and the first reads the stream on to its end.
    from genroute.testing import Fault

    router = Router.from_config(gemini_config(gemini_server))
    try:
        gemini_server.fault(Fault.delay(3.0))
        stream = router.stream("shared")
        first, out = in_thread(lambda: next(stream))
        deadline = time.monotonic() + HANG_CAP_S
        while not router._inflight._tasks and time.monotonic() < deadline:  # the first thread waits for a chunk
            time.sleep(0.01)
        assert router._inflight._tasks
        with pytest.raises(UsageError, match="read a stream from one thread"):
            next(stream)
        with pytest.raises(UsageError, match="cannot be closed here"):
            stream.close()
        first.join(HANG_CAP_S)
        assert "error" not in out and out["result"].text  # the first reader's chunk
        rest = list(stream)  # the same stream, read on here once the other thread is done with it
        assert rest[-1].done and rest[-1].result.text == "echo: shared"
    finally:
        router.close()


_SECOND_CTRL_C = textwrap.dedent("""
    import asyncio, os, signal, sys, threading, time
    from pathlib import Path

    from genroute.runtime.portal import run_sync

    marks = Path(sys.argv[1])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # not an ignored SIGINT inherited from the test's runner
    worker = []

    def work():  # an embedding's forward pass, or any to_thread call: it ends when the test says so
        worker.append(threading.get_ident())
        while not (marks / "release").exists():
            time.sleep(0.01)

    def ctrl_c_twice():
        while not worker:
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # the first: the call is cancelled
        # asyncio.run's close then waits for the default executor's threads, on a thread of its own
        while not any("_do_shutdown" in t.name for t in threading.enumerate()):
            time.sleep(0.01)
        signal.pthread_kill(worker[0], signal.SIGINT)  # the second, which the kernel gave the worker thread

    async def call():
        await asyncio.to_thread(work)

    threading.Thread(target=ctrl_c_twice, daemon=True).start()
    try:
        run_sync(call(), "call")
    except KeyboardInterrupt:  # written whole, then named: the test reads it as soon as the name is there
        (marks / "interrupted.part").write_text("released" if (marks / "release").exists() else "still running")
        os.replace(marks / "interrupted.part", marks / "interrupted")
""")


def test_a_second_ctrl_c_while_run_sync_waits_for_its_worker_threads_is_taken_at_once(tmp_path):
    # asyncio.run's close waits for the default executor's threads (an embedding under way); a second Ctrl-C the
    # kernel handed one of them was taken only once that thread's work ended: the wakeup fd was gone by then.
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", _SECOND_CTRL_C, str(tmp_path)], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG_CAP_S
        while not (tmp_path / "interrupted").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (tmp_path / "interrupted").exists(), "the second Ctrl-C was not taken while the worker ran"
        assert (tmp_path / "interrupted").read_text() == "still running"
    finally:
        (tmp_path / "release").write_text("")
        out, err = proc.communicate(timeout=HANG_CAP_S)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_sync_calls_with_a_huge_finite_bound_work_on_any_thread(gemini_server):
    """``health(timeout_s=1e308)`` and ``close(drain_s=1e308)`` are valid (finite seconds), and worked on the main
    thread, which waits in slices; on any other thread the wait went to a lock at once, which refuses a timeout past
    ``threading.TIMEOUT_MAX``: an OverflowError ('timestamp out of range for platform time_t')."""
    router = Router.from_config(gemini_config(gemini_server))

    def calls() -> bool:
        ready = router.health(timeout_s=1e308).ready
        router.close(drain_s=1e308)
        return ready

    thread, outcome = in_thread(calls)
    thread.join(30)
    assert outcome.get("result") is True, outcome.get("error")
