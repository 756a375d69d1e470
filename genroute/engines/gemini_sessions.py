"""Gemini clients per event loop, on aiohttp sessions that skip aiohttp's per-request reads of the environment.

google-genai makes its aiohttp session with ``trust_env=True``: before every request aiohttp then reads the
netrc file (in the loop's default executor) and the proxy settings (``asyncio.to_thread``), two trips to worker
threads that cost ~250 µs of CPU a request, ~30 % of a raw call's at 1,000 concurrent requests
(``benchmarks/throughput.py``). Where those reads can find nothing (no proxy in the environment and no netrc
file, checked when a loop's session is made) the Gemini engine gives the SDK a session of its own that does not
make them (``HttpOptions.aiohttp_client``, the SDK's documented hook), with the SDK's other settings: no
connection limit and the same read buffer. Elsewhere (a proxy, a netrc file, ``trust_env: true``, Vertex AI with
its own auth, an SDK without aiohttp) the engine uses the SDK's client and session as they are.

``aclose`` closes each session on its own loop; a session whose loop is closed is marked closed without it (at
``aclose``, when another loop makes its first call, and at exit), so aiohttp logs none as unclosed. A session whose
loop is stopped but not closed when the engine is closed is left open for that loop, and marked closed once the loop
is closed; a loop never closed at all leaves it to aiohttp's "Unclosed client session" message at exit.

A session belongs to one event loop, so each loop gets a client of its own. The clients share one SSL context,
made as the SDK makes it for aiohttp (``SSL_CERT_FILE``, else certifi's bundle; ``SSL_CERT_DIR``): a client then
costs ~1 ms to make instead of the ~57 ms its three contexts would cost.
"""

from __future__ import annotations

import asyncio
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
    return os.path.isfile(path)


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


def _detach(session: Any) -> None:
    """Mark a session whose loop is closed as closed, without that loop.

    Its pooled connections are dropped for the garbage collector (as the SDK drops its own sessions of closed
    loops), and aiohttp does not log it as unclosed when it is collected. ``close`` returns an awaitable that, with
    the loop closed, has nothing to wait for: it is run to its end here.
    """
    steps = session.connector.close().__await__()
    with contextlib.suppress(StopIteration):
        next(steps)


def _release_closed(own: dict[asyncio.AbstractEventLoop, tuple[Any, Any]]) -> None:
    """Take every client whose loop is closed out of ``own``, its session marked closed (``_detach``).

    A session on a loop that is stopped but not closed stays: its loop may run again, and closing it now would leave
    a task on that loop that is logged as destroyed if the loop is closed without running.
    """
    for loop in [loop for loop in list(own) if loop.is_closed()]:
        client, session = own.pop(loop)
        _detach(session)
        client.close()


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
        # At exit (or when collected), sessions of closed loops are marked closed, or aiohttp would log each as an
        # unclosed session.
        weakref.finalize(self, _release_closed, self._own)

    def for_loop(self) -> Any:
        """The SDK's async API (``client.aio``) for the running loop, made on the loop's first call."""
        loop = asyncio.get_running_loop()
        aio = self.aio.get(loop)
        return aio if aio is not None else self._add(loop)

    def _add(self, loop: asyncio.AbstractEventLoop) -> Any:
        with self._lock:
            return self.aio.get(loop) or self._add_locked(loop)

    def _add_locked(self, loop: asyncio.AbstractEventLoop) -> Any:
        for gone in [seen for seen in list(self.aio) if seen.is_closed()]:  # a loop per call (``asyncio.run``)
            del self.aio[gone]
        _release_closed(self._own)
        parked = self._own.get(loop)
        if parked is not None and not parked[1].closed:  # left open by ``aclose`` while this loop was stopped
            self.aio[loop] = parked[0].aio
            return parked[0].aio
        trusted = environment_applies() if self._trust_env is None else self._trust_env
        if trusted:
            aio = self._shared().aio
        else:
            import aiohttp

            if self._ssl is None:
                self._ssl = _ssl_context()
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False,
                                            read_bufsize=READ_BUFFER_SIZE)
            client = self._make(session, self._ssl)
            self._own[loop] = (client, session)
            aio = client.aio
        self.aio[loop] = aio
        return aio

    async def aclose(self) -> None:
        """Close every session made here: on this loop, awaited; on a loop running in another thread, there
        (bounded); on a closed loop, marked closed (``_detach``). A session on a loop that is stopped but not
        closed is left open for that loop (``_release_closed``): it is marked closed once the loop is closed, or
        used again if the engine is."""
        here = asyncio.get_running_loop()
        with self._lock:
            self.aio.clear()
            _release_closed(self._own)
            own = {loop: pair for loop, pair in self._own.items() if loop is here or loop.is_running()}
            for loop in own:
                del self._own[loop]  # in place: the finalizer holds this dict
        for loop, (client, session) in own.items():
            if loop is not here:
                try:
                    closing = asyncio.run_coroutine_threadsafe(session.close(), loop)
                    await asyncio.wait_for(asyncio.wrap_future(closing), 2.0)
                except (RuntimeError, TimeoutError):  # the loop stopped or is stuck: leave it for that loop
                    with self._lock:
                        self._own.setdefault(loop, (client, session))
                    continue
            else:
                await session.close()
            await client.aio.aclose()  # the SDK's unused httpx clients
            client.close()
