"""One request's scope: its validated input, its root span with the decision on it, and its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from opentelemetry.trace import Status, StatusCode
from pydantic import ValidationError

from genroute.errors import (
    AllRungsFailed, BackendError, BackendUnavailable, GenrouteError, StreamInterrupted, ToolLoopExceeded, UsageError,
)
from genroute.config_errors import pydantic_validated, validator_message
from genroute.construct import builder
from genroute.router.ledger import Ledger
from genroute.router.output_headroom import refuse_unbounded_output
from genroute.runtime.billing import Charges, charging
from genroute.runtime.deadlines import deadline_at
from genroute.runtime.embeddings import RequestEmbeddings, remembering
from genroute.runtime.telemetry import CurrentSpan, Telemetry
from genroute.types import Decision, GenerateRequest, invalid_text

if TYPE_CHECKING:
    from genroute.admission import Admission


T = TypeVar("T")

#: A request of only its text, as ``GenerateRequest(input=...)`` builds it (its other fields defaults, not set).
_text_request = builder(GenerateRequest, given=("input",))


class Routing(Protocol):
    """What ``parse_request`` reads of the router: its backends, and its gates (a budget refuses a request that
    clears its backend's output limit)."""

    @property
    def backends(self) -> Mapping[str, Any]: ...

    @property
    def _gated(self) -> Admission | None: ...


def parse_request(input: str | GenerateRequest | None, fields: Mapping[str, Any], router: Routing) -> GenerateRequest:
    """The request the public entry points were given, validated; ``UsageError`` names the bad field."""
    # What validation accepts as it is is not validated again: a non-blank text that encodes (no lone surrogate).
    if type(input) is str and not fields and input.strip() and (input.isascii() or invalid_text(input, "") is None):
        return _text_request(input=input, task=None, backend=None, variables={}, metadata={}, key=None,
                             timeout_s=None, generation=None, history=None)
    if isinstance(input, GenerateRequest):
        if fields:
            raise UsageError(f"pass either a GenerateRequest or fields, not both ({', '.join(fields)})",
                             field=next(iter(fields)))
        request = input
    else:
        if input is not None and "input" in fields:
            raise UsageError("input given both positionally and as a keyword", field="input")
        try:
            given = {"input": input, **fields} if input is not None else {**fields}
            request = pydantic_validated(GenerateRequest, given)
        except ValidationError as exc:
            error = exc.errors()[0]
            # A bad mapping key is reported at a location part "[key]": the field is the mapping entry itself.
            field = ".".join(str(p) for p in error["loc"] if p != "[key]") or None
            raise UsageError(validator_message(error), field=field) from None
    backends = router.backends
    if request.backend is not None and request.backend not in backends:
        raise UsageError(f"unknown backend {request.backend!r} (known: {', '.join(sorted(backends))})",
                         field="backend")
    if request.generation is not None:  # a text's request (above) has none: the hot path checks nothing more
        refuse_unbounded_output(request.generation, router._gated)  # noqa: SLF001 - the router's, read as it decides
    return request


#: What a decision that cannot cost anything cost (never entered with ``charging``, so never written).
_NO_CHARGES = Charges()


class RootSpan(CurrentSpan):
    """The ``genroute.generate`` span: ``decide`` runs inside it and the decision is recorded on it."""

    __slots__ = ("request", "timeout_s", "decide", "costed", "start", "ledger")

    def __init__(self, telemetry: Telemetry, request: GenerateRequest, timeout_s: float | None,
                 decide: Callable[[GenerateRequest, float | None], Awaitable[Decision]], *, costed: bool = True,
                 same_context: bool = False) -> None:
        # same_context: entered and left by one coroutine (``agenerate``), never across a stream's yields.
        super().__init__(telemetry.tracer, "genroute.generate", same_context=same_context)
        self.request = request
        self.timeout_s = timeout_s
        self.decide: Callable[[GenerateRequest, float | None], Awaitable[Decision]] | None = decide
        #: Whether deciding may cost something (a policy that embeds the request); else nothing is collected.
        self.costed = costed

    async def __aenter__(self) -> tuple[Any, Decision, float, float | None, Ledger]:
        request = self.request
        decide = self.decide
        assert decide is not None, "a RootSpan is entered once"
        self.decide = None  # used once: a request in flight does not hold it
        self.start = time.perf_counter()
        span = self.__enter__()
        # The deadline starts before the policy decides: a slow decision spends the request's time too.
        timeout = request.timeout_s or self.timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        charges = Charges() if self.costed else _NO_CHARGES
        try:
            if self.costed:
                # The decision embeds the request (semantic routing); a rung retrieving for it reuses that vector.
                with charging(charges), remembering(embeddings := RequestEmbeddings()):
                    decision = await decide(request, deadline)
            else:
                decision = await decide(request, deadline)
        except BaseException as exc:
            # The error carries what deciding cost (an embedding; else nothing), as every failed request's does.
            ledger = Ledger()
            ledger.add_charges(charges)
            ledger.charge(exc, span)
            self._end(exc)
            raise
        if span.is_recording():
            attrs: dict[str, Any] = {"genroute.policy": decision.policy, "genroute.reason": decision.reason}
            if len(decision.rungs) > 1:  # a ladder: the rungs in order (one rung is genroute.backend)
                attrs["genroute.rungs"] = [r.backend for r in decision.rungs]
            if request.task:
                attrs["genroute.task"] = request.task
            span.set_attributes(attrs)
        # The request's ledger starts with what deciding cost (where it can cost anything); the rungs add theirs.
        ledger = self.ledger = Ledger()
        if self.costed:
            ledger.add_charges(charges)
            ledger.embeddings = embeddings
        return span, decision, self.start, deadline, ledger

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.__exit__(None, None, None)
            return
        # Whatever ended the request carries what it cost (a cancellation, for close to pass on).
        self.ledger.charge(exc)
        self._end(exc)

    def _end(self, exc: BaseException) -> None:
        """End the span of a request that ``exc`` ended; ``exc`` (a genroute error, or a cancellation that ``close``
        turns into one: ``carrying_cost``) carries the trace id, as a result does, for the caller to find the trace."""
        context = self.span.get_span_context()
        if context.is_valid and isinstance(exc, GenrouteError | asyncio.CancelledError):
            vars(exc)["trace_id"] = format(context.trace_id, "032x")
        if type(exc) is GeneratorExit:  # the caller stopped reading a stream: its choice, not a failure
            self.span.set_attribute("genroute.stream.closed_early", True)
        else:
            kind = type(exc).__name__
            self.span.set_attribute("error.type", kind)
            self.span.set_status(Status(StatusCode.ERROR, kind))
            if not isinstance(exc, GenrouteError):
                self.span.record_exception(exc)
        self.__exit__(None, None, None)


#: An engine bounds its attempts by the time left and its timer may fire a hair before the router's would.
_DEADLINE_SLACK_S = 0.05


def ended_by(deadline: float | None, exc: BackendError) -> bool:
    """Whether the request's deadline, not the backend, ended it: ``exc`` came at (or past) the deadline.

    A stream cut after its first chunk stays ``StreamInterrupted`` and a tool loop ``ToolLoopExceeded``: the
    caller must know that output was sent, or which tools ran.
    """
    if deadline is None or isinstance(exc, StreamInterrupted | ToolLoopExceeded):
        return False
    # Retries that stopped because no attempt could finish in time say so (they stop up to a backoff early).
    last = exc.__cause__ if isinstance(exc, AllRungsFailed) else exc
    return ((isinstance(last, BackendUnavailable) and last.out_of_time)
            or time.monotonic() >= deadline - _DEADLINE_SLACK_S)


async def within_deadline(items: AsyncIterator[T], deadline: float | None,
                          expired: Callable[[bool], GenrouteError]) -> AsyncGenerator[T, None]:
    """``items`` (a stream's steps), each step bounded by ``deadline``; at its expiry ``expired(sent)`` is raised
    (``sent``: an item was yielded before).

    The timer runs only while a step runs, never across a yield: the consumer's own time between items is neither
    cancelled nor counted (the deadline moves on by that time), so the deadline bounds the time spent producing.
    """
    sent = False
    while True:
        try:
            with deadline_at(deadline) as block:  # no deadline: no timer
                item = await anext(items)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if not block.expired():  # a backend's or a validator's own TimeoutError: not the request's deadline
                raise
            raise expired(sent) from None
        held = time.monotonic()
        yield item
        sent = True
        if deadline is not None:
            deadline += time.monotonic() - held
