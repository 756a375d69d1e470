"""Writing a loopback server's response on the socket: a JSON body, an SSE stream, or a connection cut or reset
part way (the faults a client must survive)."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from genroute.testing.replies import Response


#: The reason phrases CPython 3.13 renamed (RFC 9110), as 3.11 and 3.12 send them: the loopback servers' status
#: lines, which an error without a JSON body is reported by, read the same on every Python.
REASONS = {413: "Request Entity Too Large", 414: "Request-URI Too Long", 416: "Requested Range Not Satisfiable",
           422: "Unprocessable Entity"}


def encode(item: Any) -> bytes:
    """A body or an event as bytes: bytes as they are, anything else as compact JSON."""
    if isinstance(item, bytes):
        return item
    return json.dumps(item, separators=(",", ":")).encode("utf-8")


def send(h: BaseHTTPRequestHandler, response: Response, *, cut_after: int | None = None,
         stall: tuple[int, Callable[[], object]] | None = None) -> None:
    """Write ``response``; ``cut_after`` drops the connection after that many events (or a partial body);
    ``stall`` (events, wait) calls ``wait`` after that many events of a stream."""
    try:
        h.send_response(response.status, REASONS.get(response.status))
        for key, value in response.headers.items():
            h.send_header(key, value)
        if response.events is None:
            data = encode(response.body if response.body is not None else {})
            if not any(key.lower() == "content-type" for key in response.headers):  # a scripted one stands
                h.send_header("Content-Type", "application/json; charset=UTF-8")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if cut_after is not None:  # that many bytes, but never the whole body: it must look cut
                h.wfile.write(data[: max(1, min(cut_after, len(data) - 1))])
                drop(h)
                return
            h.wfile.write(data)
            return
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for index, event in enumerate(response.events):
            if cut_after is not None and index >= cut_after:
                drop(h)
                return
            if stall is not None and index == stall[0]:
                stall[1]()
            frame = b"data: " + encode(event) + b"\r\n\r\n"
            h.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            h.wfile.flush()
        if cut_after is not None:
            drop(h)
            return
        h.wfile.write(b"0\r\n\r\n")
    except OSError:  # the client went away (e.g. its timeout fired during a delay fault)
        h.close_connection = True


def drop(h: BaseHTTPRequestHandler) -> None:
    """End the connection mid-body: the client must see an incomplete response, not a short one."""
    h.wfile.flush()
    h.close_connection = True
    try:
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def reset(h: BaseHTTPRequestHandler) -> None:
    """Close with SO_LINGER 0 so the peer gets a TCP RST."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass
