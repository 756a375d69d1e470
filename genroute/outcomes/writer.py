"""Group commit: the writes that wait at once are handed to one writer, which commits them in one transaction.

A SQLite commit costs about the same for one record as for fifty, so writing each record in its own transaction made
the outcome store a queue of commits: at ~25 ms each (an fsync), one sequential client's shadow runs piled up behind
it and the router dropped them at its cap of shadows in flight. ``GroupWriter`` keeps one writer thread per store
(started when a write is handed over, ended ``LINGER_S`` after the last): each caller hands over its records and
waits for them; the writer takes every write waiting and commits them together, then the next lot.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from genroute.runtime.forks import forget_at_fork

T = TypeVar("T")

#: How long the writer waits for more writes before ``idle`` and ending (the store then closes its connection, which
#: checkpoints the file: an fsync, paid once per pause in writing rather than once a write).
LINGER_S = 0.2

#: A write whose failure is the whole lot's (the file is locked, read-only, full): not tried again alone.
Shared = tuple[type[BaseException], ...]

#: How long a process exiting waits for the writes handed over (the router's close waits as long), counting what a
#: ``flush`` that gave up on the same writes waited already (``waited_in_vain_s``): then it exits, the writes not
#: written answered with ``at_exit``'s error (lost, and counted so).
EXIT_WAIT_S = 10.0
#: Writers that started a thread: each flushed when the process exits (``_flush_at_exit``).
_WRITERS: weakref.WeakSet[GroupWriter[object]] = weakref.WeakSet()


class GroupWriter(Generic[T]):
    """Writes lists of items through ``commit`` (one transaction for all it is given, returning one result per item
    in order), several callers' lists in one call when they wait at once.

    ``thread`` makes the writer's thread (``threading.Thread``'s arguments; by default ``threading.Thread``): one
    whose ``start`` raises is a process out of threads.

    A process that exits waits ``EXIT_WAIT_S`` at most for the writes handed over (the thread is a daemon: it waited
    for as long as they took, 30 s a lot on a file another process held locked), less what a ``flush`` that gave up
    waited for them already with none answered since (a close that timed out: the exit waited its 10 s again for the
    same stuck writes); those still waiting then are answered with ``at_exit(n, closing_s)``'s error, ``n`` the writes
    not written (also the lot being written, which the process's end cuts off: SQLite rolls it back), ``closing_s``
    what flushes waited for them in vain before the exit."""

    def __init__(self, commit: Callable[[list[T]], list[T]], *, idle: Callable[[], None] = lambda: None,
                 linger_s: float = LINGER_S, shared: Shared = (), name: str = "writer",
                 thread: Callable[..., threading.Thread] = threading.Thread,
                 at_exit: Callable[[int, float], BaseException] = lambda n, _: RuntimeError(
                     f"the process exited before {n} write(s) were written")) -> None:
        self._commit = commit
        self._at_exit = at_exit
        self._new_thread = thread
        self._idle = idle
        self._linger_s = linger_s
        self._shared = shared
        self._name = name
        self._forget_parent()
        forget_at_fork(self)

    def _forget_parent(self) -> None:
        """A new start (also in a forked child: the parent's writer thread, and a lock it held, are not there)."""
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)  # notified when the writer goes idle
        self._arrived = threading.Condition(self._lock)  # notified when a write is added
        self._waiting: list[tuple[list[T], Future[list[T]]]] = []
        self._writing = False
        self._thread: threading.Thread | None = None  # the writer's, while it runs (``flush`` waits for it to end)
        self._flushing = 0  # callers of ``flush`` waiting: the writer does not linger
        #: Writes handed over and not answered yet (waiting, or in the lot being committed).
        self.unwritten = 0
        #: Calls of ``commit`` that succeeded (transactions committed): fewer than the writes when they waited at once.
        self.commits = 0
        #: Seconds that flushes which timed out waited since a write was last answered (waits at once counted once):
        #: what the process's exit does not wait again (``_flush_at_exit``).
        self.waited_in_vain_s = 0.0
        self._vain_until = 0.0  # when (``time.monotonic()``) the last wait counted there ended, or a write was answered

    def submit(self, items: Sequence[T]) -> Future[list[T]]:
        """Queue ``items`` for the writer (started if none runs); the future holds what ``commit`` returned for them,
        or the exception that refused them."""
        future: Future[list[T]] = Future()
        future.set_running_or_notify_cancel()  # never cancelled: a write that was handed over is written
        with self._lock:
            self._waiting.append((list(items), future))
            self.unwritten += 1
            future.add_done_callback(self._answered)
            start, self._writing = not self._writing, True
            self._arrived.notify()
        if start:
            try:
                # A daemon: the process exiting waits for what was handed over, EXIT_WAIT_S at most (``_flush_at_exit``:
                # as a thread that is not a daemon, it waited for as long as the writes took).
                self._thread = self._new_thread(target=self._drain, name=self._name, daemon=True)
                _WRITERS.add(self)  # type: ignore[arg-type]
                self._thread.start()
            except BaseException:  # no thread to be had: nobody writes, so nobody may wait
                self._no_writer(RuntimeError(f"cannot start the {self._name} thread"))
                raise
        return future

    def _no_writer(self, exc: BaseException) -> None:
        """The writer's thread did not start: every write handed over (also while it failed to) is answered with
        ``exc``, then the writer is idle, and a ``flush`` waiting for it is told (it returns once all are answered)."""
        while True:
            with self._lock:
                waiting, self._waiting = self._waiting, []
                if not waiting:  # still writing until now: a write handed over meanwhile waited for no new thread
                    self._writing, self._thread = False, None
                    self._done.notify_all()
                    return
            for _, waiter in waiting:
                waiter.set_exception(exc)

    async def awrite(self, items: Sequence[T]) -> list[T]:
        """``write`` without blocking the event loop. The answer comes back in one hop (``wrap_future`` in a
        ``shield`` took three turns of a busy loop); a caller cancelled meanwhile leaves the write to be written."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[T]] = loop.create_future()

        def hand_back(done: Future[list[T]]) -> None:
            try:
                loop.call_soon_threadsafe(_settle, answer, done)
            except RuntimeError:  # the caller's loop was closed meanwhile: nobody is left to answer
                pass

        self.submit(items).add_done_callback(hand_back)
        return await answer

    def _answered(self, _: Future[list[T]]) -> None:
        with self._lock:
            self.unwritten -= 1
            # The writer gets on: a flush from now on waits its own time again, and one waiting now waited in vain
            # only from here (writes slow, not stuck, are still worth the exit's wait).
            self.waited_in_vain_s = 0.0
            self._vain_until = time.monotonic()

    def write(self, items: Sequence[T]) -> list[T]:
        """``submit`` and wait."""
        return self.submit(items).result()

    def _drain(self) -> None:
        """Commit what waits, lot after lot; when nothing does, ``idle`` (still the only writer), then end (unless
        something came meanwhile)."""
        lot: list[tuple[list[T], Future[list[T]]]] = []
        try:
            while True:
                with self._lock:
                    lot, self._waiting = self._waiting, []
                if lot:
                    self._write(lot)
                    continue
                with self._lock:  # a moment's wait for more first: a steady trickle of writes keeps one writer
                    self._arrived.wait_for(lambda: self._waiting or self._flushing, self._linger_s)
                    if self._waiting:
                        continue
                try:
                    self._idle()
                except Exception:  # what was written is written: this only tidies up
                    pass
                with self._lock:
                    if not self._waiting:
                        self._writing = False
                        self._done.notify_all()
                        return
        except BaseException as exc:  # never leave a caller waiting on a writer that is gone
            with self._lock:
                rest, self._waiting, self._writing = self._waiting, [], False
                self._done.notify_all()
            for _, future in lot + rest:
                if not future.done():
                    future.set_exception(exc)
            raise

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every write handed over is answered, the writer went idle (without lingering) and its thread
        ended; whether it did within ``timeout_s``. Writes may be handed over again afterwards."""
        start = time.monotonic()
        end = None if timeout_s is None else start + timeout_s
        with self._lock:
            self._flushing += 1
            self._arrived.notify()
            try:
                if not self._done.wait_for(lambda: not self._writing, timeout_s):
                    self._waited_in_vain(start)
                    return False
            finally:
                self._flushing -= 1
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():  # it returns right after going idle
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
            return not thread.is_alive()
        return True

    def _waited_in_vain(self, start: float) -> None:
        """A flush begun at ``start`` timed out (under the lock): the time it waited, less what another counted."""
        now = time.monotonic()
        self.waited_in_vain_s += max(0.0, now - max(start, self._vain_until))
        self._vain_until = now

    def give_up(self, closing_s: float = 0.0) -> int:
        """The process exits: answer every write still waiting with ``at_exit``'s error (``closing_s``: what flushes
        before the exit's waited for them in vain); how many were not written (those, and the lot being written).
        None (every write answered, the thread still tidying up): nothing is said, ``at_exit`` is not called."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
            lost = self.unwritten
        if not lost:
            return 0
        exc = self._at_exit(lost, closing_s)
        for _, future in waiting:
            future.set_exception(exc)
        return lost

    def _write(self, lot: list[tuple[list[T], Future[list[T]]]]) -> None:
        try:
            results = self._commit([item for items, _ in lot for item in items])
        except Exception as exc:
            if len(lot) == 1 or isinstance(exc, self._shared):
                for _, future in lot:
                    future.set_exception(exc)
                return
            for one in lot:  # each caller's write alone: one's failure (a record it cannot merge) is not the others'
                self._write([one])
            return
        self.commits += 1
        at = 0
        for items, future in lot:
            future.set_result(results[at:at + len(items)])
            at += len(items)


def _settle(answer: asyncio.Future[list[T]], done: Future[list[T]]) -> None:
    """``answer`` (on its loop) as ``done`` ended, unless its caller was cancelled meanwhile."""
    if answer.done():
        return
    exc = done.exception()
    if exc is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(done.result())


@atexit.register
def _flush_at_exit() -> dict[str, float]:
    """Wait ``EXIT_WAIT_S`` in all for every writer's writes, less what a flush that gave up on a writer's writes
    waited for them already, then give up on those left (a store nobody closed, or whose close timed out: its writes
    stuck). What it waited for each writer that had writes to wait for, by name (seconds)."""
    end = time.monotonic() + EXIT_WAIT_S
    waited: dict[str, float] = {}
    for writer in list(_WRITERS):
        with writer._lock:
            if not writer._writing:
                continue
            closing_s = writer.waited_in_vain_s
            left = min(end - time.monotonic(), EXIT_WAIT_S - closing_s)
        begun = time.monotonic()
        if not writer.flush(max(0.0, left)):
            writer.give_up(closing_s)
        waited[writer._name] = waited.get(writer._name, 0.0) + time.monotonic() - begun
    return waited
