"""The test servers restarted on their port (``redis-server``, ``chroma run``): another process that took the port while
one was down is waited out, never taken for it, and a port that stays taken fails the test clearly (not a skip)."""

from __future__ import annotations

import contextlib
import socketserver
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import server_ports
from .chroma_fixtures import start_chroma, stop_chroma
from .redis_fixtures import RedisServer
from .server_ports import free_port, ours


@contextlib.contextmanager
def _impostor(port: int, reply: bytes) -> Iterator[threading.Event]:
    """Another process's server on ``port`` (a thread here), answering ``reply`` to anything, until the event is set."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(4096)
            self.request.sendall(reply)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    release = threading.Event()

    def watch() -> None:
        release.wait()
        server.shutdown()
        server.server_close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield release
    finally:
        release.set()
        watcher.join()
        thread.join()


def _redis_pid(port: int) -> int:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def test_a_redis_restarted_while_another_process_holds_its_port_waits_for_it(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "redis.log")
    server.start()
    server.stop()
    try:
        with _impostor(server.port, b"+PONG\r\n") as release:  # answers PING as a Redis would
            threading.Timer(1.0, release.set).start()
            server.start()
        assert server.process is not None and ours(server.process.pid, server.port)
        assert _redis_pid(server.port) == server.process.pid  # the one started, not whatever answered PING
    finally:
        server.stop()


def test_a_port_that_stays_taken_fails_the_restart_naming_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(server_ports, "PORT_WAIT_S", 0.5)
    server = RedisServer(free_port(), tmp_path / "redis.log")
    with _impostor(server.port, b"+PONG\r\n"), pytest.raises(pytest.fail.Exception) as failed:
        server.start()
    assert f"redis-server cannot start on port {server.port}: another process has listened there" in \
        str(failed.value)
    assert server.process is None


@pytest.mark.chroma_server
def test_a_chroma_restarted_while_another_process_holds_its_port_waits_for_it(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "chroma.log"
    heartbeat = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    with _impostor(port, heartbeat) as release:  # answers the heartbeat as a Chroma would
        threading.Timer(1.0, release.set).start()
        process = start_chroma(tmp_path / "data", port, log)
    try:
        assert process.poll() is None and ours(process.pid, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/version", timeout=10) as answer:
            assert answer.read().strip(b'"')[:1].isdigit()  # a version number: a Chroma answered, the one started
    finally:
        stop_chroma(process)
