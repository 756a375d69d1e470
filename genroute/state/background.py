"""Store calls that go on after their caller gave up on them, and what becomes of those an event loop's end cuts off.

A settle whose caller was cancelled (a request cancelled, or timed out by its caller) is still made, and what an
admission took is given back once Redis answers: each as a task of its own on the caller's event loop. When that loop
ends first (``asyncio.run`` per call, a Celery task's), the task is cancelled there or left pending for good, and its
hold would lapse with its TTL, charged at its full estimate. Such a call's settles are kept for replay instead, by the
first call on any loop (``UnsentWrites``; each carries its settle id, so one that reached Redis before the cut applies
once). Every settle is held here from its start, awaited or not: one started as ``asyncio.run`` shuts down (by a
cancelled request's cleanup, with nothing awaiting it) and cut off by the loop's close is kept for replay too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("genroute.state.redis_store")  # where its warning was logged before it moved here


class Background:
    """The store calls no caller awaits any more, each with how to keep its writes should its loop end under it."""

    def __init__(self) -> None:
        self._work: dict[asyncio.Future[Any], Callable[[], None]] = {}
        #: Those of ``_work`` a caller still awaits: their failures are the caller's to see.
        self._awaited: set[asyncio.Future[Any]] = set()

    def add(self, work: asyncio.Future[Any], keep: Callable[[], None], *, awaited: bool = False) -> None:
        """Hold ``work`` until it is done (``of_loop``: ``aclose`` waits for it); ``keep`` queues its writes for replay
        if it is cancelled or its loop is closed before it ends. ``awaited``: a caller awaits it still (until
        ``given_up``), so a failure is not logged here."""
        self._work[work] = keep
        if awaited:
            self._awaited.add(work)
        work.add_done_callback(self._done)

    def given_up(self, work: asyncio.Future[Any]) -> None:
        """``work``'s caller stopped awaiting it: its failure, if it fails, is logged."""
        self._awaited.discard(work)

    def _done(self, finished: asyncio.Future[Any]) -> None:
        keep = self._work.pop(finished, None)
        awaited = finished in self._awaited
        self._awaited.discard(finished)
        if finished.cancelled():
            # Its loop ended (asyncio.run cancels what is left on it): replayed by the next call (unless rescued).
            if keep is not None:
                keep()
        elif (error := finished.exception()) is not None and not awaited:
            _log.warning("a state store call its caller gave up on failed: %s", type(error).__name__)

    def of_loop(self, loop: asyncio.AbstractEventLoop) -> set[asyncio.Future[Any]]:
        """The calls running on ``loop``."""
        return {work for work in list(self._work) if work.get_loop() is loop}

    def rescue(self) -> None:
        """Keep for replay the writes of calls left pending on an event loop closed under them (never to end there)."""
        for work in [work for work in list(self._work) if not work.done() and work.get_loop().is_closed()]:
            keep = self._work.pop(work, None)
            self._awaited.discard(work)
            if keep is not None:
                keep()
            # Taken care of here: asyncio's "Task was destroyed but it is pending!" (an ERROR) would only alarm.
            if isinstance(work, asyncio.Task):
                work._log_destroy_pending = False  # type: ignore[attr-defined]  # asyncio's own switch for this
                # Closed here, not by the garbage collector: its cleanup needs the loop that is gone, and would print
                # "Exception ignored in: <coroutine ...>" (RuntimeError: no running event loop) at collection.
                coro = work.get_coro()  # None only for an eager task that has finished: this one is pending
                if coro is not None:
                    with contextlib.suppress(RuntimeError):
                        coro.close()
