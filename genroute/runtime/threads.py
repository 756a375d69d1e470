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
import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

#: The call running for each key of ``on_daemon_thread`` (only while its thread runs).
_running: dict[Hashable, concurrent.futures.Future[Any]] = {}
_lock = threading.Lock()


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


async def on_daemon_thread(key: Hashable, thread_name: str, work: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``work(*args, **kwargs)`` on a new daemon thread named ``thread_name`` (with the caller's context, as
    ``asyncio.to_thread``), for work its caller may leave hanging: a health probe of a dependency that accepts and
    never answers. A thread of the loop's default executor is joined at interpreter exit (and by ``asyncio.run``'s
    end), so one hung there held the process's exit as long as it hung (Chroma's HTTP timeout, 30 s); nothing joins
    this one. A caller cancelled meanwhile leaves it to end.

    One call per ``key`` (the resource the work reads: a store and its collection) at a time, across threads and
    event loops: a call made while an earlier one's thread still runs waits for that one's answer (what it returns
    or raises) and starts none. Each call that timed out left its thread hung, so a check every second against a
    hung dependency piled up a thread a second until the dependency's own timeout."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[T] = loop.create_future()
    with _lock:
        running = _running.get(key)
        if running is None:
            running = _running[key] = concurrent.futures.Future()
            threading.Thread(target=_run, name=thread_name, daemon=True,
                             args=(key, running, contextvars.copy_context(), work, args, kwargs)).start()

    def hand_back(done: concurrent.futures.Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(_settle, answer, done)
        except RuntimeError:  # the loop was closed meanwhile: nobody waits for the answer any more
            pass

    running.add_done_callback(hand_back)  # the running call is never cancelled: a caller leaves only its ``answer``
    return await answer


def _run(key: Hashable, running: concurrent.futures.Future[Any], context: contextvars.Context,
         work: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        result = context.run(work, *args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the callers' to raise: a caller left waiting never would
        settle = functools.partial(running.set_exception, exc)  # ``exc`` unbound past the block
    else:
        settle = functools.partial(running.set_result, result)
    with _lock:
        del _running[key]  # a call from now on starts afresh
    settle()


def _settle(answer: asyncio.Future[Any], done: concurrent.futures.Future[Any]) -> None:
    """``answer`` as ``done`` ended, unless its caller was cancelled meanwhile."""
    if answer.done():
        return
    exc = done.exception()
    if exc is None:
        answer.set_result(done.result())
    else:
        answer.set_exception(exc)
