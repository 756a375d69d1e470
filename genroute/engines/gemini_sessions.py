"""Gemini clients per event loop, on aiohttp sessions that skip aiohttp's per-request reads of the environment.

google-genai makes its aiohttp session with ``trust_env=True``: before every request aiohttp then reads the
netrc file (in the loop's default executor) and the proxy settings (``asyncio.to_thread``), two trips to worker
threads that cost ~250 µs of CPU a request, ~30 % of a raw call's at 1,000 concurrent requests
(``benchmarks/throughput.py``). Where those reads can find nothing (no proxy in the environment and no netrc
file, checked when a loop's session is made) the Gemini engine gives the SDK a session of its own that does not
make them (``HttpOptions.aiohttp_client``, the SDK's documented hook), with the SDK's other settings: no
connection limit and the same read buffer. Elsewhere (a proxy, a netrc file, ``trust_env: true``, Vertex AI with
its own auth, an SDK without aiohttp) the engine uses the SDK's client and session as they are.

A session belongs to one event loop, so each loop gets a client of its own. The clients share one SSL context,
made as the SDK makes it for aiohttp (``SSL_CERT_FILE``, else certifi's bundle; ``SSL_CERT_DIR``): a client then
costs ~1 ms to make instead of the ~57 ms its three contexts would cost.

Closing: ``aclose`` closes each session on its own loop. A loop that ends the way ``asyncio.run`` ends it (a loop
per call: a Celery task's, a script's) closes its session there, with its connections, before it closes
(``genroute.runtime.loop_end``). A session the engine lets go of otherwise (the engine collected unclosed, a loop
stopped when the engine closes) is closed on its loop when that loop next runs, and marked closed without it once
the loop is closed (a loop closed without ``shutdown_asyncgens``: its connections are left to the garbage
collector); at exit, sessions of loops still running in other threads are closed there (``_let_go``,
``_close_at_exit``). aiohttp then reports none unclosed, except a session whose loop was left stopped and never
closed: genroute does not run an application's loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib.util
import os
import ssl
import threading
import urllib.request
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genroute.runtime.forks import forget_at_fork
from genroute.runtime.loop_end import LoopEnd

if TYPE_CHECKING:
    from google import genai

#: aiohttp's read buffer in the SDK's own session (``READ_BUFFER_SIZE`` in google-genai).
READ_BUFFER_SIZE = 2**22


def environment_applies() -> bool:
    """Whether aiohttp's ``trust_env`` would find anything here: a proxy setting (``urllib.request.getproxies``,
    which aiohttp reads) or a netrc file (``NETRC``, else ``~/.netrc``; ``~/_netrc`` on Windows)."""
    if urllib.request.getproxies():
        return True
    path = os.environ.get("NETRC")
    if path is None:
        try:
            path = str(Path.home() / ("_netrc" if os.name == "nt" else ".netrc"))
        except RuntimeError:  # no home directory to look in: aiohttp finds no netrc either
            return False
    return os.path.exists(path)  # a file, or a FIFO such as NETRC=<(...): aiohttp reads either


def new_session() -> Any:
    """An aiohttp session as the engine gives it to the SDK: the SDK's settings (no connection limit, its read
    buffer), without ``trust_env``. Made on the loop it is for (the running one)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False,
                                 read_bufsize=READ_BUFFER_SIZE)


def supported() -> bool:
    """Whether the SDK takes a session of the caller's (``HttpOptions.aiohttp_client``) and aiohttp is installed
    (the SDK sends async requests through aiohttp if it can import it, else through httpx)."""
    from google.genai import types

    return "aiohttp_client" in types.HttpOptions.model_fields and importlib.util.find_spec("aiohttp") is not None


def _ssl_context() -> ssl.SSLContext:
    """The SSL context google-genai makes for aiohttp requests."""
    import certifi

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE", certifi.where()),
                                      capath=os.environ.get("SSL_CERT_DIR"))


def _detach(session: Any) -> asyncio.Future[Any] | None:
    """Mark ``session`` closed now, on its own loop's thread or once that loop is closed: its connections are closed
    on the loop (a task there waits for them) or, with the loop closed, dropped for the garbage collector (as the SDK
    drops its own sessions of closed loops). ``close`` returns an awaitable that, with the loop closed or no
    connection open, has nothing to wait for: it is run to its end here; else it yields the task that waits, which
    the loop runs on its own (returned)."""
    if session.closed:
        return None
    steps = session.connector.close().__await__()
    try:
        return next(steps)
    except StopIteration:
        return None


#: Sessions let go of while their loop was not running here, with that loop: closed when the loop runs or at exit.
#: No lock guards it (nor ``_CLOSING``): a finalizer may add to it during a garbage collection in any thread, even
#: one that is reading it; each single operation on a dict or set is atomic, and readers work on a ``copy()``.
_WAITING: dict[Any, asyncio.AbstractEventLoop] = {}
#: Tasks waiting for closed sessions' connections to close, until they end (what exit waits for).
_CLOSING: set[asyncio.Future[Any]] = set()


def _close_here(session: Any) -> None:
    """Close ``session`` on the loop running this (its own)."""
    _WAITING.pop(session, None)
    closing = _detach(session)
    if closing is not None:
        _CLOSING.add(closing)
        closing.add_done_callback(_CLOSING.discard)


def _let_go(loop: asyncio.AbstractEventLoop, session: Any) -> None:
    """Close ``session`` of ``loop`` without waiting for it: marked closed now if the loop is closed, else closed on
    the loop when it next runs; until then it waits in ``_WAITING`` (``_sweep``, and at exit ``_close_at_exit``)."""
    if loop.is_closed():
        _detach(session)
        return
    _WAITING[session] = loop
    with contextlib.suppress(RuntimeError):  # closed meanwhile: swept as closed
        loop.call_soon_threadsafe(_close_here, session)


def _sweep() -> None:
    """Mark closed the waiting sessions whose loop has been closed since."""
    for session, loop in _WAITING.copy().items():
        if loop.is_closed() and _WAITING.pop(session, None) is not None:
            _detach(session)


async def _closed(sessions: list[Any]) -> None:
    """``sessions`` closed on this loop, with their connections (and those of others closed here)."""
    for session in sessions:
        await session.close()
    here = asyncio.get_running_loop()
    closing = [task for task in _CLOSING.copy() if task.get_loop() is here]
    if closing:
        await asyncio.wait(closing)


#: Every ``LoopClients`` alive, for ``_close_at_exit``.
_LIVE: weakref.WeakSet[LoopClients] = weakref.WeakSet()
#: In a forked child, the parent's sessions: the parent's to close, kept from the collector
#: (``LoopClients._forget_parent``).
_INHERITED: list[Any] = []


@atexit.register
def _close_at_exit() -> None:
    """At exit: close the sessions still open on loops that are running (in other threads), on those loops, 2 s at
    most in all. A loop that is stopped is not run here (it may hold the application's own work): a session on it
    is left as it is, and aiohttp reports it unclosed when it is collected, as for any session of a loop left open."""
    for clients in _LIVE.copy():
        _let_go_all(clients._own)
    _sweep()
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for session, loop in _WAITING.copy().items():
        if loop.is_running():
            by_loop.setdefault(loop, []).append(session)
    futures = []
    for loop, sessions in by_loop.items():
        closing = _closed(sessions)
        try:
            futures.append(asyncio.run_coroutine_threadsafe(closing, loop))
        except RuntimeError:  # stopped meanwhile
            closing.close()
    concurrent.futures.wait(futures, timeout=2.0)


class _Parent:
    """This module's own lists in a forked child: the parent's closes to wait for, not this process's
    (``forget_at_fork``)."""

    def _forget_parent(self) -> None:
        _WAITING.clear()
        _CLOSING.clear()


_PARENT = _Parent()
forget_at_fork(_PARENT)


def _let_go_all(own: dict[asyncio.AbstractEventLoop, tuple[Any, Any]]) -> None:
    """``_let_go`` every session in ``own`` (an engine collected without ``aclose``, or at exit)."""
    for loop, (_, session) in own.copy().items():
        if own.pop(loop, None) is not None:
            _let_go(loop, session)


class LoopClients:
    """A google-genai client for each event loop, each on an aiohttp session of its own (see the module).

    ``make(aiohttp_client, ssl_context)`` builds a client on a session; ``shared()`` is the SDK's own client,
    used on a loop where the environment applies (or ``trust_env`` is true).
    """

    def __init__(self, make: Callable[[Any, ssl.SSLContext], genai.Client], shared: Callable[[], genai.Client],
                 *, trust_env: bool | None = None) -> None:
        self._make = make
        self._shared = shared
        self._trust_env = trust_env
        self._ssl: ssl.SSLContext | None = None
        self._lock = threading.Lock()  # loops on several threads may make their first call at once
        #: The async API to use on each loop seen (the SDK's own client's where the environment applies).
        self.aio: dict[asyncio.AbstractEventLoop, Any] = {}
        #: The clients and sessions made here, by loop.
        self._own: dict[asyncio.AbstractEventLoop, tuple[genai.Client, Any]] = {}
        #: What closes each of those sessions when its loop shuts down.
        self._ends: dict[asyncio.AbstractEventLoop, LoopEnd] = {}
        # Collected without ``aclose``: each session is closed on its loop all the same (the dict, not self). At
        # exit ``_close_at_exit`` does it instead, and waits for the closes.
        weakref.finalize(self, _let_go_all, self._own).atexit = False
        _LIVE.add(self)
        forget_at_fork(self)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's sessions and connections are the parent's to close, not this process's.
        They are let go of (kept, so that no close reaches the parent's connections before the child exits), and the
        child's loops get sessions of their own."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        _INHERITED.extend(self._own.values())
        self._own.clear()
        self._ends.clear()
        self.aio.clear()

    def for_loop(self) -> Any:
        """The SDK's async API (``client.aio``) for the running loop, made on the loop's first call."""
        loop = asyncio.get_running_loop()
        try:
            return self.aio[loop]
        except KeyError:
            pass
        return self._add(loop)

    def _add(self, loop: asyncio.AbstractEventLoop) -> Any:
        with self._lock:
            return self.aio.get(loop) or self._add_locked(loop)

    def _add_locked(self, loop: asyncio.AbstractEventLoop) -> Any:
        for gone in [seen for seen in list(self.aio) if seen.is_closed()]:  # a loop per call (``asyncio.run``)
            del self.aio[gone]
            pair = self._own.pop(gone, None)
            if pair is not None:
                _detach(pair[1])  # already closed if the loop shut down as asyncio.run does
                pair[0].close()
            end = self._ends.pop(gone, None)
            if end is not None:
                end.end()
        _sweep()
        trusted = environment_applies() if self._trust_env is None else self._trust_env
        if trusted:
            aio = self._shared().aio
        else:
            if self._ssl is None:
                self._ssl = _ssl_context()
            session = new_session()
            try:
                client = self._make(session, self._ssl)
            except BaseException:
                _detach(session)  # no connection yet: closed at once
                raise
            self._own[loop] = (client, session)
            self._ends[loop] = LoopEnd(loop, session.close)
            aio = client.aio
        self.aio[loop] = aio
        return aio

    async def aclose(self) -> None:
        """Close every session made here: on this loop, awaited; on a loop running in another thread, there
        (bounded at 2 s); on any other loop, without waiting (``_let_go``)."""
        here = asyncio.get_running_loop()
        with self._lock:
            own = dict(self._own)
            self._own.clear()  # in place: the finalizer holds this dict
            self.aio.clear()
            ends = dict(self._ends)
            self._ends.clear()
        for loop, (client, session) in own.items():
            if loop is here:
                await session.close()
            elif loop.is_running():
                closing = session.close()
                try:
                    await asyncio.wait_for(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(closing, loop)), 2.0)
                except RuntimeError:  # the loop stopped meanwhile: closed there later
                    closing.close()
                    _let_go(loop, session)
                except TimeoutError:  # the loop is stuck (this close was cancelled): closed there once it is free
                    _let_go(loop, session)
            else:
                _let_go(loop, session)
            end = ends.get(loop)
            if end is not None:
                end.end()
            await client.aio.aclose()  # the SDK's unused httpx clients
            client.close()
