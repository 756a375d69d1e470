"""Closing a router: ``close``/``aclose`` and the context managers (a mixin of ``Router``).

One close does the work; a close called while another is under way (an application's shutdown hook beside an exit
handler, the sync and async API both) waits for that one to end, then returns: it neither closes the loop thread
under the first one's drain (cutting requests that would have finished, and failing the first close itself) nor
returns before the router is closed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, Self

from genroute.router.inflight import UNWIND_S, InFlight, poll_until
from genroute.router.learning import check_seconds
from genroute.runtime.portal import refuse_inside_loop
from genroute.runtime.telemetry import flush_providers

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from genroute.backends.base import Backend
    from genroute.router.deciding import CostedDecisions
    from genroute.router.executor import Executor
    from genroute.runtime.portal import Portal
    from genroute.runtime.resources import Resources
    from genroute.state import StateStore

#: How long ``close`` waits for the telemetry providers it was given to export what they hold.
_FLUSH_TIMEOUT_MS = 5000
#: How long ``close`` waits for decisions that outlived their requests to spend what they cost.
_LATE_SPEND_S = 2.0
#: How long ``close`` lets requests in flight finish before it cancels them.
CLOSE_DRAIN_S = 5.0
#: How long ``close`` waits for the SQLite outcome store's writes to be answered (another process may hold its lock);
#: then moving them into the file waits ``CHECKPOINT_WAIT_S`` at most. What is left is logged as an error.
_OUTCOMES_CLOSE_S = 10.0


def close_bound(drain_s: float) -> float:
    """How long a close takes at most: drain, unwind, shadows, late decisions' spends, outcome writes, flush,
    backends."""
    from genroute.outcomes.sqlite_files import CHECKPOINT_WAIT_S
    from genroute.router.shadows import CLOSE_SHADOWS_S

    return (drain_s + UNWIND_S + CLOSE_SHADOWS_S + _LATE_SPEND_S + _OUTCOMES_CLOSE_S + CHECKPOINT_WAIT_S
            + _FLUSH_TIMEOUT_MS / 1000 + 5.0)


class Lifecycle:
    """``close``/``aclose`` and ``with``/``async with`` (mixed into ``Router``)."""

    backends: dict[str, Backend]
    resources: Resources
    state: StateStore
    _owns_state: bool
    _providers: list[Any]
    _portal: Portal
    _inflight: InFlight
    _executor: Executor
    _decisions: CostedDecisions
    _closed: bool
    #: Makes "am I the close that closes it" one question, however many threads and loops ask it at once.
    _close_lock: threading.Lock
    #: Set once the close that closes the router has ended (its loop thread stopped).
    _shut: threading.Event
    #: When (``time.monotonic()``) that close should have ended, by its own ``drain_s``: how long the others wait.
    _shut_by: float

    #: ``Refreshing._stop_refresher`` (declared, not defined: a stub here came first in ``Router``'s order and
    #: replaced it, so a close never stopped the refresher).
    _stop_refresher: Callable[[], Coroutine[Any, Any, None]]
    #: ``Learning._refuse_closed``, declared the same way: ``UsageError`` once the router is closed.
    _refuse_closed: Callable[[], None]

    def _begin_close(self, drain_s: float) -> bool:
        """Mark the router closed (no new requests); whether this call is the one that closes it."""
        with self._close_lock:
            first = not self._closed
            if first:
                self._shut_by = time.monotonic() + close_bound(drain_s)
            self._closed = True
        return first

    def _left_to_shut(self) -> float:
        """How long a close that found another under way waits for it: by that one's bound, not its own drain_s
        (a shorter one would stop the loop thread under the first's drain, cutting what it lets finish)."""
        return max(0.0, self._shut_by - time.monotonic())

    async def aclose(self, *, drain_s: float = CLOSE_DRAIN_S) -> None:
        """Stop taking requests, let those in flight finish, close backends and engines, flush telemetry.

        Requests and stream steps still running after ``drain_s`` seconds are cancelled, and streams left
        open between chunks are closed: each of their callers gets ``UsageError`` (the router was closed)
        within about ``drain_s + 2`` seconds of this call, and their budget holds are settled. Called while another
        close is under way, it returns once that one has ended.
        """
        check_seconds(drain_s, "drain_s", zero=True)  # before anything closes: a bad value leaves nothing half closed
        if not self._begin_close(drain_s):
            await poll_until(self._shut.is_set, self._left_to_shut())
            return
        try:
            await self._shut_down(drain_s)
        finally:  # also when a backend's close raised: the router is closed, its loop thread has nothing to serve
            try:
                if not self._portal.owns_running_loop():  # stop the loop thread too (from its own loop, close() does)
                    await asyncio.to_thread(self._portal.close)
            finally:
                self._shut.set()

    async def _shut_down(self, drain_s: float) -> None:
        """The close itself: drain, shadows, late decisions, backends, engines and stores, telemetry."""
        await self._stop_refresher()
        await self._inflight.close(drain_s)
        from genroute.router import shadows

        # Not their writes: the store's close waits for those (waited for in both, a stuck store held the close twice).
        await self._executor.drain_shadows(shadows.CLOSE_SHADOWS_S, writes=False)
        await self._decisions.finish(_LATE_SPEND_S)
        if self._executor.outcomes is not None:  # its writes in its file itself (a copy of the file alone holds them)
            await asyncio.to_thread(self._executor.outcomes.close, _OUTCOMES_CLOSE_S)
        for backend in self.backends.values():
            await backend.aclose()
        await self.resources.aclose()
        if self._owns_state:
            await self.state.aclose()
        await flush_providers(self._providers, _FLUSH_TIMEOUT_MS / 1000)

    def close(self, *, drain_s: float = CLOSE_DRAIN_S) -> None:
        """Sync ``aclose`` (also stops the router's private loop thread).

        Bounded even if a backend wedges the loop thread: after ``drain_s`` plus the time backends, shadows
        and telemetry are given to close, the loop is stopped and every sync caller still waiting on it gets
        ``UsageError``. Called while another close is under way, it returns once that one has ended.
        """
        refuse_inside_loop("close")
        check_seconds(drain_s, "drain_s", zero=True)
        if not self._begin_close(drain_s):
            self._shut.wait(self._left_to_shut())
            self._portal.close()  # stopped already, unless that close failed half-way or hangs: then it is stopped here
            return
        try:
            self._portal.call(self._shut_down(drain_s), timeout_s=close_bound(drain_s))
        except TimeoutError:
            pass
        finally:  # also when a backend's close raised: the router is closed, its loop thread has nothing to serve
            try:
                self._portal.close()
            finally:
                self._shut.set()

    def __enter__(self) -> Self:
        # A closed router entered without a word, and its first request then failed: refused here, as that request is.
        self._refuse_closed()
        return self

    def __exit__(self, *exc: Any) -> None:
        refuse_inside_loop("close", "use `async with` (or await aclose())")  # a `with` block in async code
        self.close()

    async def __aenter__(self) -> Self:
        self._refuse_closed()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
