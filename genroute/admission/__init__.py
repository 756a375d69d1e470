"""Admission: what the executor checks before each rung attempt and settles after it.

A ``Gate`` is one kind of check — a budget (provided by a budget policy), a rate limit, a circuit breaker.
``Admission`` runs the router's gates around every attempt (a rung, a shadow run, a judge's call)::

    attempt = await admission.enter(request, decision, backend, deadline, span)  # may raise; nothing sent
    ... the backend runs ...
    await admission.exit(attempt, Outcome(cost_usd, input_tokens, error))       # always, even if cancelled

Each gate states its checks as state store operations (``genroute.state.ops``), so that an admission is one
store call in and one out, whatever gates take part: with Redis, one Lua script run each way.

``genroute.router.attempt.AdmittedAttempt`` is that path; ``cost_usd`` is whatever the attempt's run context
reports (the provider's usage, or genroute's estimate for a call that failed, timed out or was cut). What a
request costs outside any attempt — the decision's embedding of the request (semantic routing) — is held and
settled the same way, in the gates that count spend (budgets), by ``genroute.router.deciding``::

    reserved = await admission.reserve(request, estimate_usd, deadline)  # may raise BudgetExceeded; nothing held
    ... the policy embeds the request and decides ...
    await admission.spend(request, cost_usd, reserved)                   # once, however deciding ended

Gates keep their counts in a ``StateStore`` (process memory or Redis), so the same code enforces a limit in
one process or across many. A gate that refuses raises a typed error (``BudgetExceeded``, ``RateLimited``,
``CircuitOpen``) and the gates already entered are exited with nothing spent. Policies stay pure: what they
may read of this state (budget left, open breakers) is handed to them in their ``PolicyContext``.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeGuard, TypeVar

from opentelemetry import metrics, trace

from genroute.errors import UsageError
from genroute.runtime.telemetry import instrument

if TYPE_CHECKING:
    from genroute.state import StateStore
    from genroute.state.ops import Claim, Settlement
    from genroute.types import Decision, GenerateRequest


#: A hold lapses this long after its request's deadline (the attempt is over by then, or was killed).
HOLD_MARGIN_S = 2.0
#: How long a hold lives when its request has no deadline.
DEFAULT_HOLD_TTL_S = 600.0
#: The kind of store claim a gate makes (a hold, a breaker probe).
ClaimT = TypeVar("ClaimT", bound="Claim")
#: What ``Admission.reserve`` held: each holding gate with its claims and the store's answers.
Reserved = tuple[tuple["Gate[Any]", Any], ...]


def hold_ttl_s(deadline: float | None, *, stream: bool = False) -> float:
    """How long a hold taken now for a request with ``deadline`` (``time.monotonic()``) may live.

    A streamed attempt's hold lives ``DEFAULT_HOLD_TTL_S`` at least: the time its reader holds each chunk moves its
    deadline on, so a hold lapsing at the first deadline would free budget the stream still spends.
    """
    if deadline is None:
        return DEFAULT_HOLD_TTL_S
    ttl = max(0.0, deadline - time.monotonic()) + HOLD_MARGIN_S
    return max(ttl, DEFAULT_HOLD_TTL_S) if stream else ttl


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
    #: Whether the attempt streams to a reader (whose time between chunks moves ``deadline`` on).
    stream: bool = False
    #: What the request's own ``max_output_tokens`` above the backend's could add to its cost (a budget holds it).
    raised_output_usd: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, for ``Gate.exit``: its cost (whatever produced the figure) and error."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    error: BaseException | None = None
    #: False when the attempt never reached the backend (a later gate refused it).
    sent: bool = True


class Gate(ABC, Generic[ClaimT]):
    """One admission check around every attempt, stated as state store operations.

    Before the attempt, ``claims`` says what it must take from the store (holds, a breaker check); the claims
    of all the router's gates are taken in one atomic ``StateStore.admit`` call, all or none. If one does not
    pass, its gate's ``refused`` raises the typed refusal or waits (then all are claimed again). After the
    attempt, ``settlements`` says what to settle, and all gates' settlements go in one ``StateStore.apply``
    call; ``settled`` reads the answers. ``enter``/``exit`` run one gate alone the same way."""

    store: StateStore

    @abstractmethod
    def claims(self, attempt: Attempt) -> Sequence[ClaimT]:
        """What ``attempt`` must take from the store; may raise a refusal known without asking the store."""

    def admitted(self, attempt: Attempt, claims: Sequence[ClaimT], results: Sequence[Any]) -> Any:
        """The token ``settlements`` will get, from this gate's claims and the store's answers (all passed)."""
        return [(claim, result) for claim, result in zip(claims, results, strict=True)]

    @abstractmethod
    async def refused(self, attempt: Attempt, claim: ClaimT, result: Any) -> None:
        """``claim`` did not pass (nothing is held): raise the typed refusal, or wait and return (claim again)."""

    @abstractmethod
    def settlements(self, attempt: Attempt, token: Any, outcome: Outcome) -> Sequence[Settlement]:
        """What to settle after the attempt, at its real (or estimated) cost."""

    def settled(self, attempt: Attempt, token: Any, outcome: Outcome, results: Sequence[Any]) -> None:
        """The store's answers to ``settlements`` (e.g. a breaker this attempt opened)."""

    def holds(self, request: GenerateRequest, amount_usd: float, deadline: float | None) -> Sequence[ClaimT]:
        """What to hold before ``request`` spends an estimated ``amount_usd`` outside any attempt (its decision's
        embedding): nothing, unless the gate counts spend (a budget). A gate that holds says why it refused in
        ``refusal``."""
        return ()

    def refusal(self, claim: ClaimT, result: Any) -> Exception:
        """The typed error for a claim of ``holds`` that did not pass (nothing is held)."""
        raise NotImplementedError(f"{type(self).__name__} holds spend but does not say why it refused")

    def spent(self, request: GenerateRequest, cost_usd: float, held: Any = None) -> Sequence[Settlement]:
        """What to settle for ``cost_usd`` the request spent outside any attempt (its decision's embedding);
        ``held`` is this gate's claims of ``holds`` with the store's answers (None: nothing was held). Nothing,
        unless the gate counts spend (a budget)."""
        return ()

    async def enter(self, attempt: Attempt) -> Any:
        """Pass this gate alone (``Admission`` passes all of a router's gates in one store call)."""
        return (await enter_gates((self,), self.store, attempt))[0]

    async def exit(self, attempt: Attempt, token: Any, outcome: Outcome) -> None:
        """Settle this gate alone."""
        await exit_gates(((self, token),), self.store, attempt, outcome)


async def enter_gates(gates: Sequence[Gate[Any]], store: StateStore, attempt: Attempt) -> list[Any]:
    """Every gate's claims in one ``store.admit`` call: their tokens, or the first refusal (nothing held)."""
    while True:
        claimed = [gate.claims(attempt) for gate in gates]
        flat = claimed[0] if len(claimed) == 1 else [claim for claims in claimed for claim in claims]
        results, refused = await store.admit(flat) if flat else ([], None)
        if refused is None:
            if len(gates) == 1:
                return [gates[0].admitted(attempt, flat, results)]
            tokens, start = [], 0
            for gate, claims in zip(gates, claimed, strict=True):
                end = start + len(claims)
                tokens.append(gate.admitted(attempt, claims, results[start:end]))
                start = end
            return tokens
        start = 0
        for gate, claims in zip(gates, claimed, strict=True):
            if refused < start + len(claims):
                await gate.refused(attempt, flat[refused], results[refused])  # raises, or waited: claim again
                break
            start += len(claims)


async def exit_gates(entered: Sequence[tuple[Gate[Any], Any]], store: StateStore, attempt: Attempt,
                     outcome: Outcome) -> None:
    """Every entered gate's settlements in one ``store.apply`` call."""
    planned = [gate.settlements(attempt, token, outcome) for gate, token in entered]
    flat = planned[0] if len(planned) == 1 else [op for ops in planned for op in ops]
    results = await store.apply(flat) if flat else []
    start = 0
    for (gate, token), ops in zip(entered, planned, strict=True):
        end = start + len(ops)
        gate.settled(attempt, token, outcome, results if len(planned) == 1 else results[start:end])
        start = end


class Instruments:
    """The admission metrics (created once per router from its meter)."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.wait = instrument(meter.create_histogram, "genroute.ratelimit.wait_s", unit="s",
                               description="Time requests waited for a rate limit")
        self.limited = instrument(meter.create_counter, "genroute.ratelimit.limited", unit="{request}",
                                  description="Attempts refused by a rate limit (fell through)")
        self.opens = instrument(meter.create_counter, "genroute.breaker.opens", unit="{open}",
                                description="Circuit breakers opened")
        self.fallbacks = instrument(meter.create_counter, "genroute.state.fallbacks", unit="{call}",
                                    description="State store calls answered from process memory "
                                                "because the shared store was unreachable")
        self.replays = instrument(meter.create_counter, "genroute.state.replays", unit="{write}",
                                  description="List appends (outcome writes) made in process memory while "
                                              "the shared store was unreachable, then replayed to it or "
                                              "dropped (genroute.state.replay)")

    def fell_back(self, op: str) -> None:
        """Count one state store call (``op``) answered from process memory (the shared store unreachable)."""
        self.fallbacks.add(1, {"genroute.state.operation": op})

    def replayed(self, key: str, fate: str, n: int) -> None:
        """Count ``n`` appends to list ``key`` replayed to the shared store or dropped (``fate``)."""
        self.replays.add(n, {"genroute.state.list": key, "genroute.state.replay": fate})


class BudgetLedger(Protocol):
    """What ``Admission.budget`` returns: a budget's gate (a budget policy provides it), read by its spend."""

    #: The budget policy's config path.
    field: str
    #: The ledger its spend is counted in.
    ledger_name: str

    async def usage(self, key: str) -> dict[str, float]:
        """Spent and held USD of ``key`` in the current window."""
        ...

    async def view(self, request: GenerateRequest) -> Any:
        """The request's budget key and what is left of it now (a budget policy's ``BudgetView``)."""
        ...


def is_budget(gate: Gate[Any]) -> TypeGuard[BudgetLedger]:
    """Whether ``gate`` is a budget's (a budget policy's gate, or an arm's gate wrapping one): it has a ledger.
    Found by attribute, not class: admission cannot import the policies that provide budgets."""
    return getattr(gate, "ledger_name", None) is not None


class Admission:
    """The router's gates, entered in order before an attempt and exited in reverse after it."""

    def __init__(self, gates: Sequence[Gate[Any]], store: StateStore, instruments: Instruments, *,
                 raised_output: Callable[[GenerateRequest, str], float] | None = None) -> None:
        self.gates = tuple(gates)
        self.store = store
        self.instruments = instruments
        #: USD a request's own ``generation`` could add to an attempt of a backend (``Attempt.raised_output_usd``).
        self.raised_output = raised_output

    def budget(self, name: str = "policy") -> BudgetLedger:
        """The gate of the budget whose ledger is ``name``, else of the budget at config path ``name``
        (``usage(key)`` reads its spend). The default finds the config's top budget, wrapped by a challenger or not."""
        budgets = [gate for gate in self.gates if is_budget(gate)]
        found = next((g for g in budgets if g.ledger_name == name), None) or \
            next((g for g in budgets if g.field == name), None)
        if found is None:
            known = ", ".join(sorted({g.ledger_name for g in budgets})) or "none"
            raise UsageError(f"no budget named {name!r} (ledgers: {known})", field="name")
        return found

    async def context(self, request: GenerateRequest, context: Any) -> Any:
        """``context`` (a ``PolicyContext``) with the state its policy reads: each budget's view, and what the
        request's own ``max_output_tokens`` could add to an attempt of each backend (as ``enter`` holds it)."""
        budgets = {gate.field: await gate.view(request) for gate in self.gates if is_budget(gate)}
        raised = self.raised_output
        if (request.generation is None and not request.history) or raised is None:
            return dataclasses.replace(context, budgets=budgets)
        return dataclasses.replace(context, budgets=budgets, raised_output_usd=lambda backend: raised(request, backend))

    async def enter(self, request: GenerateRequest, decision: Decision, backend: str, deadline: float | None,
                    span: trace.Span, *, stream: bool = False) -> Attempt:
        """Pass every gate (one store call) or raise the first refusal (nothing is then held); ``stream``: the
        attempt streams to a reader."""
        attempt = Attempt(request, decision, backend, deadline, span, stream=stream)
        if (request.generation is not None or request.history) and self.raised_output is not None:
            attempt.raised_output_usd = self.raised_output(request, backend)
        try:
            attempt.tokens = await enter_gates(self.gates, self.store, attempt)
        finally:
            self._mark(attempt)
        return attempt

    async def exit(self, attempt: Attempt, outcome: Outcome) -> None:
        """Settle every gate the attempt entered (one store call)."""
        entered = list(zip(self.gates, attempt.tokens, strict=False))
        attempt.tokens = []
        try:
            await exit_gates(entered, self.store, attempt, outcome)
        finally:
            self._mark(attempt)

    async def reserve(self, request: GenerateRequest, amount_usd: float, deadline: float | None) -> Reserved:
        """Hold ``amount_usd`` that ``request`` is about to spend outside any attempt (its decision's embedding,
        estimated) in every gate that counts spend, in one store call, all or none: a gate without room raises
        its refusal (``BudgetExceeded``) and nothing is held. ``spend`` settles what this returns."""
        claimed = [(gate, claims) for gate in self.gates if (claims := gate.holds(request, amount_usd, deadline))]
        if not claimed:
            return ()
        flat = [claim for _, claims in claimed for claim in claims]
        results, refused = await self.store.admit(flat)
        reserved, start = [], 0
        for gate, claims in claimed:
            end = start + len(claims)
            if refused is not None and refused < end:
                raise gate.refusal(flat[refused], results[refused])
            reserved.append((gate, list(zip(claims, results[start:end], strict=True))))
            start = end
        return tuple(reserved)

    async def spend(self, request: GenerateRequest, cost_usd: float, reserved: Reserved = ()) -> None:
        """Count ``cost_usd`` spent by ``request`` outside any attempt (its decision's embedding) in every gate
        that counts spend, releasing what ``reserve`` held for it: one store call."""
        if ops := self._spent(request, cost_usd, reserved):
            await self.store.apply(ops)

    def spent_without_loop(self, request: GenerateRequest, cost_usd: float, reserved: Reserved = ()) -> None:
        """``spend`` with no event loop to await it on (the request's ended under its decision: ``asyncio.run`` per
        call), from any thread: the store makes it without one (``StateStore.keep``)."""
        if ops := self._spent(request, cost_usd, reserved):
            self.store.keep(ops)

    def _spent(self, request: GenerateRequest, cost_usd: float, reserved: Reserved) -> list[Settlement]:
        held = dict(reserved)
        return [op for gate in self.gates for op in gate.spent(request, cost_usd, held.get(gate))]

    def _mark(self, attempt: Attempt) -> None:
        if self.store.degraded and attempt.span.is_recording():
            attempt.span.set_attribute("genroute.state.fallback", True)


__all__ = ["Admission", "Attempt", "BudgetLedger", "Gate", "Instruments", "Outcome", "Reserved", "enter_gates",
           "exit_gates", "hold_ttl_s"]
