"""Loopback ports for the test servers (``redis-server``, ``chroma run``), and whose listener is on one.

A server restarted on its port (its clients were built for that port) races every other process on a shared machine:
one may take the port while the server is down. Then the restarted server cannot bind, and, worse, whatever answers
there (another run's Redis or Chroma) would pass for it. ``ours`` tells them apart; ``wait_free`` waits for a taken port
to come free, and fails the test clearly when it does not.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

#: How long a restart waits for its port, taken by another process, to come free.
PORT_WAIT_S = 20.0
#: How many times a start that lost its port to another process is made again.
STARTS = 5
#: What ``redis-server`` and ``chroma run`` log when their port is taken.
_TAKEN = re.compile(r"Address already in use|Address \S+ is not available")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:``port`` now (as servers do, with SO_REUSEADDR: no one listens there)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_free(port: int, what: str) -> None:
    """Return once 127.0.0.1:``port`` is free; fail the test naming ``what`` if it stays taken ``PORT_WAIT_S``."""
    deadline = time.monotonic() + PORT_WAIT_S
    while not is_free(port):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} cannot start on port {port}: another process has listened there for "
                        f"{PORT_WAIT_S:g} s (its clients point at that port)")
        time.sleep(0.1)


def _listening_inodes(port: int) -> set[str] | None:
    """The socket inodes listening on ``port`` (any address), None where ``/proc/net`` is not there to say."""
    found: set[str] = set()
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return None
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(fields[9])
    return found


def ours(pid: int, port: int) -> bool:
    """Whether the listener on ``port`` is process ``pid``'s (True where ``/proc`` cannot tell: other systems)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return True
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # it exited meanwhile
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in wanted:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def start_server(spawn: Callable[[], subprocess.Popen[bytes]], answers: Callable[[], bool], *, port: int, what: str,
                 log: Path, wait_s: float) -> subprocess.Popen[bytes]:
    """``spawn()`` a server for ``port`` and return it once ``answers()`` and the listener there is its own.

    A port another process holds is waited for (``wait_free``); a start that lost it to another process in between is
    made again (up to ``STARTS`` times). Anything else fails the test (never a skip), with the tail of ``log``."""
    for _ in range(STARTS):
        wait_free(port, what)
        written = log.stat().st_size if log.exists() else 0
        process = spawn()
        try:
            deadline = time.monotonic() + wait_s
            while True:
                if answers() and ours(process.pid, port):  # whatever else answers there is not this server
                    return process
                if process.poll() is not None:
                    said = log.read_bytes()[written:].decode(errors="replace")
                    if _TAKEN.search(said) or not is_free(port):
                        break  # another process took the port: once it is free again, start again
                    pytest.fail(f"{what} exited with {process.returncode}: {said[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{what} did not answer on port {port} in {wait_s:g} s: "
                                f"{log.read_bytes()[written:].decode(errors='replace')[-2000:]}")
                time.sleep(0.05)
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise
    pytest.fail(f"{what} lost port {port} to another process {STARTS} times in a row (its clients point at that port)")
