"""``cost_aware``: the cheapest backend whose benchmarked quality and p95 latency meet the targets."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Literal

from pydantic import ConfigDict, Field

from genroute.bounds import PathText
from genroute.errors import ConfigError
from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext, PolicyUpdate
from genroute.policies.static import check_backends
from genroute.policies.stats import BackendStats, BenchStats
from genroute.public_model import ConfigModel
from genroute.types import Decision, GenerateRequest, Rung


class Targets(ConfigModel):
    """A quality floor and a latency SLO."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Bounded as scores are: NaN met every floor (the cheapest backend, "quality 0.286 >= nan") and a floor
    # above 1 none, silently.
    min_quality: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False,
                                      description="Benchmarked quality must be >= this (in [0, 1]).")
    max_p95_latency_s: float | None = Field(default=None, gt=0.0, description="Benchmarked p95 must be <= this.")


class CostAwareConfig(PolicyConfig):
    """Config of ``CostAwarePolicy``; ``tasks`` overrides the targets per task."""

    kind: Literal["cost_aware"] = "cost_aware"
    stats_path: PathText | None = Field(default=None, description="Stats file; else the router's context stats.")
    min_quality: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                               description="Quality floor, in [0, 1] as scores are.")
    max_p95_latency_s: float | None = Field(default=None, gt=0.0)
    tasks: dict[str, Targets] = Field(default_factory=dict)
    relative_floor: float | None = Field(
        default=None, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Quality floor as this share of the task's best measured quality, recomputed from the statistics "
                    "in use (so after a refresh from production outcomes too); a task's own `min_quality` wins, and "
                    "`min_quality` stays a lower bound. `genroute compile` and `genroute bench` write 0.95.")
    use_ci_low: bool = Field(default=False, description="Compare the CI's lower bound, not the mean.")
    min_n: int = Field(default=1, ge=1, description="Ignore entries measured on fewer records.")
    candidates: tuple[str, ...] | None = Field(default=None, description="Only these backends (default: all).")
    fallbacks: int = Field(default=0, ge=0, description="Next-cheapest eligible backends added as rungs.")
    default: str = Field(min_length=1, description="Used when no backend meets the targets.")


class CostAwarePolicy(Policy):
    """Cheapest eligible backend for the task (ties: higher quality, then lower p50, then name)."""

    kind = "cost_aware"
    Config = CostAwareConfig
    config: CostAwareConfig

    def __init__(self, config: CostAwareConfig) -> None:
        super().__init__(config)
        # Read once at build: decisions never touch the disk.
        self._stats = BenchStats.load(config.stats_path, field=f"{self.field}.stats_path") \
            if config.stats_path else None

    def _targets(self, task: str | None, measured: Mapping[str, BackendStats]) -> tuple[float, float | None]:
        override = self.config.tasks.get(task) if task is not None else None
        floor = override.min_quality if override and override.min_quality is not None else self.config.min_quality
        counted = [self._quality(e) for e in measured.values() if e.n >= self.config.min_n]
        if (override is None or override.min_quality is None) and self.config.relative_floor is not None and counted:
            # Relative to what the statistics in use say is best: a floor frozen at compile time would, once
            # production outcomes put every backend below it, send the task to the default for good.
            floor = max(floor, self.config.relative_floor * max(counted))
        slo = override.max_p95_latency_s if override and override.max_p95_latency_s is not None \
            else self.config.max_p95_latency_s
        return floor, slo

    def _quality(self, entry: BackendStats) -> float:
        return entry.quality_ci[0] if self.config.use_ci_low and entry.quality_ci else entry.quality

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        stats = self._stats if self._stats is not None else context.stats
        if not isinstance(stats, BenchStats):
            return self._default("no benchmark statistics loaded")
        allowed = self.config.candidates
        measured = {backend: entry for backend, entry in stats.for_task(request.task).items()
                    if backend in context.catalogue and (allowed is None or backend in allowed)}
        floor, slo = self._targets(request.task, measured)
        eligible: list[tuple[str, BackendStats]] = []
        for backend, entry in measured.items():
            if entry.n < self.config.min_n or self._quality(entry) < floor:
                continue
            if slo is not None and (entry.latency_p95_s is None or entry.latency_p95_s > slo):
                continue  # an unrecorded latency does not meet the SLO
            eligible.append((backend, entry))
        if not eligible:
            return self._default(f"none of {len(measured)} measured backend(s) for task {request.task!r} "
                                 f"has quality >= {floor:g}" + (f" and p95 <= {slo:g}s" if slo else ""))
        # Ties: the higher quality, the lower p50 (unrecorded after recorded), then the name: not the statistics
        # file's order, so that a decision does not move when a refresh merges entries in another order.
        eligible.sort(key=lambda be: (be[1].cost_per_request_usd, -self._quality(be[1]),
                                      math.inf if be[1].latency_p50_s is None else be[1].latency_p50_s, be[0]))
        backend, entry = eligible[0]
        rungs = tuple(Rung(backend=b) for b, _ in eligible[: 1 + self.config.fallbacks])
        p95 = "latency not recorded" if entry.latency_p95_s is None else f"p95 {entry.latency_p95_s:.3g}s"
        slo_text = f", {p95} <= {slo:g}s" if slo is not None else f", {p95}"
        reason = (f"cost_aware: {backend} for task {request.task!r}: quality {self._quality(entry):.3g} >= "
                  f"{floor:g}{slo_text}, ${entry.cost_per_request_usd:.6g}/request "
                  f"(cheapest of {len(eligible)} eligible)")
        return Decision(policy=self.name, rungs=rungs, reason=reason)

    def compiled_inputs(self) -> frozenset[str]:
        return BenchStats.inputs_of(self._stats)

    def refreshed(self, update: PolicyUpdate) -> CostAwarePolicy | None:
        """A copy whose statistics are these with the outcome statistics merged in (outcomes win per task and
        backend once measured on ``min_n`` records)."""
        if not update.stats.tasks:
            return None
        base = self._stats if self._stats is not None else update.context.stats
        new = copy.copy(self)
        new._stats = (base if isinstance(base, BenchStats) else BenchStats()).merged(update.stats)
        return new

    def _default(self, why: str) -> Decision:
        return Decision.single(self.name, self.config.default, f"cost_aware: {why} -> default {self.config.default}")

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(self.config.default, f"{self.field}.default")]
        named += [(b, f"{self.field}.candidates.{i}") for i, b in enumerate(self.config.candidates or ())]
        check_backends(catalogue, named)
        # A stats file from another config (its backends renamed or removed) would send every request to the
        # default, each decision saying no backend met the floor.
        if self._stats is not None and self._stats.tasks:
            measured = {b for by in self._stats.tasks.values() for b in by}
            if not measured & set(catalogue):
                raise ConfigError(f"the stats file measured none of the router's backends (it measured "
                                  f"{', '.join(sorted(measured))}; the router has {', '.join(sorted(catalogue))})",
                                  field=f"{self.field}.stats_path")
