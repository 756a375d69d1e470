"""The one sync bridge: how every sync entry point drives the async core.

``refuse_inside_loop`` is the one check that a sync API is not called from a running event loop (it would
block that loop); ``run_sync`` runs a one-shot coroutine (ingestion, embedding, tuning, a benchmark) after that
check; a ``Portal`` keeps one loop on a daemon thread for objects whose clients belong to a loop (a router).

A forked child does not inherit that thread: each portal forgets its parent's loop at the fork, and the child's
first sync call starts a loop thread of its own. A sync call made while the same thread already waits on the
same portal (from a signal handler, or a finalizer) gets ``UsageError`` instead of a deadlock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from genroute.errors import UsageError, carrying_cost
from genroute.runtime.forks import forget_at_fork

T = TypeVar("T")

_REENTERED = ("a sync genroute call cannot run inside another one on the same thread (e.g. from a signal "
              "handler that interrupted it)")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this thread is running now, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def refuse_inside_loop(api: str, instead: str | None = None) -> None:
    """Raise ``UsageError`` when the sync ``api`` is called from a thread running an event loop, saying what to do
    ``instead`` there (default: ``await a<api>()``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise UsageError(f"{api}() is synchronous and cannot run inside a running event loop; "
                     f"{instead or f'await a{api}()'} instead")


def run_sync(coro: Coroutine[Any, Any, T], api: str, *, instead: str | None = None,
             portal: Portal | None = None) -> T:
    """Run ``coro`` to completion for the sync ``api`` (on ``portal``'s loop if given, else a fresh one).

    Inside a running event loop ``coro`` is closed unawaited and ``UsageError`` names the async twin (or says
    what to do ``instead``).
    """
    try:
        refuse_inside_loop(api, instead)
    except UsageError:
        coro.close()
        raise
    if portal is not None:
        return portal.call(coro)
    runner = asyncio.Runner()
    # The wakeup fd outlives the runner's close too: that waits for the default executor's threads (an embedding, a
    # ``to_thread`` call) on the loop, and a second Ctrl-C the kernel gave one of them waited for it to end.
    with _signals_wake(runner.get_loop()), runner:
        return runner.run(coro)  # asyncio.run's: a Ctrl-C cancels ``coro`` (KeyboardInterrupt once it has unwound)


@contextmanager
def _signals_wake(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While in it, a signal wakes ``loop`` (run on the main thread) whichever thread the kernel hands it to.

    The kernel may run a process's Ctrl-C on any of its threads (a worker embedding, one of Chroma's); Python then
    runs its handler (``asyncio.Runner``'s: cancel the main task) only once the main thread runs again, and on Unix
    nothing wakes a loop idle in ``select`` unless a wakeup fd is set, which asyncio sets only for
    ``loop.add_signal_handler``. So the Ctrl-C waited for whatever the loop awaited: an embedding batch run out, a
    held answer. Left alone if something has set one already (asyncio's own, another framework's).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    with reader, writer:
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # an embedded interpreter whose main thread takes no signals
            previous = None
        if previous != -1:
            if previous is not None:
                signal.set_wakeup_fd(previous)
            yield
            return
        loop.add_reader(reader.fileno(), _drain, reader)
        try:
            yield
        finally:
            now = signal.set_wakeup_fd(-1)
            if now != writer.fileno():  # replaced meanwhile (a ``loop.add_signal_handler``): that one stays
                signal.set_wakeup_fd(now)
            loop.remove_reader(reader.fileno())


#: How long the main thread waits on a portal between looks at its signals (see ``_result``).
_SIGNAL_LOOK_S = 0.25


def _result(future: concurrent.futures.Future[T], timeout_s: float | None) -> T:
    """``future.result(timeout_s)``, in slices on the main thread: a Ctrl-C the kernel gave another thread (the loop
    thread, an HTTP one) is handled only once the main thread runs, and a wait on a lock did not end for it, so the
    call waited for its answer before it was interrupted."""
    if threading.current_thread() is not threading.main_thread():
        # A lock waits at most TIMEOUT_MAX (~292 years): health(timeout_s=1e308) was an OverflowError on a thread.
        return future.result(None if timeout_s is None else min(timeout_s, threading.TIMEOUT_MAX))
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = _SIGNAL_LOOK_S if end is None else min(_SIGNAL_LOOK_S, end - time.monotonic())
        try:
            return future.result(max(left, 0.0))
        except concurrent.futures.TimeoutError:
            if future.done():  # the call's own TimeoutError, or it ended just after this slice: its outcome either way
                return future.result()
            if end is not None and time.monotonic() >= end:
                raise


def _drain(reader: socket.socket) -> None:
    """Empty the wakeup socket: the signal numbers in it are only a nudge, the handlers run on their own."""
    try:
        reader.recv(4096)
    except OSError:  # already empty
        pass


class Portal:
    """Runs coroutines on one long-lived loop thread (clients bound to that loop stay valid)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Reentrant: a signal handler may make a sync call while this thread holds it (it then gets UsageError).
        self._lock = threading.RLock()
        self._closed = False
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self._here = threading.local()  # ``waiting``: this thread waits on this portal now
        forget_at_fork(self)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's loop thread did not come along; the next call starts the child's own."""
        if self._loop is not None:
            _INHERITED.append(self._loop)  # never run nor closed here: closing it would touch the parent's fds
        self._loop = self._thread = None
        self._lock = threading.RLock()  # another thread may have held it at the fork
        self._waiting = set()
        self._here = threading.local()

    def _refuse_reentry(self) -> None:
        if getattr(self._here, "waiting", False):
            raise UsageError(_REENTERED)

    def _may_wait(self) -> bool:
        """Whether this thread may block on the loop (it neither waits on it already nor runs it)."""
        return not getattr(self._here, "waiting", False) and not self.owns_running_loop()

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
            self._refuse_reentry()
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
        self._here.waiting = True  # before it is listed: a reentrant call must never wait on this thread
        with self._lock:
            self._waiting.add(future)
        try:
            return _result(future, timeout_s)
        except concurrent.futures.CancelledError:
            if not self._closed:  # the call itself ended cancelled (a backend raised CancelledError): as it is
                raise
            raise UsageError("the router was closed while this request was in flight") from None  # close() stopped it
        except concurrent.futures.TimeoutError:  # the builtin TimeoutError since Python 3.11
            if future.done():  # the coroutine's own TimeoutError, not this wait's
                raise
            future.cancel()
            raise TimeoutError(f"no result within {timeout_s}s") from None
        except BaseException:  # the wait itself was interrupted (Ctrl-C): the caller gave up on this work
            future.cancel()  # a no-op if it had ended (then this is its own error)
            raise
        finally:
            with self._lock:
                self._waiting.discard(future)
            self._here.waiting = False

    def iterate(self, agen: AsyncIterator[T], owner: object = None) -> Iterator[T]:
        """Drive an async iterator from sync code, one item at a time, read by one thread at a time (``OneReader``).

        ``owner`` (the router) is kept alive until the iteration ends: collected on the loop thread, as the
        stream's last step finishes there, it would stop that loop under this iterator's own wait.
        """
        return OneReader(self._iterate(agen, owner))

    def _iterate(self, agen: AsyncIterator[T], owner: object) -> Iterator[T]:
        self._refuse_reentry()
        loop = self.loop
        # Every step runs in one context: spans entered in one step and exited in another (the stream's
        # root span) must see the same contextvars, or OpenTelemetry fails to detach them.
        context = contextvars.copy_context()
        running: list[asyncio.Task[Any]] = []  # the step started last

        async def step(awaitable: Any, *, track: bool = True) -> Any:
            task = asyncio.get_running_loop().create_task(awaitable, context=context)
            if track:
                running[:] = [task]
            return await task

        async def close(aclose: Any) -> None:
            # A wait interrupted (Ctrl-C) leaves its step running on the loop: the generator cannot close under it.
            for task in running:
                task.cancel()
                await asyncio.wait([task])
            await aclose()

        try:
            while True:
                if self._closed:  # a router's stream closed with it knows what the request cost
                    raise carrying_cost(UsageError("the router was closed while this stream was open"),
                                        getattr(agen, "closed_error", None))
                # Made outside an event loop, read inside one: each chunk's wait would block that loop.
                refuse_inside_loop("stream", "read astream() with `async for`")
                self._refuse_reentry()
                try:
                    yield self._wait(self._submit(lambda: step(agen.__anext__()), loop))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and loop.is_running() and not self._closed:
                closing = asyncio.run_coroutine_threadsafe(step(close(aclose), track=False), loop)
                if self._may_wait():  # not when collected inside a wait, or on the loop thread itself
                    self._wait(closing)
            del owner  # only now may the router go (on this thread)

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
            # Stopping the loop now would strand the callbacks that hand results to waiting threads; another
            # thread stops it after them, as a close from outside does.
            stopper = threading.Thread(target=self._stop, args=(loop, thread), name="genroute-loop-close", daemon=True)
            try:
                stopper.start()
            except RuntimeError:  # at interpreter shutdown: no new thread; nothing will wait any more either
                loop.call_soon(loop.stop)
            return
        self._stop(loop, thread)

    def _stop(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        """From another thread: cancel the loop's tasks, stop it, wake every waiter, close it."""
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


class OneReader(Iterator[T]):
    """A sync stream: one thread reads it at a time. A second thread's ``next`` (or ``close``) while another waits
    for a chunk gets ``UsageError`` saying so, where the generator under it raised Python's "generator already
    executing" ``ValueError``; chunks split between threads would make no answer whole anyway."""

    __slots__ = ("_items", "_reading")

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self._reading = threading.Lock()

    def __next__(self) -> T:
        if not self._reading.acquire(blocking=False):  # a lock per chunk, no context manager: a chunk is a hot step
            raise _busy("read")
        try:
            return next(self._items)
        finally:
            self._reading.release()

    def close(self) -> None:
        """End the stream (its request is cancelled if still running), as closing a generator does."""
        if not self._reading.acquire(blocking=False):
            raise _busy("closed")
        try:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
        finally:
            self._reading.release()


def _busy(what: str) -> UsageError:
    return UsageError(f"this stream is being read by another thread (or by this one, from a signal handler that "
                      f"interrupted its read), so it cannot be {what} here meanwhile: read a stream from one thread "
                      "and hand its chunks to the others yourself (a queue.Queue), or start a stream per thread")


#: In a forked child, the parent's loops: kept from the collector, which would try to close them.
_INHERITED: list[asyncio.AbstractEventLoop] = []


async def _cancel_all(timeout_s: float) -> None:
    """Cancel every other task on this loop and give them ``timeout_s`` to unwind, then close the async generators
    left on it, as ``asyncio.run`` does before it closes its loop (an HTTP session closes its connections there, see
    ``genroute.engines.gemini_sessions``, instead of leaving them to the garbage collector)."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)
    closing = asyncio.ensure_future(asyncio.get_running_loop().shutdown_asyncgens())
    await asyncio.wait([closing], timeout=timeout_s / 2)
