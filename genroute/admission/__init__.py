"""Admission: what the executor checks before each rung attempt and settles after it.

A ``Gate`` is one kind of check — a budget (provided by a budget policy), a rate limit, a circuit breaker.
``Admission`` runs the router's gates around every attempt (a rung, a shadow run, a judge's call)::

    attempt = await admission.enter(request, decision, backend, deadline, span)  # may raise; nothing sent
    ... the backend runs ...
    await admission.exit(attempt, Outcome(cost_usd, input_tokens, error))       # always, even if cancelled

``genroute.router.attempt.AdmittedAttempt`` is that path; ``cost_usd`` is whatever the attempt's run context
reports (the provider's usage, or genroute's estimate for a call that failed, timed out or was cut).

Gates keep their counts in a ``StateStore`` (process memory or Redis), so the same code enforces a limit in
one process or across many. A gate that refuses raises a typed error (``BudgetExceeded``, ``RateLimited``,
``CircuitOpen``) and the gates already entered are exited with nothing spent. Policies stay pure: what they
may read of this state (budget left, open breakers) is handed to them in their ``PolicyContext``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

if TYPE_CHECKING:
    from genroute.state import StateStore
    from genroute.types import Decision, GenerateRequest


#: A hold lapses this long after its request's deadline (the attempt is over by then, or was killed).
HOLD_MARGIN_S = 2.0
#: How long a hold lives when its request has no deadline.
DEFAULT_HOLD_TTL_S = 600.0


def hold_ttl_s(deadline: float | None) -> float:
    """How long a hold taken now for a request with ``deadline`` (``time.monotonic()``) may live."""
    if deadline is None:
        return DEFAULT_HOLD_TTL_S
    return max(0.0, deadline - time.monotonic()) + HOLD_MARGIN_S


@dataclass
class Attempt:
    """One attempt as the gates see it; ``tokens`` holds what each gate's ``enter`` returned."""

    request: GenerateRequest
    decision: Decision
    backend: str
    #: ``time.monotonic()`` by which the request must be answered (None: no deadline).
    deadline: float | None
    span: trace.Span
    tokens: list[Any] = field(default_factory=list)
    #: Seconds spent waiting for a rate limit.
    waited_s: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, for ``Gate.exit``: its cost (whatever produced the figure) and error."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    error: BaseException | None = None
    #: False when the attempt never reached the backend (a later gate refused it).
    sent: bool = True


class Gate(ABC):
    """One admission check around every attempt; ``enter`` may wait or refuse, ``exit`` always runs."""

    @abstractmethod
    async def enter(self, attempt: Attempt) -> Any:
        """Admit ``attempt`` (returning a token for ``exit``) or raise a typed refusal."""

    @abstractmethod
    async def exit(self, attempt: Attempt, token: Any, outcome: Outcome) -> None:
        """Settle what ``enter`` held, at the attempt's real (or estimated) cost."""


class Instruments:
    """The admission metrics (created once per router from its meter)."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.wait = meter.create_histogram("genroute.ratelimit.wait_s", unit="s",
                                           description="Time requests waited for a rate limit")
        self.limited = meter.create_counter("genroute.ratelimit.limited", unit="{request}",
                                            description="Attempts refused by a rate limit (fell through)")
        self.opens = meter.create_counter("genroute.breaker.opens", unit="{open}",
                                          description="Circuit breakers opened")
        self.fallbacks = meter.create_counter("genroute.state.fallbacks", unit="{call}",
                                              description="State store calls answered from process memory "
                                                          "because the shared store was unreachable")


class Admission:
    """The router's gates, entered in order before an attempt and exited in reverse after it."""

    def __init__(self, gates: Sequence[Gate], store: StateStore, instruments: Instruments) -> None:
        self.gates = tuple(gates)
        self.store = store
        self.instruments = instruments
        store.on_fallback = lambda op: instruments.fallbacks.add(1, {"genroute.state.operation": op})

    def budget(self, field: str = "policy") -> Any:
        """The gate of the budget policy at config path ``field`` (``usage(key)`` reads its spend)."""
        for gate in self.gates:
            if getattr(gate, "field", None) == field:
                return gate
        raise KeyError(f"no budget at {field!r}")

    async def context(self, request: GenerateRequest, context: Any) -> Any:
        """``context`` (a ``PolicyContext``) with the state its policy reads: each budget's view."""
        budgets = {gate.field: await gate.view(request) for gate in self.gates if hasattr(gate, "view")}
        return dataclasses.replace(context, budgets=budgets)

    async def enter(self, request: GenerateRequest, decision: Decision, backend: str, deadline: float | None,
                    span: trace.Span) -> Attempt:
        """Pass every gate or raise the first refusal (after releasing what earlier gates held)."""
        attempt = Attempt(request, decision, backend, deadline, span)
        for gate in self.gates:
            try:
                attempt.tokens.append(await gate.enter(attempt))
            except BaseException:
                await self._exit(attempt, Outcome(sent=False))
                self._mark(attempt)
                raise
        self._mark(attempt)
        return attempt

    async def exit(self, attempt: Attempt, outcome: Outcome) -> None:
        """Settle every gate the attempt entered."""
        await self._exit(attempt, outcome)
        self._mark(attempt)

    async def _exit(self, attempt: Attempt, outcome: Outcome) -> None:
        entered = list(zip(self.gates, attempt.tokens, strict=False))
        attempt.tokens.clear()
        if self.store.remote and len(entered) > 1:  # settles are independent: one round trip's wait, not several
            results = await asyncio.gather(*(gate.exit(attempt, token, outcome) for gate, token in entered),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
        else:
            errors = []
            for gate, token in reversed(entered):
                try:
                    await gate.exit(attempt, token, outcome)
                except BaseException as exc:  # every gate settles even if one fails (e.g. store closed mid-way)
                    errors.append(exc)
        if errors:
            raise errors[0]

    def _mark(self, attempt: Attempt) -> None:
        if self.store.degraded and attempt.span.is_recording():
            attempt.span.set_attribute("genroute.state.fallback", True)


__all__ = ["Admission", "Attempt", "Gate", "Instruments", "Outcome", "hold_ttl_s"]
