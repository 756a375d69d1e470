"""The ``cost_aware`` policy compiled from measured statistics (each task's quality floor, the default backend),
and the router policy configs a compile writes beside its ``stats.json``, so that a router given one decides as
the compiled policy did (a ``cost_aware`` policy given ``stats_path`` alone has a floor of 0: the cheapest
backend)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from genroute.policies.cost_aware import CostAwareConfig, CostAwarePolicy
from genroute.policies.stats import BenchStats


def cost_aware_policy(train_stats: BenchStats, backends: Sequence[str], *, min_quality: float | None = None,
                      relative_floor: float = 0.95) -> tuple[CostAwarePolicy, dict[str, float]]:
    """The compiled ``cost_aware`` policy and its floor per task: ``min_quality``, else ``relative_floor`` x
    the task's best training quality (one global floor would hold an easy task to a hard task's level)."""
    floors = {task: min_quality if min_quality is not None else relative_floor * max(s.quality for s in by.values())
              for task, by in train_stats.tasks.items()}
    default = default_backend(train_stats, backends)
    if min_quality is None:
        # Relative, not each task's number frozen: refreshed from production outcomes, the policy then holds a task
        # to its best backend as measured now (a floor above every backend sent the task to the default).
        return CostAwarePolicy(CostAwareConfig(relative_floor=relative_floor, default=default)), floors
    policy = CostAwarePolicy(CostAwareConfig(min_quality=min_quality, default=default))
    return policy, floors


def write_cost_aware_config(path: Path, stats_path: Path, backends: Sequence[str], *,
                            min_quality: float | None = None, relative_floor: float = 0.95) -> Path:
    """The ``cost_aware`` policy config compiled on ``stats_path`` (each task's floor, the default) written to
    ``path``, so that a router given it decides as the compiled ``cost_aware`` row does."""
    policy, _ = cost_aware_policy(BenchStats.load(stats_path), list(backends), min_quality=min_quality,
                                  relative_floor=relative_floor)
    return write_policy(path, {
        "kind": "cost_aware", "stats_path": str(Path(stats_path).resolve()),
        **policy.config.model_dump(mode="json", exclude_defaults=True, exclude={"kind", "stats_path"})})


def write_policy(path: Path, body: Mapping[str, Any]) -> Path:
    """A policy config written to ``path`` as JSON (atomically)."""
    from genroute.cache import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode(), same_mode=True)
    return path


def drop_stale(*paths: Path) -> list[Path]:
    """Remove the files of ``paths`` an earlier compile wrote that this one does not write again (a policy config or
    model beside a new ``stats.json`` that no longer backs it would route as the earlier data said); the removed."""
    removed = []
    for path in paths:
        try:  # one call, no check before it that a swap could outrun; a link is removed, never what it points at
            os.unlink(path)
        except (FileNotFoundError, IsADirectoryError):  # not there, or not a compile's file
            continue
        removed.append(path)
    return removed


def default_backend(stats: BenchStats, backends: Sequence[str]) -> str:
    """A compiled policy's default: the best mean quality over the tasks that measured it; at equal quality (to 9
    decimals) the cheaper (mean cost per request), then the faster (mean p50 latency; unrecorded after recorded),
    then the first name, a stable last resort (the first name alone sent a tie to a priced cloud model over a free
    local one)."""
    def rank(backend: str) -> tuple[float, float, float, str]:
        entries = [by[backend] for by in stats.tasks.values() if backend in by]
        cost = _mean([e.cost_per_request_usd for e in entries])
        latency = _mean([e.latency_p50_s for e in entries if e.latency_p50_s is not None])
        return (-round(mean_quality(stats, backend), 9), math.inf if cost is None else cost,
                math.inf if latency is None else latency, backend)

    return min(backends, key=rank)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mean_quality(stats: BenchStats, backend: str) -> float:
    """``backend``'s quality averaged over the tasks that measured it."""
    values = [by[backend].quality for by in stats.tasks.values() if backend in by]
    return sum(values) / len(values) if values else 0.0
