"""``to_thread_to_end``: work on a worker thread that the caller's cancellation does not cut loose.

``asyncio.to_thread`` cannot stop its thread: a caller cancelled while it waits gets ``CancelledError`` at once, and
leaves an ``async with lock:`` around it while the thread goes on. For work that changes what the lock guards (a
merge, a fold), the next holder then changed it at the same time. Here a cancelled caller waits for the thread to
end first (a cancellation meanwhile too), then raises its ``CancelledError``: the lock is held as long as the work
runs, and no one sees it half done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def to_thread_to_end(work: Callable[..., T], /, *args: Any) -> T:
    """``work(*args)`` on a worker thread (as ``asyncio.to_thread``), waited for to its end even if the caller is
    cancelled meanwhile (then, once it ended, ``CancelledError`` is raised; what it returned or raised is dropped)."""
    running = asyncio.ensure_future(asyncio.to_thread(work, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():
            try:
                await asyncio.wait([running])
            except asyncio.CancelledError:  # cancelled again: the thread still runs
                continue
        if not running.cancelled():
            running.exception()  # retrieved: the caller was cancelled, nothing is logged as unretrieved
        raise
