"""Time bounds on a Chroma server's calls: chromadb's HTTP client has none (``httpx.Client(timeout=None)``), so a
server that accepts connections but never answers would hang a call, and building the client, for good."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from genroute.errors import ConfigError

T = TypeVar("T")


def bounded(make: Callable[[], T], timeout_s: float) -> T:
    """``make()`` on a daemon thread, waited for at most ``timeout_s`` (then ``TimeoutError``, and what it makes
    later is closed): chromadb's ``HttpClient`` makes requests while it is built, with no timeout to set."""
    made: Future[T] = Future()

    def run() -> None:
        try:
            value = make()
        except BaseException as exc:
            if made.set_running_or_notify_cancel():
                made.set_exception(exc)
            return
        if made.set_running_or_notify_cancel():
            made.set_result(value)
        else:  # given up on: nobody will use it
            getattr(value, "close", lambda: None)()

    threading.Thread(target=run, name="genroute-chroma-connect", daemon=True).start()
    try:
        return made.result(timeout=timeout_s)
    except TimeoutError:
        if not made.done() and made.cancel():
            raise TimeoutError(f"no answer in {timeout_s:g} s") from None
        return made.result()  # it ended just as the wait did


def bound_requests(client: Any, timeout_s: float) -> None:
    """Bound every later request of ``client`` by ``timeout_s``: chromadb's HTTP session has no timeout
    (``httpx.Client(timeout=None)``), so a server that accepts but never answers would hang a call for good;
    httpx's timeouts are connection errors, which ``map_chroma_error`` makes ``BackendUnavailable``."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if not isinstance(session, httpx.Client):  # another chromadb layout: fail loudly, not unbounded
        raise ConfigError("cannot bound this chromadb version's HTTP calls (no httpx session on the client)",
                          field="knowledge.timeout_s")
    session.timeout = httpx.Timeout(timeout_s)
