"""Statistics from outcome records: what ``cost_aware`` reads (``BenchStats``) and what ``learned`` trains on.

The same records come from a benchmark, a public outcome matrix or production (shadows and feedback), so one
function serves ``Router.refresh``, ``genroute compile --outcomes`` and the graduation step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from genroute.errors import ConfigError
from genroute.outcomes.records import OutcomeRecord, Side
from genroute.policies.stats import ANY_TASK, BackendStats, BenchStats


def side_cost(side: Side, cloud: bool) -> float:
    """A side's cost: measured, or (``cloud``) what the same tokens cost on the reference cloud model."""
    return (side.cloud_equivalent_cost_usd or 0.0) if cloud else side.cost_usd


def uses_cloud_equivalent(records: Sequence[OutcomeRecord]) -> bool:
    """True when every priced side is free but has a cloud-equivalent (local models): price by that instead."""
    return sides_use_cloud_equivalent([s for r in records for s in r.outcomes.values()])


def sides_use_cloud_equivalent(sides: Sequence[Side]) -> bool:
    """``uses_cloud_equivalent`` for a list of sides."""
    return bool(sides) and all(s.cost_usd == 0 and s.cloud_equivalent_cost_usd is not None for s in sides)


def outcome_stats(records: Sequence[OutcomeRecord], *, min_n: int = 1, source: str | None = None,
                  cloud: bool | None = None, seed: int = 0) -> BenchStats:
    """Per task and backend: n, mean score with its 95 % CI (``quality_ci``), latency p50/p95, mean cost and tokens.

    Only scored sides count for quality; entries scored on fewer than ``min_n`` records are left out (so they
    do not override a benchmark's figures on too little evidence).
    """
    import numpy as np

    from genroute.bench.stats import quality_ci

    cloud = uses_cloud_equivalent(records) if cloud is None else cloud
    by_task: dict[str, dict[str, list[Side]]] = {}
    for record in records:
        for backend, side in record.outcomes.items():
            if side.score is not None:
                by_task.setdefault(record.task or ANY_TASK, {}).setdefault(backend, []).append(side)
    tasks: dict[str, dict[str, BackendStats]] = {}
    for task, by_backend in by_task.items():
        for backend, sides in by_backend.items():
            if len(sides) < min_n:
                continue
            scores = [float(s.score) for s in sides]  # type: ignore[arg-type]
            quality = float(np.mean(scores))
            if not 0.0 <= quality <= 1.0:  # a scorer on another scale (0-10, BLEU x 100), or NaN
                raise ConfigError(f"the outcome scores of {backend!r} on task {task!r} average {quality:g}: "
                                  "scores must be in [0, 1]", field="outcomes.scorer")
            latency = np.asarray([s.latency_s for s in sides])
            costs = np.asarray([side_cost(s, cloud) for s in sides])
            tasks.setdefault(task, {})[backend] = BackendStats(
                n=len(sides), quality=quality, quality_ci=quality_ci(scores, seed=seed),
                metric="outcomes", latency_p50_s=float(np.quantile(latency, 0.5)),
                latency_p95_s=float(np.quantile(latency, 0.95)), cost_per_request_usd=float(costs.mean()),
                cost_p95_usd=float(np.quantile(costs, 0.95)), cost_max_usd=float(costs.max()),
                input_tokens_mean=float(np.mean([s.input_tokens for s in sides])),
                output_tokens_mean=float(np.mean([s.output_tokens for s in sides])))
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return BenchStats(created_at=created, source=source or "outcomes", tasks=tasks)


def training_rows(records: Sequence[OutcomeRecord], *, cloud: bool | None = None) -> list[dict[str, Any]]:
    """Rows for ``genroute.policies.learned.train``: every scored side of every record that has its input."""
    cloud = uses_cloud_equivalent(records) if cloud is None else cloud
    return [{"input": r.input, "backend": backend, "score": float(side.score), "cost_usd": side_cost(side, cloud),
             "record_id": r.id, "task": r.task}
            for r in records if r.input for backend, side in r.outcomes.items() if side.score is not None]
