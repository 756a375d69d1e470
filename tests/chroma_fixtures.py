"""Chroma in both modes for knowledge tests: an embedded store in a temp dir, or a real `chroma run` server.

Import the fixtures into a test module (``from .chroma_fixtures import chroma_server, knowledge  # noqa``);
``knowledge`` is parametrized over both modes, the server one marked ``chroma_server``; ``chroma_proxy``
sits in front of the server and can answer chosen requests with an error.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .server_ports import free_port, start_server

_names = itertools.count()


@dataclass
class ChromaServer:
    """A running `chroma run` process."""

    host: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]


def server_required() -> bool:
    """Whether a missing ``chroma`` CLI fails the server tests (CI, or GENROUTE_REQUIRE_CHROMA_SERVER=1)."""
    return bool(os.environ.get("CI")) or os.environ.get("GENROUTE_REQUIRE_CHROMA_SERVER") == "1"


def _chroma_cli() -> str:
    # The venv's own CLI first: a `chroma` elsewhere on PATH may be another Chroma version.
    beside = Path(sys.executable).with_name("chroma")
    found = str(beside) if beside.exists() else shutil.which("chroma")
    if found is None:
        message = "the chroma CLI is not installed (pip install chromadb), so server mode is untested"
        if server_required():
            pytest.fail(message + " (CI or GENROUTE_REQUIRE_CHROMA_SERVER=1 requires it)")
        pytest.skip(message)
    return found


def start_chroma(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``chroma run`` on ``port`` with its data in ``data`` and its log appended to ``log``, once it answers (it, not
    another process that took the port while it was down: ``server_ports.start_server``)."""
    command = [_chroma_cli(), "run", "--path", str(data), "--port", str(port), "--host", "127.0.0.1"]

    def spawn() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1):
                return True
        except OSError:
            return False

    return start_server(spawn, answers, port=port, what="chroma run", log=log, wait_s=60)


def stop_chroma(process: subprocess.Popen[bytes]) -> None:
    """Stop a ``chroma run`` as Ctrl-C does (killed if it takes over 15 s)."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A real Chroma server on a free loopback port, data in a temp dir, log to a file; stopped at the end."""
    root = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = root / "chroma.log"
    process = start_chroma(root / "data", port, log)
    try:
        yield ChromaServer("127.0.0.1", port, log, process)
    finally:
        stop_chroma(process)


class ChromaFaultProxy:
    """A loopback HTTP proxy in front of a real Chroma server that answers chosen requests with an error.

    Only the wire is faked: the Chroma client, its error parsing and genroute's mapping all run for real.
    """

    def __init__(self, upstream: ChromaServer) -> None:
        self.upstream = upstream
        self.faults: list[tuple[re.Pattern[str], int, bytes]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._take(self.path)
                if fault is not None:
                    status, data, ctype = fault[1], fault[2], "application/json"
                else:
                    conn = http.client.HTTPConnection(upstream.host, upstream.port, timeout=30)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    answer = conn.getresponse()
                    status, data = answer.status, answer.read()
                    ctype = answer.getheader("Content-Type") or "application/json"
                    conn.close()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def fail(self, status: int, body: Any, *, path: str = ".*") -> None:
        """Answer the next request whose path matches ``path`` with ``status`` and ``body`` (JSON unless bytes)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self.lock:
            self.faults.append((re.compile(path), status, data))

    def _take(self, path: str) -> tuple[re.Pattern[str], int, bytes] | None:
        with self.lock:
            for n, fault in enumerate(self.faults):
                if fault[0].search(path):
                    return self.faults.pop(n)
        return None

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chroma_proxy(chroma_server: ChromaServer) -> Iterator[ChromaFaultProxy]:
    """A fault-injecting proxy in front of the session's Chroma server."""
    proxy = ChromaFaultProxy(chroma_server)
    try:
        yield proxy
    finally:
        proxy.close()


@dataclass
class Knowledge:
    """One test's knowledge: the ``knowledge:`` config section and a collection name unique to the test."""

    mode: str
    config: dict[str, Any]

    def name(self, base: str) -> str:
        """A collection name unique across the session (the server is shared by all tests)."""
        return f"{base}-{os.getpid()}-{next(_names)}"

    def store(self, **extra: Any) -> Any:
        from genroute.knowledge import build_store

        return build_store({**self.config, **extra}, engines={})


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.chroma_server)])
def knowledge(request: pytest.FixtureRequest, tmp_path: Path) -> Knowledge:
    """Knowledge config for an embedded store in ``tmp_path``, or for the session's Chroma server."""
    if request.param == "embedded":
        return Knowledge("embedded", {"path": str(tmp_path / "chroma")})
    server: ChromaServer = request.getfixturevalue("chroma_server")
    return Knowledge("server", {"host": server.host, "port": server.port})
