"""``to_thread_to_end``: work on a worker thread that the caller's cancellation does not cut loose; ``on_daemon_thread``:
work its caller may leave hanging, on a thread the process's exit does not wait for.

``asyncio.to_thread`` cannot stop its thread: a caller cancelled while it waits gets ``CancelledError`` at once, and
leaves an ``async with lock:`` around it while the thread goes on. For work that changes what the lock guards (a
merge, a fold), the next holder then changed it at the same time. Here a cancelled caller waits for the thread to
end first (a cancellation meanwhile too), then raises its ``CancelledError``: the lock is held as long as the work
runs, and no one sees it half done.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
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


async def on_daemon_thread(thread_name: str, work: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``work(*args, **kwargs)`` on a new daemon thread named ``thread_name`` (with the caller's context, as
    ``asyncio.to_thread``), for work its caller may leave hanging: a health probe of a dependency that accepts and
    never answers. A thread of the loop's default executor is joined at interpreter exit (and by ``asyncio.run``'s
    end), so one hung there held the process's exit as long as it hung (Chroma's HTTP timeout, 30 s); nothing joins
    this one. A caller cancelled meanwhile leaves it to end; what it returns then is dropped."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            result = context.run(work, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - the caller's to raise: a caller left waiting never would
            _hand_back(loop, answer, functools.partial(answer.set_exception, exc))  # ``exc`` unbound past the block
        else:
            _hand_back(loop, answer, functools.partial(answer.set_result, result))

    threading.Thread(target=run, name=thread_name, daemon=True).start()
    return await answer


def _hand_back(loop: asyncio.AbstractEventLoop, answer: asyncio.Future[Any], settle: Callable[[], None]) -> None:
    """``settle`` ``answer`` on its loop, unless its caller was cancelled meanwhile or the loop is closed."""
    def on_loop() -> None:
        if not answer.done():
            settle()

    try:
        loop.call_soon_threadsafe(on_loop)
    except RuntimeError:  # the loop was closed meanwhile: nobody waits for the answer any more
        pass
