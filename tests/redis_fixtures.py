"""A real ``redis-server`` for shared-state tests, on a free loopback port, started and stopped by a fixture.

Import into a test module (``from .redis_fixtures import redis_server  # noqa: F401``). Without
``redis-server`` on PATH the tests skip, unless CI or ``GENROUTE_REQUIRE_REDIS=1`` requires it: then they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import pytest

from .server_ports import free_port, start_server


def redis_required() -> bool:
    """Whether a missing ``redis-server`` fails the tests (CI, or GENROUTE_REQUIRE_REDIS=1)."""
    return bool(os.environ.get("CI")) or os.environ.get("GENROUTE_REQUIRE_REDIS") == "1"


@dataclass
class RedisServer:
    """A running ``redis-server`` process (no persistence: a restart starts empty; with ``data_dir``, every write is
    in its append-only file before the reply, so even a killed server restarts with all it answered)."""

    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    #: More options for ``redis-server`` (``--requirepass``, ``--unixsocket``...).
    options: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) on its port and wait until it answers PING. Another process that took the port
        while it was down is waited out, never taken for it (``server_ports.start_server``)."""
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed (scripts/install.sh installs it with apt-get)"
            if redis_required():
                pytest.fail(message + " (CI or GENROUTE_REQUIRE_REDIS=1 requires it)")
            pytest.skip(message)
        persist = ["--appendonly", "no"] if self.data_dir is None else \
            ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persist,
                   "--protected-mode", "no", *self.options]

        def spawn() -> subprocess.Popen[bytes]:
            with self.log.open("ab") as out:
                return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

        self.process = start_server(spawn, self.ping, port=self.port, what="redis-server", log=self.log, wait_s=20)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL; ``kill``: SIGKILL at once)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # a server with a password answers too
        except OSError:
            return False

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis, emptied for this test (restarted first if a test stopped it)."""
    if redis_session.process is None or redis_session.process.poll() is not None:
        redis_session.start()
    redis_session.flush()
    yield redis_session


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A router's ``state`` section: process memory, then the test's Redis (a test runs with each)."""
    if request.param == "memory":
        return {"kind": "memory"}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"kind": "redis", "url": server.url, "prefix": f"s{time.monotonic_ns()}:"}
