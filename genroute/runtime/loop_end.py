"""``LoopEnd``: close something that belongs to an event loop on that loop, as the loop shuts down.

An HTTP session or a connection pool belongs to the loop that opened its connections, and can only be closed there.
A loop per call (``asyncio.run``: a script's, a Celery task's) ends without telling anyone, and what it left open
was left to the garbage collector (a socket held until a collection, and a ResourceWarning for each: "unclosed
transport", "unclosed Connection"). Before it closes its loop, ``asyncio.run`` closes the async generators left on
it (``loop.shutdown_asyncgens``, which genroute's own loop thread runs too): a ``LoopEnd`` is such a generator, left
suspended on the loop, whose ``finally`` awaits the close there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

from genroute.runtime.forks import forget_at_fork
from genroute.runtime.portal import running_loop

#: In a forked child, the parent's ``LoopEnd``s: kept from the collector, whose finalizer would wake the parent's
#: loop (their loops' self-pipes are shared with the parent).
_INHERITED: list[LoopEnd] = []


class LoopEnd:
    """Awaits ``close()`` on ``loop`` when that loop shuts its async generators down, unless ``end()`` came first.
    Made on ``loop``, while it runs (its first step registers it with the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, close: Callable[[], Awaitable[object]]) -> None:
        self._ended = False
        self._gen = self._closing(loop, close)
        step = self._gen.asend(None)  # registers it with the running loop (the loop's firstiter hook)
        with contextlib.suppress(StopIteration):  # it stops at its ``yield``
            step.send(None)
        forget_at_fork(self)

    async def _closing(self, loop: asyncio.AbstractEventLoop,
                       close: Callable[[], Awaitable[object]]) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            # The loop's own shutdown, on it; not ``end()``, which finishes the generator off any loop.
            if not self._ended and running_loop() is loop:
                await close()

    def end(self) -> None:
        """Finish now, closing nothing (what it would close was closed, or is closed some other way)."""
        self._ended = True
        with contextlib.suppress(StopIteration, RuntimeError):  # RuntimeError: its loop is closing it right now
            self._gen.aclose().send(None)

    def _forget_parent(self) -> None:
        self._ended = True
        _INHERITED.append(self)

