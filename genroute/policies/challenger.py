"""``challenger``: a nested policy, with a challenger backend for one task in shadow or split, until promoted.

- ``mode: shadow``: the task's requests are answered as the nested policy decides and the challenger runs as a
  shadow on ``share`` of them (with an ``outcomes`` section its answers are scored and stored as paired outcomes).
- ``mode: split``: ``share`` of the task's requests (by a stable hash of the key, else the input) are answered by
  the challenger first, the nested decision's rungs as fallbacks.
- ``promoted: true``: every request of the task goes to the challenger first, the nested decision as fallback.

``genroute graduate`` writes this policy around the configured one; ``Router.add_challenger`` and
``Router.promote`` do the same in code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext, PolicyUpdate, decide_with
from genroute.policies.nested import NestedPolicy
from genroute.policies.split import bucket
from genroute.policies.static import check_backends
from genroute.types import Decision, GenerateRequest, Rung

class ChallengerConfig(PolicyConfig):
    """Config of ``ChallengerPolicy``."""

    kind: Literal["challenger"] = "challenger"
    policy: dict[str, Any] = Field(description="The nested (incumbent) policy.")
    task: str = Field(min_length=1)
    backend: str = Field(min_length=1, description="The challenger backend.")
    mode: Literal["shadow", "split"] = "shadow"
    share: float = Field(default=1.0, gt=0.0, le=1.0, description="Shadow rate, or the split's share.")
    promoted: bool = False
    salt: str = ""


class ChallengerPolicy(NestedPolicy):
    """Route one task's challenger as a shadow, a split arm, or (promoted) first."""

    kind = "challenger"
    Config = ChallengerConfig
    config: ChallengerConfig

    def __init__(self, config: ChallengerConfig, *, inner: Policy | None = None) -> None:
        from genroute.policies import build_policy

        super().__init__(config)
        self.inner = inner or build_policy(config.policy, field=f"{self.field}.policy", place=self.place)
        self.blocking = self.inner.blocking

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        base = decide_with(self.inner, request, context)
        cfg = self.config
        if request.task != cfg.task or request.backend is not None:
            return base
        first = cfg.promoted
        if cfg.mode == "split" and not first:
            first = bucket(cfg.salt, request.key if request.key is not None else request.input) < cfg.share
        if first:
            why = "promoted" if cfg.promoted else f"split arm ({cfg.share:.0%})"
            rungs = (Rung(backend=cfg.backend), *(r for r in base.rungs if r.backend != cfg.backend))
            return base.model_copy(update={
                "policy": self.name, "rungs": rungs, "shadow": tuple(s for s in base.shadow if s != cfg.backend),
                "reason": f"challenger {cfg.backend} for task {cfg.task!r}: {why}; fallback: {base.reason}"})
        # Not the backend that answers first: a shadow of itself would run the request twice, to compare it with itself.
        if cfg.mode == "shadow" and cfg.backend not in base.shadow and base.rungs[0].backend != cfg.backend:
            return base.model_copy(update={"shadow": (*base.shadow, cfg.backend),
                                           "shadow_rates": {**base.shadow_rates, cfg.backend: cfg.share}})
        return base

    def refreshed(self, update: PolicyUpdate) -> ChallengerPolicy | None:
        inner = self.inner.refreshed(update)
        return None if inner is None else ChallengerPolicy(self.config, inner=inner)

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        check_backends(catalogue, [(self.config.backend, f"{self.field}.backend")])
        super().validate_against(catalogue)
