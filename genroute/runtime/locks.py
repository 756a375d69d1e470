"""``LoopsLock``: an async lock that tasks on any event loop, in any thread, share.

A router serves several event loops at once: its sync API's loop thread beside an application's loop, or a new
loop per ``asyncio.run`` (scripts, Celery tasks). ``asyncio.Lock`` cannot guard what such a router keeps across
requests: it binds to the first loop that waits on it, and a task of another loop that then waits gets
``RuntimeError`` ("is bound to a different event loop"). Here the holder and the queue of waiters sit behind a
thread lock taken for a few operations, never across an await; each waiter waits on a future of its own loop, which
the task that releases the lock, on whichever loop, resolves with ``call_soon_threadsafe``. Waiters are served in
order; one cancelled after the lock was handed to it passes it on, and one whose loop was closed is skipped.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

from genroute.runtime.forks import forget_at_fork


class LoopsLock:
    """``async with lock:`` — one task at a time, whichever event loop each runs on (not reentrant)."""

    __slots__ = ("_mutex", "_held", "_waiters", "__weakref__")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        forget_at_fork(self)

    def locked(self) -> bool:
        """Whether a task holds the lock."""
        return self._held

    async def __aenter__(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            entry = (loop, waiter)
            self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            with self._mutex:
                handed = entry not in self._waiters  # the releaser took it off the queue: the lock is this task's
                if not handed:
                    self._waiters.remove(entry)
            if handed:
                self._release()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        self._release()

    def _release(self) -> None:
        """Hand the lock to the first waiter whose loop still runs callbacks, or free it."""
        with self._mutex:
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(_wake, waiter)
                except RuntimeError:  # its loop is closed: that waiter will never run again
                    continue
                return  # still held: now by that waiter
            self._held = False

    def _forget_parent(self) -> None:
        """In a forked child: the parent's holder and waiters do not run here (nor a thread that held the mutex)."""
        self._mutex = threading.Lock()
        self._held = False
        self._waiters = deque()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # else cancelled meanwhile: its task passes the lock on (``__aenter__``)
        waiter.set_result(None)
