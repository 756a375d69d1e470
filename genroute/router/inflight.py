"""Requests and streams in flight on a router, so that closing it ends each of them in a bounded time.

``Router.aclose`` first lets in-flight work finish for up to ``drain_s``; then it cancels every request
still running (on whichever event loop it runs) and closes every stream left open between two chunks. Each
of those callers gets ``UsageError("the router was closed ...")`` instead of a hang, a bare
``CancelledError`` or a stream that just stops; their budget holds are settled by the executor's own
``finally`` blocks as the cancellation unwinds them.

Work left on an event loop that was closed under it (``loop.close()`` with the request's task pending, or a stream
open) can never be ended there: the close ends it from its own loop instead, the same way. A stream is closed there;
a request's coroutine is resumed there as a task that stands in for the stranded one (in that task's context, so its
blocks exit as they entered) and cancelled. The drain does not wait for such work: it would never finish.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from genroute.errors import UsageError, carrying_cost
from genroute.runtime.forks import forget_at_fork

T = TypeVar("T")

#: How long cancelled requests and closed streams get to unwind (settle holds, end spans) after the drain.
UNWIND_S = 2.0
_POLL_S = 0.01
_CLOSED = "the router was closed while this request was in flight"
_CLOSED_STREAM = "the router was closed while this stream was open"


class InFlight:
    """The router's running requests (by task, with the loop each runs on) and its open streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[asyncio.Task[Any], int] = {}  # task -> depth of tracked blocks it is in
        self._cancelled: set[asyncio.Task[Any]] = set()
        self._streams: weakref.WeakKeyDictionary[RouterStream[Any], asyncio.AbstractEventLoop] = (
            weakref.WeakKeyDictionary())
        self._closers: set[Any] = set()
        #: Open streams the close has asked their loops to end, not yet reached there (with each one's loop).
        self._unreached: dict[RouterStream[Any], asyncio.AbstractEventLoop] = {}
        self.closed = False
        forget_at_fork(self)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's requests and streams do not run here (nor does a thread that may have
        held the lock at the fork)."""
        self._lock = threading.Lock()
        self._tasks, self._cancelled, self._closers = {}, set(), set()
        self._streams = weakref.WeakKeyDictionary()
        self._unreached = {}

    def __enter__(self) -> None:
        """``with inflight:`` tracks the block as work of the running task (``UsageError`` at once if closed; a
        cancellation by ``close`` alone leaves it as ``UsageError``). The tracker is its own context manager: a
        request in flight holds no extra object for it."""
        task = asyncio.current_task()
        assert task is not None
        # No lock: only this task writes its own entry, and ``close`` sets ``closed`` before it lists the tasks, so
        # a task missing from that list sees ``closed`` here (the GIL orders the two).
        tasks = self._tasks
        depth = tasks.get(task, 0)
        tasks[task] = depth + 1
        if self.closed:
            self.__exit__(None, None, None)
            raise UsageError(_CLOSED if depth else "the router is closed")  # depth 0: it starts only now

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks = self._tasks
        depth = tasks.get(task, 0) - 1
        if depth > 0:
            tasks[task] = depth
        else:
            tasks.pop(task, None)  # tolerant, as before: a block whose entry is gone leaves quietly
        # ``_cancel`` runs on this task's loop, as this does: no lock needed for ``_cancelled`` either.
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and task in self._cancelled:
            self._cancelled.discard(task)
            if task.uncancel() == 0:  # cancelled by close alone (not also by its caller): what it cost goes along
                raise carrying_cost(UsageError(_CLOSED), exc) from None

    def stream(self, chunks: AsyncIterator[T]) -> RouterStream[T]:
        """``chunks`` wrapped so that each step is tracked and a closed router ends it with ``UsageError``."""
        return RouterStream(chunks, self)

    async def close(self, drain_s: float) -> None:
        """Wait up to ``drain_s`` for in-flight work, then cancel what runs and close what is open.

        Returns once everything has unwound or ``UNWIND_S`` more seconds have passed.
        """
        await poll_until(lambda: not self._busy_running(), drain_s)
        with self._lock:
            self.closed = True
            tasks = [(task, task.get_loop()) for task in list(self._tasks)]  # list: other threads add theirs
            # Not one that ended (read to its end, closed by its caller): there is nothing to end, and its loop (not
            # running, say) would be waited for in vain. A stream ending meanwhile is reached, and left as it is.
            streams = [(stream, loop) for stream, loop in self._streams.items() if not stream.finished]
            self._unreached.update(streams)
        for task, loop in tasks:
            end_on(loop, self._cancel, task)
        for stream, loop in streams:
            end_on(loop, self._reach_stream, stream)
        await poll_until(self._unwound, UNWIND_S)

    def _unwound(self) -> bool:
        with self._lock:
            # A stream's ending task exists only once its loop has run ``_reach_stream``: until then nothing says
            # it is still to end, and the close would go on to shut the backends and stores under it.
            if not self._tasks and not self._closers and not self._unreached:
                return True
            stranded = [task for task in list(self._tasks) if task.get_loop().is_closed()]
            lost = [stream for stream, loop in self._unreached.items() if loop.is_closed()]
        for task in stranded:  # its loop closed after ``close`` asked it to cancel the task (the call was dropped)
            self._cancel(task)
        for stream in lost:  # its loop closed after ``close`` asked it to end the stream: ended here, as by end_on
            self._reach_stream(stream)
        return False

    def _busy_running(self) -> bool:
        # Streams idle between chunks do not hold the drain (their consumer may never come back), nor do requests on a
        # loop that was closed under them (nothing runs them any more).
        with self._lock:
            return any(not task.get_loop().is_closed() for task in list(self._tasks))

    def _cancel(self, task: asyncio.Task[Any]) -> None:
        """On ``task``'s own loop (or, if that is closed, on the closing one): cancel it if it is still inside tracked
        work (else it has left)."""
        if task not in self._tasks:
            return
        if task.get_loop().is_closed():
            task = self._resume_here(task)
        self._cancelled.add(task)
        task.cancel("the router was closed")

    def _resume_here(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """``resume_here(task)``, tracked as ``task`` was."""
        heir = resume_here(task)
        self._tasks[heir] = self._tasks.pop(task)  # no lock: the stranded task runs no more, and the heir not yet
        return heir

    def _reach_stream(self, stream: RouterStream[Any]) -> None:
        """``_close_stream`` as the close asks it of each open stream's loop (or, that loop closed first, the closing
        loop does), then no longer waited for as unreached."""
        try:
            self._close_stream(stream)
        finally:
            with self._lock:
                self._unreached.pop(stream, None)

    def _close_stream(self, stream: RouterStream[Any]) -> None:
        """On the stream's loop: close it unless a step is running (that step's task is cancelled instead)."""
        if stream.stepping or stream.finished or stream.closed_by_router:
            return
        stream.closed_by_router = True
        task = stream.ending = asyncio.get_running_loop().create_task(stream.end_by_router())
        with self._lock:
            self._closers.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            with self._lock:
                self._closers.discard(t)

        task.add_done_callback(done)

    def _register(self, stream: RouterStream[Any]) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._streams[stream] = loop
        return loop


class RouterStream(Generic[T]):
    """What ``Router.astream`` returns: an async iterator of chunks, closed with an error if the router is."""

    def __init__(self, chunks: AsyncIterator[T], inflight: InFlight) -> None:
        self._chunks = chunks
        self._inflight = inflight
        self.stepping = False
        self.finished = False
        self.closed_by_router = False
        #: Whether the router knows of it (on its first step's loop, where closing the router closes it).
        self.registered = False
        #: The loop of its first step, which every step runs on.
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The error the router's close ended it with (carrying what the request cost), once it did.
        self.closed_error: UsageError | None = None
        #: The task of the router's close ending it (``end_by_router``), which sets ``closed_error``.
        self.ending: asyncio.Task[None] | None = None

    def __aiter__(self) -> RouterStream[T]:
        return self

    async def __anext__(self) -> T:
        if self.closed_by_router:
            ending = self.ending
            if ending is not None and not ending.done() and ending.get_loop() is asyncio.get_running_loop():
                # The router's close ends it now: its error carries what the request cost, once it has settled.
                await asyncio.wait([ending])
            raise carrying_cost(UsageError(_CLOSED_STREAM), self.closed_error)
        if self.finished:
            raise StopAsyncIteration
        if self.stepping:  # a second reader: its step would fail inside the stream and end it for the first one too
            raise UsageError("this stream is already waiting for its next chunk: read a stream from one task at a time")
        if not self.registered:
            self.loop = self._inflight._register(self)
            self.registered = True
        elif self._inflight.closed and asyncio.get_running_loop() is self.loop:
            # Closed before its close reached this stream (on this loop, next): ended now as the close ends it (a
            # task the close waits for), so that the error carries what the request cost (a step refused by the
            # closed tracker below carried none).
            self._inflight._close_stream(self)
            return await self.__anext__()
        self.stepping = True
        try:
            with self._inflight:  # a step of the stream is work in flight; idle between steps is not
                return await self._chunks.__anext__()
        except BaseException:
            self.finished = True
            # Checked only here (a chunk costs nothing more); not for a step the router's close ended on its own loop.
            if asyncio.get_running_loop() is not self.loop and not self._inflight.closed:
                raise self._elsewhere() from None
            raise
        finally:
            self.stepping = False

    def _elsewhere(self) -> UsageError:
        """The error of a step on another loop than the first's (its HTTP response and spans belong to that one)."""
        ended = self.loop is not None and self.loop.is_closed()
        return UsageError("a stream is read on the event loop it started on"
                          + (" (that loop has ended, and closed it)" if ended else ""))

    async def aclose(self) -> None:
        """Close the stream now: its backend's stream is closed and its budget hold settled."""
        if self.stepping:  # it cannot close under that step, and marked finished it would be left open after it
            raise UsageError("this stream is waiting for its next chunk in another task: cancel that task, or close "
                             "the stream from it")
        self.finished = True
        await self.aclose_inner()

    async def aclose_inner(self) -> None:
        """Close the underlying generator (idempotent)."""
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    async def end_by_router(self) -> None:
        """End the stream as the router's close does: with the ``UsageError`` its caller gets, raised where the stream
        waits (so its trace records that error, not a caller that stopped reading), then closed."""
        athrow = getattr(self._chunks, "athrow", None)
        if athrow is not None:
            try:
                await athrow(UsageError(_CLOSED_STREAM))
            except UsageError as error:  # it carries what the request cost: the caller's next step raises that
                self.closed_error = error
            except StopAsyncIteration:
                pass
        await self.aclose_inner()


async def poll_until(done: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``done()`` came true within ``timeout_s``, polled: work on other threads' loops cannot be awaited."""
    end = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(_POLL_S)
    return True


def end_on(loop: asyncio.AbstractEventLoop, end: Callable[[T], None], work: T) -> None:
    """Run ``end(work)`` soon on ``loop``, from any thread; at once here if that loop is closed (nothing runs there
    any more): work left on a closed loop is ended by the closing router's own."""
    try:
        loop.call_soon_threadsafe(end, work)
    except RuntimeError:  # that loop is closed
        end(work)


def resume_here(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    """The coroutine of ``task``, whose loop was closed under it, as a task of the running loop that stands in for it
    (in its context: the context variables its blocks set are reset where they were set)."""
    coro = task.get_coro()
    if coro is None:  # an eager task that has finished (3.12+): there is nothing left to resume
        raise RuntimeError(f"{task!r} has no coroutine left to resume")
    heir = asyncio.get_running_loop().create_task(coro, context=context_of(task))
    heir.add_done_callback(_retrieved)  # its caller, on the closed loop, can never read how it ended
    return heir


def context_of(task: asyncio.Task[Any]) -> contextvars.Context:
    """The context ``task`` runs in."""
    get_context = getattr(task, "get_context", None)  # Python 3.12+
    if get_context is not None:
        return get_context()
    # Python 3.11 has no accessor: asyncio's Python Task keeps it as ``_context``, its C Task hands it to the garbage
    # collector (the first context among its referents). A task that does neither gets a copy of the caller's.
    context = getattr(task, "_context", None)
    if isinstance(context, contextvars.Context):
        return context
    found = next((ref for ref in gc.get_referents(task) if isinstance(ref, contextvars.Context)), None)
    return found if found is not None else contextvars.copy_context()


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def call_on(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` soon on ``loop``, from any thread (nothing if that loop is closed)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # that loop is closed: nothing runs there any more
        pass
