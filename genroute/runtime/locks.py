"""``LoopsLock``: an async lock that tasks on any event loop, in any thread, share.

A router serves several event loops at once: its sync API's loop thread beside an application's loop, or a new
loop per ``asyncio.run`` (scripts, Celery tasks). ``asyncio.Lock`` cannot guard what such a router keeps across
requests: it binds to the first loop that waits on it, and a task of another loop that then waits gets
``RuntimeError`` ("is bound to a different event loop"). Here the holder and the queue of waiters sit behind a
thread lock taken for a few operations, never across an await; each waiter waits on a future of its own loop, which
the task that releases the lock, on whichever loop, resolves with ``call_soon_threadsafe``. Waiters are served in
order; one cancelled after the lock was handed to it passes it on, and one whose loop was closed is skipped.

A holder whose event loop was closed under it (a loop closed with the task still inside ``async with``, or handed
the lock just before its loop was closed) will never release it: a task that wants the lock takes it from such a
holder, at once or, already waiting, within ``CHECK_S``. (A loop only stopped, never closed, keeps what it holds.)

Such a task's coroutine, closed when collected, exits its ``async with`` late, maybe while another task is
``current_task()``: the lock knows that exit by its frames, kept when the lock dropped the task (the frame of its
``async with`` and those its task was suspended in), one of which the exit runs in or under. That exit gives up
nothing; any other frees the lock, whichever frame it comes from (an ``AsyncExitStack`` enters the lock in one of
its own frames and exits it in another, under the frame of the ``async with`` of the stack).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from typing import Any

from genroute.runtime.forks import forget_at_fork

#: How often a waiter looks whether the holder's event loop was closed.
CHECK_S = 0.5

#: A holder of the lock: its task, and the frame of its ``async with``.
_Holder = tuple[asyncio.Task[Any], Any]


class LoopsLock:
    """``async with lock:`` — one task at a time, whichever event loop each runs on (not reentrant)."""

    __slots__ = ("_mutex", "_holder", "_waiters", "_dropped", "__weakref__")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        #: Who holds the lock (None: free): its task, and the frame of its ``async with``.
        self._holder: _Holder | None = None
        self._waiters: deque[tuple[_Holder, asyncio.Future[None]]] = deque()
        #: The frames of each task the lock dropped because its loop was closed (a holder it was taken from, a waiter
        #: passed over): its ``async with``'s and those it was suspended in. The late exit of one (its coroutine
        #: closed when collected, maybe while the new holder's task is ``current_task()``) runs in or under one of
        #: them and gives up nothing.
        self._dropped: list[tuple[Any, ...]] = []
        forget_at_fork(self)

    def locked(self) -> bool:
        """Whether a task holds the lock."""
        return self._holder is not None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("LoopsLock should be used inside a task")
        holder = (task, sys._getframe(1))
        with self._mutex:
            if self._holder is None or self._take_stranded():
                self._holder = holder
                return
            waiter: asyncio.Future[None] = task.get_loop().create_future()
            entry = (holder, waiter)
            self._waiters.append(entry)
        check = task.get_loop().call_later(CHECK_S, self._check, waiter)
        try:
            await waiter
        except BaseException:
            if self._forget_dropped(holder[1]):  # passed over, or handed and taken: nothing of the lock is its own
                raise
            with self._mutex:
                handed = entry not in self._waiters  # the releaser took it off the queue: the lock is this task's
                if not handed:
                    self._waiters.remove(entry)
            if handed:
                self._release(holder[1])
            raise
        finally:
            check.cancel()

    async def __aexit__(self, *exc: Any) -> None:
        self._release(sys._getframe(1))

    def _release(self, frame: Any) -> None:
        """The exit called from ``frame`` gives the lock up: it goes to the first waiter whose loop still runs
        callbacks, or is free (unless the lock dropped the task of that frame's ``async with``: it gives up nothing)."""
        if self._forget_dropped(frame):
            return
        with self._mutex:
            if self._holder is not None:
                self._hand_on()

    def _forget_dropped(self, frame: Any) -> bool:
        """Whether ``frame``, or one it runs under (``f_back``), is of a task the lock dropped (forgotten now: this is
        its late exit).

        Without the mutex: that exit runs when the collector closes the coroutine, which an allocation inside this
        thread's own critical section can start (``create_future``, ``call_soon_threadsafe``), and the mutex is not
        reentrant. ``list.remove`` is one step under the GIL, and frames are appended before the lock lets go of
        their task (so before it can be collected)."""
        dropped = self._dropped
        while dropped and frame is not None:
            for frames in list(dropped):  # list(): one step under the GIL
                if frame in frames:  # frames compare by identity
                    try:
                        dropped.remove(frames)
                    except ValueError:  # forgotten meanwhile
                        return False
                    return True
            frame = frame.f_back
        return False

    def _hand_on(self) -> None:
        """With the mutex held."""
        while self._waiters:
            holder, waiter = self._waiters.popleft()
            try:
                holder[0].get_loop().call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # its loop is closed: that waiter will never run again
                self._dropped.append(_frames(holder))
                continue
            self._holder = holder  # still held: now by that waiter
            return
        self._holder = None

    def _take_stranded(self) -> bool:
        """With the mutex held: whether the holder's event loop was closed (it will never release the lock); if so,
        the lock is taken from it (its frame kept in ``_dropped``), and the caller gives it to a new holder."""
        holder = self._holder
        if holder is None or not holder[0].get_loop().is_closed():
            return False
        self._dropped.append(_frames(holder))
        return True

    def _check(self, waiter: asyncio.Future[None]) -> None:
        """On a waiter's loop, every ``CHECK_S`` while it waits: the lock is passed on from a stranded holder."""
        if waiter.done():
            return
        with self._mutex:
            if self._take_stranded():
                self._hand_on()
        if not waiter.done():
            asyncio.get_running_loop().call_later(CHECK_S, self._check, waiter)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's holder and waiters do not run here (nor a thread that held the mutex)."""
        self._mutex = threading.Lock()
        self._holder = None
        self._waiters = deque()
        self._dropped = []


def _frames(holder: _Holder) -> tuple[Any, ...]:
    """The frame of ``holder``'s ``async with``, and those of the coroutines its task is suspended in (outermost
    first; not those of an async generator's step, which keeps its generator to itself)."""
    frames = [holder[1]]
    awaited: Any = holder[0].get_coro()
    while awaited is not None and len(frames) < 200:  # 200: no await chain is that deep, and none loops for ever
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return tuple(frames)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # else cancelled meanwhile: its task passes the lock on (``__aenter__``)
        waiter.set_result(None)
