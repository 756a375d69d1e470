"""``budget``: per-key, per-tenant or global USD budgets over a time window, enforced by reservations.

The executor calls ``reserve`` before each rung and ``settle`` after it. A reservation holds the rung's
estimated cost until it is settled with the actual cost. The estimate is meant as an upper bound: the
configured ``costs`` or ``max_cost_per_request`` as given, or from a stats file the measured maximum (or
p95) cost per request, else its mean times ``cost_margin``. A request is admitted only while
``spent + held + its estimate <= budget``, and ``settle`` charges the actual cost even when it is larger
than what was held, so once the spend reaches the budget every later request is refused.

What this guarantees, precisely: let the last request admitted in a window be admitted while the set
``F`` of requests (it included) holds reservations. Every request admitted before it has either settled
(its actual cost is in ``spent``) or is in ``F``, so the final spend is at most::

    budget + sum over r in F of max(0, actual(r) - reserved(r))

With estimates that are true upper bounds that sum is 0: concurrent requests never overspend. When some
requests cost more than estimated, the overspend is bounded by the overruns of the requests in flight
together at that one moment (at most ``c * d`` for ``c`` concurrent requests each overrunning by at most
``d``), and it does not compound: nothing is admitted after it. The ledger lives in this process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from genroute.errors import BudgetExceeded, ConfigError
from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext
from genroute.policies.static import check_backends
from genroute.policies.stats import BenchStats
from genroute.types import Decision, GenerateRequest, Rung

if TYPE_CHECKING:
    from genroute.runtime.resources import Resources


@dataclass
class Reservation:
    """A hold on part of one key's budget in one window (a token for ``settle``)."""

    key: str
    window: int
    amount: float
    settled: bool = False


@dataclass
class _Account:
    window: int
    spent: float = 0.0
    reserved: float = 0.0


class BudgetLedger:
    """Spend and outstanding reservations per key in fixed windows; thread-safe and asyncio-safe."""

    def __init__(self, window_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self._clock = clock
        # A plain lock, never held across an await: safe from threads and from coroutines alike.
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}

    def _account(self, key: str) -> _Account:
        window = math.floor(self._clock() / self.window_s)
        account = self._accounts.get(key)
        if account is None or account.window != window:
            account = self._accounts[key] = _Account(window)
        return account

    def reserve(self, key: str, amount: float, limit: float) -> Reservation:
        """Hold ``amount`` of ``key``'s budget; ``BudgetExceeded`` if spent + held + amount > ``limit``."""
        with self._lock:
            account = self._account(key)
            left = limit - account.spent - account.reserved
            # A tiny tolerance so that float sums of equal shares do not refuse the last one.
            if amount > left + 1e-12:
                raise BudgetExceeded(f"budget {key!r}: ${max(left, 0.0):.6g} left of ${limit:.6g}, "
                                     f"request needs up to ${amount:.6g}")
            account.reserved += amount
            return Reservation(key, account.window, amount)

    def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Replace the hold with the actual cost (0 for a rung that failed before spending).

        The whole actual cost is charged, even above the hold. A request reserved in one window and
        settled in the next is charged to the window it settles in: the money is spent now, and the
        old window's account (and its hold) is gone.
        """
        with self._lock:
            if reservation.settled:
                return
            reservation.settled = True
            account = self._account(reservation.key)
            if account.window == reservation.window:
                account.reserved = max(0.0, account.reserved - reservation.amount)
            account.spent += cost_usd

    def remaining(self, key: str, limit: float) -> float:
        """Budget left for ``key`` in the current window (reservations count as spent)."""
        with self._lock:
            account = self._account(key)
            return limit - account.spent - account.reserved

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Spent and reserved per key in the current window (read-only copy)."""
        with self._lock:
            return {k: {"spent": a.spent, "reserved": a.reserved} for k, a in self._accounts.items()}


class BudgetConfig(PolicyConfig):
    """Config of ``BudgetPolicy``: wraps ``inner`` and limits what its decisions may spend."""

    kind: Literal["budget"] = "budget"
    inner: dict[str, Any] = Field(description="The policy whose decisions the budget limits.")
    budget_usd: float = Field(gt=0.0, description="USD per key per window.")
    window_s: float = Field(default=86400.0, gt=0.0)
    per: Literal["key", "tenant", "global"] = "key"
    tenant_field: str = Field(default="tenant", description="Metadata key naming the tenant (per: tenant).")
    limits: dict[str, float] = Field(default_factory=dict, description="Budget overrides per key.")
    on_exhausted: Literal["reject", "downgrade"] = "reject"
    downgrade_to: str | None = Field(default=None, validate_default=True,
                                     description="The cheaper backend used when exhausted.")
    max_cost_per_request: float | None = Field(default=None, ge=0.0,
                                               description="Max USD per request for backends not in `costs`.")
    stats_path: str | None = Field(default=None, description="Stats file for cost estimates.")
    cost_margin: float = Field(default=2.0, ge=1.0, description="Multiplier on a stats file's mean cost "
                               "per request when it has no max or p95 figure (a mean is not an upper bound).")
    # Declared after the other estimate sources so that its validator sees them.
    costs: dict[str, float] = Field(default_factory=dict, validate_default=True,
                                    description="Max USD per request by backend.")

    # Cross-field checks as field validators, so the error names the field to fix, not the whole policy.
    @field_validator("downgrade_to")
    @classmethod
    def _downgrade_target(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("on_exhausted") == "downgrade":
            raise ValueError("on_exhausted: downgrade needs `downgrade_to` (the cheaper backend)")
        return value

    @field_validator("costs")
    @classmethod
    def _some_estimate(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        if not value and info.data.get("max_cost_per_request") is None and info.data.get("stats_path") is None:
            raise ValueError("no way to estimate request costs: set `costs`, `max_cost_per_request` or "
                             "`stats_path`")
        return value


class BudgetPolicy(Policy):
    """Let ``inner`` decide; reserve each rung's estimated cost against the request's budget key."""

    kind = "budget"
    Config = BudgetConfig
    config: BudgetConfig

    def __init__(self, config: BudgetConfig, *, ledger: BudgetLedger | None = None) -> None:
        from genroute.policies import build_policy

        super().__init__(config)
        self.inner = build_policy(config.inner, field=f"{self.field}.inner")
        self.blocking = self.inner.blocking
        self.ledger = ledger or BudgetLedger(config.window_s)
        self._stats = BenchStats.load(config.stats_path, field=f"{self.field}.stats_path") \
            if config.stats_path else None

    def budget_key(self, request: GenerateRequest) -> str:
        """The ledger key a request is charged to."""
        if self.config.per == "global":
            return "*"
        if self.config.per == "tenant":
            tenant = request.metadata.get(self.config.tenant_field)
            return f"tenant:{tenant}" if tenant is not None else "tenant:-"
        return f"key:{request.key}" if request.key is not None else "key:-"

    def limit(self, key: str) -> float:
        """The budget of ``key`` in USD per window."""
        bare = key.split(":", 1)[-1]
        return self.config.limits.get(key, self.config.limits.get(bare, self.config.budget_usd))

    def estimate(self, backend: str, task: str | None = None) -> float:
        """The cost held for one run of ``backend``: configured, else a conservative figure from stats."""
        if backend in self.config.costs:
            return self.config.costs[backend]
        if self.config.max_cost_per_request is not None:
            return self.config.max_cost_per_request
        measured = self._stats.cost_bound(backend, task, margin=self.config.cost_margin) \
            if self._stats is not None else None
        if measured is not None:
            return measured
        known = list(self.config.costs.values())
        if not known:
            raise ConfigError(f"no cost estimate for backend {backend!r}", field=f"{self.field}.costs")
        return max(known)

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        decision = self.inner.decide(request, context)
        key = self.budget_key(request)
        limit = self.limit(key)
        cheap = self.config.downgrade_to
        left = self.ledger.remaining(key, limit)
        reason = f"{decision.reason}; budget {key}: ${max(left, 0.0):.6g} of ${limit:.6g} left"
        if self.config.on_exhausted == "reject" or cheap is None:
            return decision.model_copy(update={"policy": self.name, "budget_key": key, "reason": reason})
        first = decision.rungs[0].backend
        need = self.estimate(first, request.task)
        if need > left and first != cheap:
            return Decision(policy=self.name, rungs=(Rung(backend=cheap),), budget_key=key,
                            reason=f"budget: {key} has ${max(left, 0.0):.6g} left < ${need:.6g} for {first}; "
                                   f"downgraded to {cheap} (was: {decision.reason})")
        # Another request may take the rest of the budget between now and ``reserve``: keep the cheap rung
        # as the last resort so the executor can still step down to it.
        rungs = decision.rungs if any(r.backend == cheap for r in decision.rungs) else \
            (*decision.rungs, Rung(backend=cheap))
        return decision.model_copy(update={"policy": self.name, "budget_key": key, "rungs": rungs,
                                           "reason": reason})

    def reserve(self, request: GenerateRequest, decision: Decision, backend: str) -> Any:
        key = decision.budget_key or self.budget_key(request)
        held = self.ledger.reserve(key, self.estimate(backend, request.task), self.limit(key))
        try:
            inner = self.inner.reserve(request, decision, backend)
        except BaseException:
            self.ledger.settle(held, 0.0)
            raise
        return (held, inner)

    def settle(self, token: Any, cost_usd: float) -> None:
        if token is None:
            return
        held, inner = token
        self.ledger.settle(held, cost_usd)
        self.inner.settle(inner, cost_usd)

    def bind(self, resources: Resources) -> None:
        self.inner.bind(resources)

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(b, f"{self.field}.costs.{b}") for b in self.config.costs]
        if self.config.downgrade_to is not None:
            named.append((self.config.downgrade_to, f"{self.field}.downgrade_to"))
        check_backends(catalogue, named)
        self.inner.validate_against(catalogue)
