"""A worker-thread call held on its first run, to force a cancelled async read to leave its thread running while a
second read comes: the interleaving a refresh or a shared-list read must survive, without a sleep."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


class Held:
    """``call`` wrapped: its first run waits for ``go`` (after setting ``entered``); ``overlaps`` holds, for each run,
    how many other runs were going when it started."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call
        self._mutex = threading.Lock()
        self._active = 0
        self.entered, self.go = threading.Event(), threading.Event()
        self.overlaps: list[int] = []

    def __call__(self, *args: Any) -> Any:
        with self._mutex:
            self.overlaps.append(self._active)
            self._active += 1
        try:
            if len(self.overlaps) == 1:
                self.entered.set()
                self.go.wait(30)
            return self._call(*args)
        finally:
            with self._mutex:
                self._active -= 1


async def cancel_first_read(held: Held, read: Callable[[], Awaitable[T]], lock: Any) -> T:
    """Start ``read``, cancel it while ``held`` holds its thread, start a second ``read`` and let it either run
    ``held`` beside the first or wait for ``lock``; then release the first. Returns the second read's answer."""
    first = asyncio.ensure_future(read())
    assert await asyncio.to_thread(held.entered.wait, 30)
    first.cancel()
    second = asyncio.ensure_future(read())
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while len(held.overlaps) < 2 and not lock._waiters and loop.time() < end:
        await asyncio.sleep(0)
    held.go.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    return await second
