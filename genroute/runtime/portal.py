"""The one sync bridge: how every sync entry point drives the async core.

``refuse_inside_loop`` is the one check that a sync API is not called from a running event loop (it would
block that loop); ``run_sync`` runs a one-shot coroutine (ingestion, embedding, tuning, a benchmark) after that
check; a ``Portal`` keeps one loop on a daemon thread for objects whose clients belong to a loop (a router).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from genroute.errors import UsageError

T = TypeVar("T")


def refuse_inside_loop(api: str, instead: str | None = None) -> None:
    """Raise ``UsageError`` when the sync ``api`` is called from a thread running an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise UsageError(f"{api}() is synchronous and cannot run inside a running event loop; "
                     f"await {instead or 'a' + api}() instead")


def run_sync(coro: Coroutine[Any, Any, T], api: str, *, instead: str | None = None,
             portal: Portal | None = None) -> T:
    """Run ``coro`` to completion for the sync ``api`` (on ``portal``'s loop if given, else a fresh one).

    Inside a running event loop ``coro`` is closed unawaited and ``UsageError`` names the async twin.
    """
    try:
        refuse_inside_loop(api, instead)
    except UsageError:
        coro.close()
        raise
    if portal is not None:
        return portal.call(coro)
    return asyncio.run(coro)


class Portal:
    """Runs coroutines on one long-lived loop thread (clients bound to that loop stay valid)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._waiting: set[concurrent.futures.Future[Any]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The portal's loop, started on first use."""
        with self._lock:
            if self._closed:
                raise UsageError("the router is closed")
            if self._loop is None:
                ready = threading.Event()
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._run, args=(ready,), name="genroute-loop", daemon=True)
                self._thread.start()
                ready.wait()
            return self._loop

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], *, timeout_s: float | None = None) -> T:
        """Run ``coro`` on the portal loop and wait for its result (``TimeoutError`` after ``timeout_s``)."""
        try:
            loop = self.loop
        except UsageError:
            coro.close()
            raise
        return self._wait(asyncio.run_coroutine_threadsafe(coro, loop), timeout_s)

    @staticmethod
    def _submit(make: Any, loop: asyncio.AbstractEventLoop) -> concurrent.futures.Future[Any]:
        if loop.is_closed():
            raise UsageError("the router was closed while this stream was open")
        coro = make()
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # closed between the check and the call
            coro.close()
            raise UsageError("the router was closed while this stream was open") from None

    def _wait(self, future: concurrent.futures.Future[T], timeout_s: float | None = None) -> T:
        with self._lock:
            self._waiting.add(future)
        try:
            return future.result(timeout_s)
        except concurrent.futures.CancelledError:  # close() stopped the loop under this call
            raise UsageError("the router was closed while this request was in flight") from None
        except concurrent.futures.TimeoutError:  # the builtin TimeoutError since Python 3.11
            if future.done():  # the coroutine's own TimeoutError, not this wait's
                raise
            future.cancel()
            raise TimeoutError(f"no result within {timeout_s}s") from None
        finally:
            with self._lock:
                self._waiting.discard(future)

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Drive an async iterator from sync code, one item at a time."""
        loop = self.loop
        # Every step runs in one context: spans entered in one step and exited in another (the stream's
        # root span) must see the same contextvars, or OpenTelemetry fails to detach them.
        context = contextvars.copy_context()

        async def step(awaitable: Any) -> Any:
            return await asyncio.get_running_loop().create_task(awaitable, context=context)

        try:
            while True:
                if self._closed:
                    raise UsageError("the router was closed while this stream was open")
                try:
                    yield self._wait(self._submit(lambda: step(agen.__anext__()), loop))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and loop.is_running() and not self._closed:
                self._wait(asyncio.run_coroutine_threadsafe(step(aclose()), loop))

    def owns_running_loop(self) -> bool:
        """Whether the caller runs on this portal's loop thread."""
        return self._thread is not None and self._thread is threading.current_thread()

    def close(self) -> None:
        """Stop the loop thread: tasks still on it are cancelled, and every thread waiting on one is woken.

        Takes at most about 6 s even if the loop thread is stuck in blocking code: those waiting then get
        ``UsageError`` and the (daemon) thread is left to finish on its own.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self._closed = True
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():  # e.g. collected on its own thread: it cannot join itself
            loop.call_soon(loop.stop)
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(_cancel_all(1.0), loop).result(timeout=2.0)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
                pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        with self._lock:
            waiting = list(self._waiting)
        for future in waiting:
            future.cancel()
        if not thread.is_alive():
            loop.close()


async def _cancel_all(timeout_s: float) -> None:
    """Cancel every other task on this loop and give them ``timeout_s`` to unwind."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)
