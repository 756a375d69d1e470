"""``budget``: per-key, per-tenant or global USD budgets over a time window, enforced by reservations.

The policy decides (it lets ``inner`` decide and names the budget key); the admission gate it provides,
``BudgetGate``, holds each attempt's estimated cost in the router's state store before the attempt runs and
settles the actual cost after it. The estimate is meant as an upper bound: the configured ``costs`` or
``max_cost_per_request`` as given, or from a stats file the measured maximum (or p95) cost per request,
else its mean times ``cost_margin``. An attempt is admitted only while ``spent + held + its estimate <=
budget`` (one atomic store operation: a Lua script in Redis), and the settle charges the actual cost even
when it is larger than what was held, so once the spend reaches the budget every later attempt is refused.

What this guarantees, precisely: let the last attempt admitted in a window be admitted while the set
``F`` of attempts (it included) holds reservations. Every attempt admitted before it has either settled
(its actual cost is in ``spent``) or is in ``F``, so the final spend is at most::

    budget + sum over r in F of max(0, actual(r) - reserved(r))

With estimates that are true upper bounds that sum is 0: concurrent requests never overspend, in one
process or, with ``state: {kind: redis}``, across all processes sharing the store. When some requests cost
more than estimated, the overspend is bounded by the overruns of the attempts in flight together at that one
moment (at most ``c * d`` for ``c`` concurrent attempts each overrunning by at most ``d``), and it does not
compound: nothing is admitted after it. What a request spends outside its attempts — a semantic policy's
embedding of the request, made while deciding — is held the same way before the policy decides (its estimate:
the request's text at about four characters a token, at the embedder's input price; ``Policy.deciding_cost``)
and settled at its cost once the decision ends: a request the budget has no room to decide for is refused
(``BudgetExceeded``; with ``on_exhausted: downgrade``, sent to ``downgrade_to`` undecided) before anything is
embedded, and that estimate counts in ``F`` like an attempt's. A hold
lapses ``HOLD_MARGIN_S`` after the request's deadline (or after ``DEFAULT_HOLD_TTL_S`` without one, and at the
earliest then for a streamed attempt, whose reader's time moves its deadline on), and is then charged at its
estimate, so a process killed while holding one does not keep it, nor leave what its attempt may have cost uncounted
(a settle that still comes, late, replaces that charge by the attempt's cost).
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from genroute.admission import Attempt, Gate, Outcome, hold_ttl_s
from genroute.bounds import PathText
from genroute.errors import BudgetExceeded, ConfigError, UsageError
from genroute.policies.base import BackendInfo, BudgetView, Policy, PolicyConfig, PolicyContext, decide_with
from genroute.policies.static import check_backends
from genroute.policies.stats import BenchStats
from genroute.state.ops import Held, Hold, Settle
from genroute.types import Decision, GenerateRequest, Rung

if TYPE_CHECKING:
    from genroute.runtime.resources import Resources
    from genroute.state import StateStore

#: Budgets are kept in the store as integer nano-USD: sums are exact, in memory and in Redis alike.
UNITS_PER_USD = 1_000_000_000


def to_units(usd: float) -> int:
    """``usd`` in store units (nano-USD)."""
    return round(usd * UNITS_PER_USD)


#: The most USD a budget setting may name: its nano-USD stay whole in Redis's 64-bit counters (a budget of 1e308 was
#: an OverflowError out of every request, when converted to units).
MAX_USD = 1e9

#: A USD amount a budget counts with: finite and not negative (a negative cost would turn the budget off).
_USD = Annotated[float, Field(ge=0.0, le=MAX_USD, allow_inf_nan=False)]


class BudgetConfig(PolicyConfig):
    """Config of ``BudgetPolicy``: wraps ``inner`` and limits what its decisions may spend."""

    kind: Literal["budget"] = "budget"
    inner: dict[str, Any] = Field(description="The policy whose decisions the budget limits.")
    budget_usd: float = Field(gt=0.0, le=MAX_USD, allow_inf_nan=False, description="USD per key per window.")
    window: Literal["day", "month"] | None = Field(
        default=None, description="Calendar window (UTC day or month); when unset, fixed `window_s` windows.")
    # At least a second: a tiny window overflows the window's number (``now / window_s``).
    window_s: float = Field(default=86400.0, ge=1.0, allow_inf_nan=False,
                            description="Window length in seconds, at least 1 (no `window`).")
    per: Literal["key", "tenant", "global"] = "key"
    tenant_field: str = Field(default="tenant", description="Metadata key naming the tenant (per: tenant).")
    limits: dict[str, Annotated[float, Field(gt=0.0, le=MAX_USD, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="Budget overrides per key.")
    ledger: str | None = Field(default=None, min_length=1, description="Name of the budget's spend in the state "
                               "store: budgets that name the same ledger share it. Default: where the policy sits in "
                               "the config, not counting `challenger`/`explore` wrappers (`policy`, "
                               "`policy.arms.0.policy`...), so a challenger wrapped around it keeps its spend.")
    on_exhausted: Literal["reject", "downgrade"] = "reject"
    downgrade_to: str | None = Field(default=None, validate_default=True,
                                     description="The cheaper backend used when exhausted.")
    max_cost_per_request: float | None = Field(default=None, ge=0.0, le=MAX_USD, allow_inf_nan=False,
                                               description="Max USD per request for backends not in `costs`.")
    stats_path: PathText | None = Field(default=None, description="Stats file for cost estimates (without `costs` or "
                                        "`max_cost_per_request`, it must have every backend of the router).")
    cost_margin: float = Field(default=2.0, ge=1.0, le=1e6, allow_inf_nan=False, description="Multiplier on a stats file's mean cost "
                               "per request when it has no max or p95 figure (a mean is not an upper bound).")
    # Declared after the other estimate sources so that its validator sees them.
    costs: dict[str, _USD] = Field(default_factory=dict, validate_default=True,
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
    """Let ``inner`` decide and name the budget key; ``gates`` provides the gate that enforces the budget."""

    kind = "budget"
    Config = BudgetConfig
    config: BudgetConfig

    def __init__(self, config: BudgetConfig) -> None:
        from genroute.policies import build_policy

        super().__init__(config)
        self.inner = build_policy(config.inner, field=f"{self.field}.inner", place=f"{self.place}.inner")
        self.blocking = self.inner.blocking
        self._stats = BenchStats.load(config.stats_path, field=f"{self.field}.stats_path") \
            if config.stats_path else None

    @property
    def ledger_name(self) -> str:
        """The name of this budget's spend in the state store (its accounts are ``budget:{ledger}:{key}:{window}``)."""
        return self.config.ledger if self.config.ledger is not None else self.place

    def budget_key(self, request: GenerateRequest) -> str:
        """The key a request is charged to."""
        if self.config.per == "global":
            return "*"
        if self.config.per == "tenant":
            tenant = request.metadata.get(self.config.tenant_field)
            return f"tenant:{tenant}" if tenant is not None else "tenant:-"
        return f"key:{request.key}" if request.key is not None else "key:-"

    def named_key(self, key: str) -> str:
        """``key`` as ``budget_key`` writes it: a tenant's or a request key's own name (``acme``, as ``limits`` may
        name it too) gets this budget's prefix (``tenant:acme``); ``*``, and a key already prefixed, stay as given."""
        if self.config.per == "global" or key == "*":
            return key
        prefix = f"{self.config.per}:"
        return key if key.startswith(prefix) else prefix + key

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

    def window(self, now: float) -> tuple[str, float]:
        """The window containing ``now`` (epoch seconds): its id and the seconds until it ends."""
        if self.config.window is None:
            index = math.floor(now / self.config.window_s)
            return str(index), (index + 1) * self.config.window_s - now
        day = datetime.fromtimestamp(now, UTC)
        if self.config.window == "day":
            end = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + 86400
            return day.strftime("%Y-%m-%d"), end - now
        days = calendar.monthrange(day.year, day.month)[1]
        end = datetime(day.year, day.month, 1, tzinfo=UTC).timestamp() + days * 86400
        return day.strftime("%Y-%m"), end - now

    @property
    def reads_state(self) -> bool:
        """Whether ``decide`` needs this budget's state in its context (only to downgrade)."""
        return self.config.on_exhausted == "downgrade"

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        decision = decide_with(self.inner, request, context)
        key = self.budget_key(request)
        view: BudgetView | None = (context.budgets or {}).get(self.field)
        per = self.config.window or f"{self.config.window_s:g} s"
        if view is None:
            reason = f"{decision.reason}; budget {key}: ${self.limit(key):.6g} per {per}"
        else:
            reason = f"{decision.reason}; budget {key}: ${max(view.left_usd, 0.0):.6g} of ${view.limit_usd:.6g} left"
        cheap = self.config.downgrade_to
        if self.config.on_exhausted == "reject" or cheap is None:
            return decision.model_copy(update={"policy": self.name, "budget_key": key, "reason": reason})
        first = decision.rungs[0].backend
        # As the gate will hold it: a request that raises the backend's max_output_tokens may cost that much more.
        raised = context.raised_output_usd
        need = self.estimate(first, request.task) + (raised(first) if raised is not None else 0.0)
        if view is not None and need > view.left_usd and first != cheap:
            return Decision(policy=self.name, rungs=(Rung(backend=cheap),), budget_key=key,
                            reason=f"budget: {key} has ${max(view.left_usd, 0.0):.6g} left < ${need:.6g} for "
                                   f"{first}; downgraded to {cheap} (was: {decision.reason})")
        # Another request may take the rest of the budget between now and admission: keep the cheap rung
        # as the last resort so the executor can still step down to it.
        rungs = decision.rungs if any(r.backend == cheap for r in decision.rungs) else \
            (*decision.rungs, Rung(backend=cheap))
        return decision.model_copy(update={"policy": self.name, "budget_key": key, "rungs": rungs,
                                           "reason": reason})

    def gates(self, store: StateStore) -> list[Gate[Any]]:
        return [BudgetGate(self, store), *self.inner.gates(store)]

    def deciding_cost(self, request: GenerateRequest) -> float:
        return self.inner.deciding_cost(request)

    def undecided(self, request: GenerateRequest, refused: BudgetExceeded) -> Decision | None:
        """With ``on_exhausted: downgrade``, the cheap backend: the budget has no room for the decision either."""
        cheap = self.config.downgrade_to
        if self.config.on_exhausted != "downgrade" or cheap is None:
            return self.inner.undecided(request, refused)
        return Decision.single(self.name, cheap, f"budget: no room to decide ({refused}); downgraded to {cheap}",
                               budget_key=self.budget_key(request))

    def bind(self, resources: Resources) -> None:
        self.inner.bind(resources)

    @property
    def nested(self) -> tuple[Policy, ...]:
        return (self.inner,)

    def compiled_inputs(self) -> frozenset[str]:
        return BenchStats.inputs_of(self._stats)

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(b, f"{self.field}.costs.{b}") for b in self.config.costs]
        if self.config.downgrade_to is not None:
            named.append((self.config.downgrade_to, f"{self.field}.downgrade_to"))
        check_backends(catalogue, named)
        self._check_estimates(catalogue)
        self.inner.validate_against(catalogue)

    def _check_estimates(self, catalogue: Mapping[str, BackendInfo]) -> None:
        """``ConfigError`` naming ``stats_path`` for a backend that has no estimate: refused when the router is
        built (or a backend added), not at every request that reaches it (a stats file older than the backend)."""
        if self.config.costs or self.config.max_cost_per_request is not None or self._stats is None:
            return  # with `costs`, a backend left out of them is held at the highest cost given
        missing = [b for b in catalogue if self._stats.cost_bound(b) is None]
        if missing:
            raise ConfigError(f"the stats file has no cost for backend(s) {', '.join(map(repr, missing))}: a budget "
                              "needs an estimate for every backend (give them in `costs`, or set "
                              "`max_cost_per_request`)", field=f"{self.field}.stats_path")


class BudgetGate(Gate[Hold]):
    """Holds an attempt's estimated cost against its budget key's window and settles the actual cost."""

    def __init__(self, policy: BudgetPolicy, store: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        #: The budget policy's config path: its view in ``PolicyContext.budgets`` is keyed by it.
        self.field = policy.field
        #: The budget's ledger name (``Admission.budget`` finds the gate by it).
        self.ledger_name = policy.ledger_name
        self._clock = clock

    def account(self, key: str) -> tuple[str, float]:
        """The store account of ``key`` in the current window, and how long to keep it."""
        window, left_s = self.policy.window(self._clock())
        # Kept a day past its window: a late settle still finds its hold, and reads see the closed window.
        # Named by the ledger, not the config path: wrapping the policy (a challenger) keeps the same spend.
        return f"budget:{self.ledger_name}:{key}:{window}", left_s + 86400

    async def view(self, request: GenerateRequest) -> BudgetView:
        """The request's budget key and what is left of it now."""
        key = self.policy.budget_key(request)
        spent, held = await self.store.usage(self.account(key)[0])
        limit = self.policy.limit(key)
        return BudgetView(key, limit - (spent + held) / UNITS_PER_USD, limit)

    async def usage(self, key: str) -> dict[str, float]:
        """Spent and held USD of ``key`` in the current window: ``*`` for a global budget, else a tenant's or a
        request key's name (``acme``, or ``tenant:acme`` as errors name it)."""
        if not isinstance(key, str):
            raise UsageError(f"must be a budget key as text, not {type(key).__name__}", field="key")
        spent, held = await self.store.usage(self.account(self.policy.named_key(key))[0])
        return {"spent": spent / UNITS_PER_USD, "reserved": held / UNITS_PER_USD}

    def claims(self, attempt: Attempt) -> list[Hold]:
        request = attempt.request
        key = self.policy.budget_key(request)
        limit = self.policy.limit(key)
        amount = self.policy.estimate(attempt.backend, request.task) + attempt.raised_output_usd
        account, keep_s = self.account(key)
        ttl_s = hold_ttl_s(attempt.deadline, stream=attempt.stream)
        return [Hold(account, to_units(amount), to_units(limit), ttl_s, keep_s, (key, limit, amount))]

    async def refused(self, attempt: Attempt, claim: Hold, result: Any) -> None:
        raise self.refusal(claim, result)

    def refusal(self, claim: Hold, result: Any) -> BudgetExceeded:
        key, limit, amount, *what = claim.tag  # what: set for a hold outside the attempts (deciding)
        return BudgetExceeded(f"budget {key!r}: ${max(result.left / UNITS_PER_USD, 0.0):.6g} left of "
                              f"${limit:.6g}, {what[0] if what else 'request'} needs up to ${amount:.6g}")

    def settlements(self, attempt: Attempt, token: list[tuple[Hold, Held]], outcome: Outcome) -> list[Settle]:
        ((hold, held),) = token
        # Money is spent when it is spent: an attempt that outlived its window is charged to the current one.
        current, keep_s = self.account(self.policy.budget_key(attempt.request))
        return [Settle(hold.account, held.hold_id, to_units(outcome.cost_usd), current, keep_s)]

    def holds(self, request: GenerateRequest, amount_usd: float, deadline: float | None) -> list[Hold]:
        key = self.policy.budget_key(request)
        limit = self.policy.limit(key)
        account, keep_s = self.account(key)
        return [Hold(account, to_units(amount_usd), to_units(limit), hold_ttl_s(deadline), keep_s,
                     (key, limit, amount_usd, "deciding (the policy embeds the request)"))]

    def spent(self, request: GenerateRequest, cost_usd: float, held: Any = None) -> list[Settle]:
        account, keep_s = self.account(self.policy.budget_key(request))
        if not held:  # no hold to drop: a settle without one only adds to the spend of the current window
            return [Settle(account, None, to_units(cost_usd), None, keep_s)]
        ((hold, answer),) = held
        return [Settle(hold.account, answer.hold_id, to_units(cost_usd), account, keep_s)]
