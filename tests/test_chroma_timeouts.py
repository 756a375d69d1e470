"""Time bounds on a Chroma server's calls: a stalled server leaves nothing open, and chromadb's layout is pinned."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from genroute.errors import BackendUnavailable
from genroute.knowledge import chroma_timeouts
from genroute.knowledge.store import KnowledgeStore
from genroute.knowledge.store_config import StoreConfig

from .chroma_fixtures import ChromaServer, chroma_server  # noqa: F401

# Accepts every connection and never answers: what a stopped or wedged `chroma run` looks like to a client.
_STALLED = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(100)
print(srv.getsockname()[1], flush=True)
held = []
while True:
    held.append(srv.accept()[0])
"""


@pytest.fixture
def stalled_port() -> Iterator[int]:
    # In another process, so the sockets it holds are not counted as this process's.
    server = subprocess.Popen([sys.executable, "-c", _STALLED], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline())
    finally:
        server.kill()
        server.wait()


def _settled() -> tuple[set[threading.Thread], Counter[str]]:
    """Live threads and what each open fd points at, once the connect attempts given up on have ended (each ends at
    its own timeout). Sets, not counts: threads of earlier tests that end, and their objects collected here (fds
    closing), mid-test, must not hide a thread or socket this test leaves (a socket's target names its own inode)."""
    for thread in threading.enumerate():
        if thread.name == "genroute-chroma-connect":
            thread.join(timeout=60)
    gc.collect()  # fds of earlier tests' objects awaiting collection would otherwise close mid-test
    fds = Counter[str]()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[os.readlink(f"/proc/self/fd/{fd}")] += 1
        except OSError:  # the directory's own fd, closed by now
            pass
    return {t for t in threading.enumerate() if t.is_alive()}, fds


def _fail_to_open(store: KnowledgeStore) -> None:
    with pytest.raises(BackendUnavailable, match="no answer in 0.3 s"):
        store.client()


def test_failed_connects_to_a_stalled_server_leave_no_thread_or_socket(stalled_port: int) -> None:
    config = StoreConfig(host="127.0.0.1", port=stalled_port, timeout_s=0.3)
    _fail_to_open(KnowledgeStore(config))
    before = _settled()
    for _ in range(3):
        _fail_to_open(KnowledgeStore(config))  # a Router.from_config retried
    same = KnowledgeStore(config)
    for _ in range(3):
        _fail_to_open(same)  # a lazy client() asked again
    threads, fds = _settled()
    # Each was 1 thread and 2 fds (sockets) more, for good. What ended or closed meanwhile was an earlier test's.
    assert not threads - before[0] and not fds - before[1], (threads - before[0], fds - before[1])


@pytest.mark.chroma_server
def test_chromadb_keeps_the_layout_the_timeouts_rely_on(chroma_server: ChromaServer) -> None:
    # chromadb's HTTP session is private: an upgrade that moves it fails here, not in a user's build (where it
    # would degrade to a per-call wait_for, with a warning).
    from chromadb.api.client import Client
    from chromadb.config import Settings

    assert callable(Client.get_user_identity) and callable(Client._validate_tenant_database)  # the constructor's
    client = chroma_timeouts.http_client(host=chroma_server.host, port=chroma_server.port, ssl=False, headers=None,
                                         settings=Settings(anonymized_telemetry=False), tenant="default_tenant",
                                         database="default_database", timeout_s=7.0)
    for session in (client._server._session, client._admin_client._server._session):
        assert isinstance(session, httpx.Client) and session.timeout == httpx.Timeout(7.0)
    assert chroma_timeouts.bound_requests(client, 7.0)
    store = KnowledgeStore(StoreConfig(host=chroma_server.host, port=chroma_server.port, timeout_s=7.0))
    assert asyncio.run(store.collections()) is not None and store._wait_s is None  # no per-call fallback needed


def test_a_client_without_the_session_degrades_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    class OtherLayout:
        pass

    chroma_timeouts._warned.clear()
    with caplog.at_level(logging.WARNING, logger="genroute.knowledge.chroma_timeouts"):
        assert chroma_timeouts.bound_requests(OtherLayout(), 1.0) is False  # not a ConfigError: the router builds
        assert chroma_timeouts.bound_requests(OtherLayout(), 1.0) is False
    assert len([r for r in caplog.records if "knowledge.timeout_s" in r.getMessage()]) == 1


def test_without_a_session_timeout_each_call_is_bounded_by_the_store(stalled_port: int) -> None:
    store = KnowledgeStore(StoreConfig(host="127.0.0.1", port=stalled_port, timeout_s=0.3))
    store._wait_s = 0.3  # what _open sets when bound_requests found no session
    release = threading.Event()

    async def call() -> None:
        try:
            await store._run(release.wait)
        finally:
            release.set()  # the worker thread stays blocked until then

    with pytest.raises(BackendUnavailable, match="no answer in 0.3 s"):
        asyncio.run(call())
