"""A loopback TCP proxy in front of a real server, for outages that a server restart cannot make.

``partition()`` cuts every connection and refuses new ones (the server keeps running and keeps its data: a
network partition); ``heal()`` lets connections through again. ``cut_reply(n)`` arms a cut of the ``n``-th array
reply from the server from now on (a script's result, for Redis): the server has run the command, the client never
hears of it and sees its connection close, as when a reply is lost on the way back. ``hold_replies()`` keeps the
server's replies from their clients (the server has run the commands) until ``release_replies()``: a slow way back.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target`` on threads, one pair of sockets a connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._down = False
        self._cut_in = 0  # array replies until the cut (0: none armed)
        self._released = threading.Event()  # cleared: replies wait in the proxy
        #: Replies that came while replies were held (each waited in the proxy).
        self.held = 0
        self._released.set()
        #: Replies swallowed by ``cut_reply``.
        self.cuts = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def partition(self) -> None:
        """Close every connection and refuse new ones until ``heal``."""
        with self._lock:  # with the accepting thread's check: no connection opened meanwhile outlives the partition
            self._down = True
            for sock in list(self._open):
                _close(sock)
            self._open.clear()

    def heal(self) -> None:
        with self._lock:
            self._down = False

    def cut_reply(self, n: int = 1) -> None:
        """Swallow the ``n``-th array reply from the server from now on, and close that client's connection."""
        with self._lock:
            self._cut_in = n

    def hold_replies(self) -> None:
        """Keep the server's replies from their clients until ``release_replies``."""
        self._released.clear()

    def release_replies(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release_replies()
        self.partition()
        _close(self._listener)

    def _cutting(self) -> bool:
        with self._lock:
            if self._cut_in == 0:
                return False
            self._cut_in -= 1
            if self._cut_in:
                return False
            self.cuts += 1
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._down:
                _close(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                down = self._down  # partitioned while this connection was being opened
                if not down:
                    self._open.update((client, server))
            if down:
                _close(client)
                _close(server)
                continue
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and data.startswith(b"*") and self._cutting():
                    break
                if replies and not self._released.is_set():
                    with self._lock:
                        self.held += 1
                    self._released.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.difference_update((source, sink))
            _close(source)
            _close(sink)


@contextmanager
def tcp_proxy(target: int) -> Iterator[TcpProxy]:
    """A ``TcpProxy`` to ``target``, closed after the block."""
    proxy = TcpProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
