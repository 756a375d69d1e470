"""Time bounds on a Chroma server's calls: chromadb's HTTP client has none (``httpx.Client(timeout=None)``), so a
server that accepts connections but never answers would hang a call, and building the client, for good.

The bound is set on the client's httpx session (``client._server._session``, chromadb 1.x; pinned by
``tests/test_knowledge.py``), before the constructor's own requests, so a failed connect ends by itself (no thread
or socket left behind). Should a chromadb release lay its client out otherwise, nothing refuses to build: a warning
is logged once, the constructor is waited for on a thread (one attempt per store at a time) and each later call
through ``asyncio.wait_for`` (``KnowledgeStore``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_log = logging.getLogger(__name__)
_warned = threading.Event()


def bound_requests(client: Any, timeout_s: float) -> bool:
    """Bound every later request of ``client`` (a chromadb client) by ``timeout_s``; ``False`` (and one warning per
    process) when this chromadb version has no httpx session where 1.x keeps it. httpx's timeouts are connection
    errors, which ``map_chroma_error`` makes ``BackendUnavailable``."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if not isinstance(session, httpx.Client):
        if not _warned.is_set():
            _warned.set()
            _log.warning("cannot set knowledge.timeout_s on this chromadb version's HTTP client (no httpx session "
                         "at client._server._session): each call is waited for at most timeout_s instead, and one "
                         "that never ends keeps a worker thread")
        return False
    session.timeout = httpx.Timeout(timeout_s)
    return True


def http_client(*, host: str, port: int, ssl: bool, headers: Mapping[str, str] | None, settings: Any,
                tenant: str, database: str, timeout_s: float) -> Any:
    """``chromadb.HttpClient(...)`` whose requests, its constructor's included, are bounded by ``timeout_s`` (past
    it: ``TimeoutError``)."""
    import httpx
    from chromadb.api.client import Client

    class BoundedClient(Client):
        # The constructor's first request is get_user_identity, then its admin client's (another session) checks.
        def get_user_identity(self) -> Any:
            bound_requests(self, timeout_s)
            return super().get_user_identity()

        def _validate_tenant_database(self, tenant: str, database: str) -> None:
            bound_requests(getattr(self, "_admin_client", None), timeout_s)
            super()._validate_tenant_database(tenant=tenant, database=database)

    # What chromadb.HttpClient sets (it builds its own Client class, which cannot be swapped).
    settings.chroma_api_impl = "chromadb.api.fastapi.FastAPI"
    settings.chroma_server_host = host
    settings.chroma_server_http_port = port
    settings.chroma_server_ssl_enabled = ssl
    settings.chroma_server_headers = dict(headers) if headers else None
    try:
        return BoundedClient(tenant=tenant, database=database, settings=settings)
    except Exception as exc:  # chromadb words a timed-out tenant check "Could not connect to tenant ..."
        if any(isinstance(e, httpx.TimeoutException) for e in (exc, exc.__cause__, exc.__context__)):
            raise TimeoutError(f"no answer in {timeout_s:g} s") from exc
        raise


class Connecting(Generic[T]):
    """One attempt at making a client at a time, on a daemon thread: a caller that stops waiting for it leaves it
    for the next caller, so retries against a stalled server do not pile up threads and sockets."""

    def __init__(self) -> None:
        self._pending: Future[T] | None = None
        self._lock = threading.Lock()

    def result(self, make: Callable[[], T], timeout_s: float) -> T:
        """What ``make()`` returns (or raises), waited for at most ``timeout_s`` (then ``TimeoutError``)."""
        with self._lock:
            pending = self._pending
            if pending is None or (pending.done() and pending.exception() is not None):
                pending = self._pending = _on_thread(make)
        try:
            value = pending.result(timeout=timeout_s)
        except TimeoutError:
            if not pending.done():
                raise TimeoutError(f"no answer in {timeout_s:g} s") from None
            value = pending.result()  # it ended just as the wait did
        with self._lock:
            if self._pending is pending:
                self._pending = None
        return value


def _on_thread(make: Callable[[], T]) -> Future[T]:
    made: Future[T] = Future()
    made.set_running_or_notify_cancel()

    def run() -> None:
        try:
            made.set_result(make())
        except BaseException as exc:
            made.set_exception(exc)

    threading.Thread(target=run, name="genroute-chroma-connect", daemon=True).start()
    return made
