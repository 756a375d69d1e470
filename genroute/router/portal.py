"""A private event loop on a daemon thread, so sync entry points can drive the async core."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from genroute.errors import UsageError

T = TypeVar("T")


class Portal:
    """Runs coroutines on one long-lived loop thread (clients bound to that loop stay valid)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The portal's loop, started on first use."""
        with self._lock:
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

    @staticmethod
    def refuse_inside_loop(api: str) -> None:
        """Raise ``UsageError`` when a sync API is called from a thread running an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise UsageError(f"{api}() is synchronous and cannot run inside a running event loop; use a{api}()")

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

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
                try:
                    yield asyncio.run_coroutine_threadsafe(step(agen.__anext__()), loop).result()
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and loop.is_running():
                asyncio.run_coroutine_threadsafe(step(aclose()), loop).result()

    def close(self) -> None:
        """Stop the loop thread (pending callbacks are finished first)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
