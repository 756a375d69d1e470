"""``explore``: a nested policy, plus Thompson-sampling exploration over a task's backends within a traffic share.

A request is eligible for exploration when its key (or, without one, its input) hashes below ``share``; so at
most ``share`` of the traffic can be explored, the same request is always treated alike, and every process
agrees. For an eligible request each candidate's quality is drawn from Beta(1 + passes, 1 + fails) (its
measured mean x n, from the router's or refreshed outcome statistics; a backend never measured draws from
Beta(1, 1), so a new challenger gets tried) and the draw minus ``cost_weight`` x its cost per request picks the
backend. When the pick is what the nested policy chose anyway, its decision stands; otherwise the pick runs first
and the nested decision's rungs follow as fallbacks. Which of the three it was is the decision's ``explore``
(``outside_share``, ``exploited``, ``explored``), on the request's root span as ``genroute.explore``.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from genroute.policies.base import BackendInfo, PolicyConfig, PolicyContext, PolicyUpdate, decide_with
from genroute.policies.nested import NestedPolicy
from genroute.policies.split import bucket
from genroute.policies.static import check_backends
from genroute.policies.stats import BenchStats
from genroute.types import Decision, GenerateRequest, Rung

class ExploreConfig(PolicyConfig):
    """Config of ``ExplorePolicy``."""

    kind: Literal["explore"] = "explore"
    policy: dict[str, Any] = Field(description="The nested policy that decides unexplored requests.")
    share: float = Field(gt=0.0, le=1.0, description="Most traffic share that may be explored.")
    candidates: tuple[str, ...] | None = Field(default=None, description="Backends to explore (default: those "
                                               "serving the request's task).")
    cost_weight: float = Field(default=0.0, ge=0.0, allow_inf_nan=False,
                               description="Quality points one USD per request costs.")
    salt: str = ""


class ExplorePolicy(NestedPolicy):
    """Thompson sampling with a cost term, bounded by a traffic share, over a nested policy."""

    kind = "explore"
    Config = ExploreConfig
    config: ExploreConfig

    def __init__(self, config: ExploreConfig) -> None:
        from genroute.policies import build_policy

        super().__init__(config)
        self.inner = build_policy(config.policy, field=f"{self.field}.policy", place=self.place)
        self.blocking = self.inner.blocking
        self._stats: BenchStats | None = None

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        base = decide_with(self.inner, request, context)
        text = request.key if request.key is not None else request.input
        if bucket(self.config.salt, text) >= self.config.share:
            return base.model_copy(update={"explore": "outside_share"})
        stats = self._stats if self._stats is not None else context.stats
        measured = stats.for_task(request.task) if isinstance(stats, BenchStats) else {}
        rng = random.Random(bucket(self.config.salt + "\x00draw", text))
        best, best_utility, drawn = None, float("-inf"), 0.0
        for backend in self._candidates(request, context):
            entry = measured.get(backend)
            # Stats are bounded when validated; stats built without validation must not crash the draw either.
            n = entry.n if entry and not math.isnan(entry.quality) else 0
            quality = min(max(entry.quality, 0.0), 1.0) if entry and n else 0.0
            passes, fails = quality * n, (1.0 - quality) * n
            theta = rng.betavariate(1.0 + passes, 1.0 + fails)
            utility = theta - self.config.cost_weight * (entry.cost_per_request_usd if entry else 0.0)
            if utility > best_utility:
                best, best_utility, drawn = backend, utility, theta
        if best is None or best == base.rungs[0].backend:
            return base.model_copy(update={"explore": "exploited"})
        rungs = (Rung(backend=best), *(r for r in base.rungs if r.backend != best))
        return base.model_copy(update={
            "policy": self.name, "rungs": rungs, "explore": "explored",
            "reason": f"explore: Thompson draw {drawn:.2f} picked {best} (explored share <= "
                      f"{self.config.share:.0%}); instead of: {base.reason}"})

    def _candidates(self, request: GenerateRequest, context: PolicyContext) -> list[str]:
        if self.config.candidates is not None:
            return [b for b in self.config.candidates if b in context.catalogue]
        return sorted(name for name, info in context.catalogue.items()
                      if not info.tasks or request.task in info.tasks)

    def compiled_inputs(self) -> frozenset[str]:
        return BenchStats.inputs_of(self._stats)

    def refreshed(self, update: PolicyUpdate) -> ExplorePolicy | None:
        """A copy that samples from the outcome statistics (merged over what it had) and a refreshed inner."""
        new = copy.copy(self)
        base = self._stats if self._stats is not None else update.context.stats
        new._stats = (base if isinstance(base, BenchStats) else BenchStats()).merged(update.stats)
        new.inner = self.inner.refreshed(update) or self.inner
        return new

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        check_backends(catalogue, [(b, f"{self.field}.candidates.{i}")
                                   for i, b in enumerate(self.config.candidates or ())])
        super().validate_against(catalogue)
