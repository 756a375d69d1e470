"""The one path of every attempt — a rung, a shadow run, a judge's call: admission in, the backend, admission out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from genroute.admission import Outcome

if TYPE_CHECKING:
    from opentelemetry import trace

    from genroute.admission import Admission
    from genroute.runtime.context import RunContext
    from genroute.types import Decision, GenerateRequest

_log = logging.getLogger(__name__)


class AdmittedAttempt:
    """The one admission path of every attempt (rung, shadow, judge): enter the gates, run, settle.

    ``async with`` enters the router's admission gates (a refusal raises before anything is sent, with
    ``admitted`` still False) and, however the body ends (answer, error, cancellation, a stream closed
    early), exits them with the cost the attempt's ``RunContext`` reports: that figure, whatever produced it
    (usage the provider reported or an estimate for a failed or cut call), is what budgets and token rate
    limits settle at.
    """

    __slots__ = ("admission", "request", "decision", "backend", "ctx", "span", "stream", "admitted", "_ticket")

    def __init__(self, admission: Admission | None, request: GenerateRequest, decision: Decision, backend: str,
                 ctx: RunContext, span: trace.Span, stream: bool = False) -> None:
        self.admission, self.request, self.decision, self.backend = admission, request, decision, backend
        self.ctx, self.span, self.stream = ctx, span, stream
        self.admitted = False
        self._ticket: Any = None

    async def __aenter__(self) -> AdmittedAttempt:
        admission = self.admission
        if admission is not None:
            self._ticket = await admission.enter(self.request, self.decision, self.backend, self.ctx.deadline,
                                                 self.span, stream=self.stream)
        self.admitted = True
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._ticket is None:
            return
        ticket, self._ticket = self._ticket, None
        # A stream's reader moved the deadline on as it held chunks: an attempt it stops past the first deadline was
        # not cut by it (a breaker counts only that as a failure).
        ticket.deadline = self.ctx.deadline
        outcome = Outcome(cost_usd=self.ctx.cost_usd, input_tokens=self.ctx.usage.input_tokens, error=exc)
        try:
            await self.admission.exit(ticket, outcome)  # type: ignore[union-attr]
        except Exception as error:  # the answer stands; an unsettled hold lapses, charged at its estimate
            _log.warning("could not settle admission for %r: %s: %s", self.backend, type(error).__name__, error)


class _Ungated:
    """The attempt of a router without gates: nothing to enter or settle (one shared object, holding nothing)."""

    __slots__ = ()

    #: Nothing can refuse it.
    admitted = True

    async def __aenter__(self) -> _Ungated:
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        return None


_UNGATED = _Ungated()


def admitted(admission: Admission | None, request: GenerateRequest, decision: Decision, backend: str,
             ctx: RunContext, span: trace.Span, stream: bool = False) -> AdmittedAttempt | _Ungated:
    """The attempt to ``async with`` around a run of ``backend``: through the router's gates, or (a router
    without any) one that enters and settles nothing, built once for all. ``stream``: it streams to a reader."""
    if admission is None:
        return _UNGATED
    return AdmittedAttempt(admission, request, decision, backend, ctx, span, stream)
