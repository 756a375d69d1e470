"""Faults the loopback server injects instead of (or in the middle of) a normal reply."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from genroute.bounds import is_real, is_whole
from genroute.errors import UsageError

FaultKind = Literal["status", "delay", "malformed_json", "cut_stream", "reset"]


@dataclass(frozen=True)
class Fault:
    """One injected failure; build it with the class methods, queue it with ``server.fault(...)``."""

    kind: FaultKind
    code: int = 0
    retry_after: float | None = None
    message: str | None = None
    seconds: float = 0.0
    after_chunks: int | None = None

    def __post_init__(self) -> None:
        # Checked when made: a bad one failed inside the server's thread, as a 500 or a dropped connection the test
        # then read as the client's bug.
        if self.kind not in get_args(FaultKind):
            raise UsageError(f"unknown fault kind {self.kind!r}", field="kind")
        if not is_whole(self.code) or not (self.code == 0 or 100 <= self.code <= 599):
            raise UsageError(f"must be an HTTP status from 100 to 599, got {self.code!r}", field="code")
        for name, value in (("seconds", self.seconds), ("retry_after", self.retry_after)):
            if value is not None and (not is_real(value) or not math.isfinite(value) or value < 0):
                raise UsageError(f"must be a finite number of seconds >= 0, got {value!r}", field=name)
        if self.after_chunks is not None and (not is_whole(self.after_chunks) or self.after_chunks < 0):
            raise UsageError(f"must be a whole number >= 0, got {self.after_chunks!r}", field="after_chunks")
        if self.message is not None and not isinstance(self.message, str):
            raise UsageError(f"must be text, not {type(self.message).__name__}", field="message")

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: float | None = None,
        message: str | None = None,
        after_chunks: int | None = None,
    ) -> Fault:
        """An HTTP error with a Google-style error body.

        ``retry_after`` sets a ``google.rpc.RetryInfo`` detail (``retryDelay``, e.g. ``"0.5s"``) and, when it is
        whole seconds (the only form HTTP allows), the ``Retry-After`` header.
        ``after_chunks`` (streams only) sends that many normal SSE events first, then an
        ``{"error": ...}`` event, as the API does when a stream fails mid-way.
        """
        return cls("status", code=code, retry_after=retry_after, message=message, after_chunks=after_chunks)

    @classmethod
    def delay(cls, seconds: float, *, after_chunks: int | None = None) -> Fault:
        """Sleep ``seconds`` before answering normally (a slow server; the reply is consumed).

        ``after_chunks`` (streams only): send that many SSE events first, then stall ``seconds`` before the rest
        (a stream that stops mid-way and resumes, unless the client gave up first).
        """
        return cls("delay", seconds=seconds, after_chunks=after_chunks)

    @classmethod
    def malformed_json(cls, status: int = 200) -> Fault:
        """Answer 200 with a body (or an SSE event) that is not valid JSON; another ``status`` (an error) answers
        it with a JSON error body cut short, as a proxy in front of the API may."""
        return cls("malformed_json", code=status)

    @classmethod
    def cut_stream(cls, after_chunks: int = 1) -> Fault:
        """Send ``after_chunks`` events (or bytes of a plain body, at least one and never all), then drop the
        connection.

        Each event sent carries the usage so far, so the client holds the usage of ``after_chunks`` chunks.
        """
        return cls("cut_stream", after_chunks=after_chunks)

    @classmethod
    def reset(cls) -> Fault:
        """Read the request, then reset the TCP connection without answering."""
        return cls("reset")
