"""The policy extension point: a pure function from (request, context) to a Decision."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict

from genroute.errors import ConfigError
from genroute.public_model import ConfigModel
from genroute.registry import KindFromConfig, described
from genroute.types import Decision, GenerateRequest

if TYPE_CHECKING:
    from genroute.admission import Gate
    from genroute.errors import BudgetExceeded
    from genroute.policies.stats import BenchStats
    from genroute.runtime.resources import Resources
    from genroute.state import StateStore


class PolicyConfig(ConfigModel):
    """Fields every policy config has; each kind subclasses it with ``kind: Literal[...]``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str


@dataclass(frozen=True)
class BackendInfo:
    """What a policy may know about a backend without running it."""

    name: str
    kind: str
    capabilities: frozenset[str] = frozenset()
    tasks: tuple[str, ...] = ()
    provider: str = "unknown"
    model: str = ""
    #: Backend-specific facts (e.g. the RAG collection, ICL example count).
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetView:
    """What a budget policy may read of its state when it decides (handed in through ``PolicyContext``)."""

    key: str
    left_usd: float
    limit_usd: float


@dataclass(frozen=True)
class PolicyContext:
    """Read-only facts a policy decides on."""

    catalogue: Mapping[str, BackendInfo]
    #: Benchmark statistics per task and backend (``genroute bench`` writes them; ``Router(stats=...)``).
    stats: BenchStats | None = None
    #: Budget state read by the executor before deciding, by budget policy field (``policy``,
    #: ``policy.arms.0.policy``...). Only for policies that ask for it (``reads_state``); the admission gates
    #: reserve and settle.
    budgets: Mapping[str, BudgetView] | None = None
    #: Circuit breakers that are not closed, by backend: seconds until the breaker half-opens (<= 0: half-open,
    #: one probe may pass). The router drops rungs whose breaker is open after the policy decided.
    health: Mapping[str, float] = field(default_factory=dict)
    #: USD the request's own ``generation.max_output_tokens`` above a backend's own could add to an attempt of that
    #: backend (``router.output_headroom``; what a budget's gate holds beyond its estimate), by backend name. Handed
    #: in with ``budgets``, for a request that sets generation settings; ``None``: it adds nothing.
    raised_output_usd: Callable[[str], float] | None = None


@dataclass(frozen=True)
class PolicyUpdate:
    """What ``Router.refresh`` hands a policy: statistics and training rows from accumulated outcomes."""

    #: Statistics per task and backend, measured on outcomes (entries below ``min_n`` records left out).
    stats: BenchStats
    #: ``learned.train`` rows (input, backend, score, cost_usd, record_id, task) from records with captured input.
    rows: list[dict[str, Any]]
    context: PolicyContext
    min_n: int = 20


class Policy(KindFromConfig, ABC):
    """Decides which backends answer a request, in which order, and why. Never calls a model."""

    kind: ClassVar[str]
    Config: ClassVar[type[PolicyConfig]]
    #: Dotted config path of this policy (``build_policy`` sets it) so errors name nested fields.
    field: str = "policy"
    #: ``field`` without the hops of pass-through wrappers (``challenger``, ``explore``): ``policy`` for a budget a
    #: challenger wraps, as for the same budget unwrapped. What must outlive such wrapping (a budget's ledger) is
    #: named by it.
    place: str = "policy"
    #: True when ``decide`` does CPU work worth moving off the event loop (e.g. embedding the request).
    blocking: bool = False

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        """The policy's name in decisions and spans."""
        return self.kind

    @abstractmethod
    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        """Return the decision for ``request``; must be pure and fast."""

    def bind(self, resources: Resources) -> None:
        """Called once by the router, before ``validate_against``, with what its backends share (engines, the
        knowledge store). Read only: a policy that keeps state in the store (the semantic policy's routes) asks
        for it here (``store.routes.want``) and the router has the store write it afterwards."""

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        """Raise ``ConfigError`` if the policy names backends the router lacks (called once at build)."""

    def refreshed(self, update: PolicyUpdate) -> Policy | None:
        """A new policy that decides on ``update`` as well as what this one knew; ``None``: nothing to learn
        (the default). Policies stay pure: the router swaps the returned policy in."""
        return None

    @property
    def reads_state(self) -> bool:
        """Whether ``decide`` needs budget state in its context (the executor then reads it first)."""
        return False

    @property
    def nested(self) -> tuple[Policy, ...]:
        """The policies this one hands requests to (a wrapper's inner policy, a split's arms); none by default."""
        return ()

    def compiled_inputs(self) -> frozenset[str]:
        """The input keys (``genroute.knowledge.examples.input_key``: hashes, no text) of the records this policy
        was compiled from, as its statistics file, learned model or route utterances list them (``nested``
        policies' not included); none by default."""
        return frozenset()

    def deciding_cost(self, request: GenerateRequest) -> float:
        """What deciding ``request`` is estimated to cost in USD (a priced embedding of it), held in the router's
        budgets before ``decide`` runs; 0 (the default): deciding costs nothing and nothing is held."""
        return 0.0

    def undecided(self, request: GenerateRequest, refused: BudgetExceeded) -> Decision | None:
        """The decision for ``request`` when a budget had no room for what deciding costs (``refused``, nothing
        was embedded); ``None`` (the default): the refusal stands (a budget that downgrades answers instead)."""
        return None

    def gates(self, store: StateStore) -> list[Gate[Any]]:
        """The admission gates this policy provides (a budget's), bound to the router's state store.

        The executor enters them around every attempt; the policy itself keeps no state."""
        return []


def decide_with(policy: Policy, request: GenerateRequest, context: PolicyContext) -> Decision:
    """``policy.decide(request, context)``, checked to be a ``Decision`` (``decided``): what the router and the
    policies that hand requests to others (split, budget, explore, challenger) call."""
    decision = policy.decide(request, context)
    return decision if type(decision) is Decision else decided(policy, decision)


def decided(policy: Policy, decision: Any) -> Decision:
    """``decision``, what ``policy.decide`` returned, if it is a ``Decision``; else a ``ConfigError`` naming the
    policy's field and the policy (a plugin's entry point and package): a policy that returns ``None`` or a dict was
    an ``AttributeError`` from deep inside the router."""
    if isinstance(decision, Decision):
        return decision
    raise ConfigError(f"{described(type(policy))} returned {type(decision).__name__} from decide(), not a "
                      "genroute.types.Decision", field=policy.field)
