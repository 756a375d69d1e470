"""``split``: weighted A/B arms and canaries by a stable hash of the request key."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from genroute.admission import Attempt, ClaimT, Gate, Outcome
from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext, PolicyUpdate, decide_with
from genroute.policies.static import check_backends
from genroute.public_model import ConfigModel
from genroute.types import Decision, GenerateRequest

if TYPE_CHECKING:
    from genroute.errors import BudgetExceeded
    from genroute.runtime.resources import Resources
    from genroute.state import StateStore
    from genroute.state.ops import Settlement


class Arm(ConfigModel):
    """One arm: a backend or a nested policy, with a relative weight (weights need not sum to 100)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    weight: float = Field(gt=0.0, allow_inf_nan=False)
    backend: str | None = None
    policy: dict[str, Any] | None = Field(default=None, description="A nested policy config.")

    @model_validator(mode="after")
    def _one_target(self) -> Arm:
        if (self.backend is None) == (self.policy is None):
            raise ValueError("an arm needs exactly one of `backend` or `policy`")
        return self


class SplitConfig(PolicyConfig):
    """Config of ``SplitPolicy``; a canary is two arms, e.g. weights 95 and 5."""

    kind: Literal["split"] = "split"
    arms: tuple[Arm, ...] = Field(min_length=1)
    salt: str = Field(default="", description="Change it to reshuffle which keys land in which arm.")


def bucket(salt: str, text: str) -> float:
    """A stable point in [0, 1) for ``text``: same salt and text, same point, in every process."""
    digest = hashlib.blake2b(f"{salt}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class SplitPolicy(Policy):
    """Pick an arm by where the request key (or, without one, the input) hashes in the weight line."""

    kind = "split"
    Config = SplitConfig
    config: SplitConfig

    def __init__(self, config: SplitConfig) -> None:
        from genroute.policies import build_policy

        super().__init__(config)
        total = sum(arm.weight for arm in config.arms)
        self._edges: list[float] = []
        edge = 0.0
        for arm in config.arms:
            edge += arm.weight / total
            self._edges.append(edge)
        self._edges[-1] = 1.0  # float sums may fall short of 1
        self._labels = [arm.name or arm.backend or f"arms[{i}]" for i, arm in enumerate(config.arms)]
        self._shares = [arm.weight / total for arm in config.arms]
        self._inner: list[Policy | None] = [
            build_policy(arm.policy, field=f"{self.field}.arms.{i}.policy",
                         place=f"{self.place}.arms.{i}.policy") if arm.policy is not None else None
            for i, arm in enumerate(config.arms)
        ]
        self.blocking = any(p.blocking for p in self._inner if p is not None)

    def _arm(self, request: GenerateRequest) -> tuple[int, str]:
        by = "key" if request.key is not None else "input"
        point = bucket(self.config.salt, request.key if request.key is not None else request.input)
        for i, edge in enumerate(self._edges):
            if point < edge:
                return i, by
        return len(self._edges) - 1, by

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        i, by = self._arm(request)
        signal = f"split: arm {self._labels[i]} ({self._shares[i]:.0%}) by hash of {by}"
        inner = self._inner[i]
        if inner is None:
            return Decision.single(self.name, self.config.arms[i].backend or "", signal)
        decision = decide_with(inner, request, context)
        return decision.model_copy(update={"policy": self.name, "reason": f"{signal}; {decision.reason}"})

    @property
    def reads_state(self) -> bool:
        return any(p.reads_state for p in self._inner if p is not None)

    def deciding_cost(self, request: GenerateRequest) -> float:
        inner = self._inner[self._arm(request)[0]]  # only the request's arm decides
        return 0.0 if inner is None else inner.deciding_cost(request)

    def undecided(self, request: GenerateRequest, refused: BudgetExceeded) -> Decision | None:
        inner = self._inner[self._arm(request)[0]]
        return None if inner is None else inner.undecided(request, refused)

    def gates(self, store: StateStore) -> list[Gate[Any]]:
        # An arm's gates (its budget) apply only to the requests that hash to that arm.
        return [_ArmGate(gate, self, i) for i, inner in enumerate(self._inner) if inner is not None
                for gate in inner.gates(store)]

    @property
    def nested(self) -> tuple[Policy, ...]:
        return tuple(p for p in self._inner if p is not None)

    def refreshed(self, update: PolicyUpdate) -> SplitPolicy | None:
        """A copy whose nested policies are refreshed (``None`` if none of them learned anything)."""
        inners = [None if p is None else p.refreshed(update) for p in self._inner]
        if all(p is None for p in inners):
            return None
        new = copy.copy(self)
        new._inner = [old if fresh is None else fresh for old, fresh in zip(self._inner, inners, strict=True)]
        return new

    def bind(self, resources: Resources) -> None:
        for inner in self._inner:
            if inner is not None:
                inner.bind(resources)

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        check_backends(catalogue, [(arm.backend, f"{self.field}.arms.{i}.backend")
                                   for i, arm in enumerate(self.config.arms) if arm.backend is not None])
        for inner in self._inner:
            if inner is not None:
                inner.validate_against(catalogue)


class _ArmGate(Gate[ClaimT]):
    """A gate of one arm's policy, entered only by requests of that arm."""

    def __init__(self, gate: Gate[ClaimT], split: SplitPolicy, arm: int) -> None:
        self.gate, self.split, self.arm = gate, split, arm

    def __getattr__(self, name: str) -> Any:  # view(), usage() of the wrapped gate
        return getattr(self.gate, name)

    def _mine(self, attempt: Attempt) -> bool:
        return self.split._arm(attempt.request)[0] == self.arm

    def holds(self, request: GenerateRequest, amount_usd: float, deadline: float | None) -> Sequence[ClaimT]:
        return self.gate.holds(request, amount_usd, deadline) if self.split._arm(request)[0] == self.arm else ()

    def refusal(self, claim: ClaimT, result: Any) -> Exception:
        return self.gate.refusal(claim, result)

    def spent(self, request: GenerateRequest, cost_usd: float, held: Any = None) -> Sequence[Settlement]:
        mine = self.split._arm(request)[0] == self.arm
        return self.gate.spent(request, cost_usd, held) if mine else ()

    def claims(self, attempt: Attempt) -> Sequence[ClaimT]:
        return self.gate.claims(attempt) if self._mine(attempt) else ()

    def admitted(self, attempt: Attempt, claims: Sequence[ClaimT], results: Sequence[Any]) -> Any:
        return self.gate.admitted(attempt, claims, results) if self._mine(attempt) else _SKIPPED

    async def refused(self, attempt: Attempt, claim: ClaimT, result: Any) -> None:
        await self.gate.refused(attempt, claim, result)

    def settlements(self, attempt: Attempt, token: Any, outcome: Outcome) -> Sequence[Settlement]:
        return () if token is _SKIPPED else self.gate.settlements(attempt, token, outcome)

    def settled(self, attempt: Attempt, token: Any, outcome: Outcome, results: Sequence[Any]) -> None:
        if token is not _SKIPPED:
            self.gate.settled(attempt, token, outcome, results)


_SKIPPED = object()
