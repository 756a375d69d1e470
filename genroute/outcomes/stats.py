"""Statistics from outcome records: what ``cost_aware`` reads (``BenchStats``) and what ``learned`` trains on.

The same records come from a benchmark, a public outcome matrix or production (shadows and feedback), so one
function serves ``Router.refresh``, ``genroute compile --outcomes`` and the graduation step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence, Set
from typing import Any, Protocol

from genroute.errors import ConfigError
from genroute.outcomes.records import OutcomeRecord, Side
from genroute.policies.stats import ANY_TASK, BackendStats, BenchStats


class SideFigures(Protocol):
    """What the statistics read of a side: a ``Side``, or the compact form ``RunningOutcomes`` keeps."""

    @property
    def score(self) -> float | None: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def latency_s(self) -> float: ...
    @property
    def cloud_equivalent_cost_usd(self) -> float | None: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def model_fields_set(self) -> Set[str]: ...


class RecordFigures(Protocol):
    """What ``training_rows`` reads of a record: an ``OutcomeRecord``, or the compact form ``RunningOutcomes`` keeps."""

    @property
    def input(self) -> str | None: ...
    @property
    def id(self) -> str: ...
    @property
    def task(self) -> str | None: ...
    @property
    def outcomes(self) -> Mapping[str, SideFigures]: ...


def side_cost(side: SideFigures, cloud: bool) -> float:
    """A side's cost: measured, or (``cloud``) what the same tokens cost on the reference cloud model."""
    return (side.cloud_equivalent_cost_usd or 0.0) if cloud else side.cost_usd


def has_cost(side: SideFigures, cloud: bool) -> bool:
    """Whether ``side_cost`` is a recorded cost: a side written without one (a label-only side whose shadow write
    was lost) reads as 0.0, which is unknown, not free."""
    return side.cloud_equivalent_cost_usd is not None if cloud else "cost_usd" in side.model_fields_set


def has_latency(side: SideFigures) -> bool:
    """Whether the side's ``latency_s`` was recorded (its 0.0 default is unknown, not instant)."""
    return "latency_s" in side.model_fields_set


def uses_cloud_equivalent(records: Sequence[RecordFigures]) -> bool:
    """True when every priced side is free but has a cloud-equivalent (local models): price by that instead."""
    return sides_use_cloud_equivalent([s for r in records for s in r.outcomes.values()])


def sides_use_cloud_equivalent(sides: Sequence[SideFigures]) -> bool:
    """``uses_cloud_equivalent`` for a list of sides (those with no cost of either kind are not priced)."""
    priced = [s for s in sides if has_cost(s, cloud=False) or has_cost(s, cloud=True)]
    return bool(priced) and all(s.cost_usd == 0 and s.cloud_equivalent_cost_usd is not None for s in priced)


def scored_sides(records: Sequence[OutcomeRecord]) -> dict[str, dict[str, list[Side]]]:
    """Every scored side, by task and backend."""
    by_task: dict[str, dict[str, list[Side]]] = {}
    for record in records:
        for backend, side in record.outcomes.items():
            if side.score is not None:
                by_task.setdefault(record.task or ANY_TASK, {}).setdefault(backend, []).append(side)
    return by_task


def unmeasured(sides: Sequence[SideFigures], cloud: bool) -> str | None:
    """Why ``outcome_stats`` leaves these sides' entry out, if it does: none has a recorded cost."""
    if not any(has_cost(s, cloud) for s in sides):
        return f"none of its {len(sides)} scored sides has a recorded " + (
            "cloud_equivalent_cost_usd" if cloud else "cost_usd")
    return None


def outcome_stats(records: Sequence[OutcomeRecord], *, min_n: int = 1, source: str | None = None,
                  cloud: bool | None = None, seed: int = 0) -> BenchStats:
    """Per task and backend: n, mean score with its 95 % CI (``quality_ci``), latency p50/p95, mean cost and tokens.

    Only scored sides count for quality; entries scored on fewer than ``min_n`` records are left out (so they
    do not override a benchmark's figures on too little evidence). Cost and latency are over the sides that
    recorded them (``cost_n``, ``latency_n`` say how many when fewer than ``n``: a missing cost is unknown, not
    free); an entry where no side recorded a cost is left out too (``unmeasured`` says why), and one where none
    recorded a latency has none (``None``, not 0 s).
    """
    cloud = uses_cloud_equivalent(records) if cloud is None else cloud
    tasks: dict[str, dict[str, BackendStats]] = {}
    for task, by_backend in scored_sides(records).items():
        for backend, sides in by_backend.items():
            entry = backend_stats(task, backend, sides, cloud=cloud, min_n=min_n, seed=seed)
            if entry is not None:
                tasks.setdefault(task, {})[backend] = entry
    return stats_of(tasks, source=source)


def stats_of(tasks: dict[str, dict[str, BackendStats]], *, source: str | None = None) -> BenchStats:
    """``BenchStats`` of these entries, created now."""
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return BenchStats(created_at=created, source=source or "outcomes", tasks=tasks)


def backend_stats(task: str, backend: str, sides: Sequence[SideFigures], *, cloud: bool, min_n: int = 1,
                  seed: int = 0) -> BackendStats | None:
    """``outcome_stats``'s entry for one task and backend from its scored sides (in record order); ``None``: left
    out (fewer than ``min_n`` sides, or none with a recorded cost)."""
    import numpy as np

    from genroute.bench.stats import quality_ci

    if len(sides) < min_n:
        return None
    scores = [float(s.score) for s in sides]  # type: ignore[arg-type]
    quality = float(np.mean(scores))
    if not 0.0 <= quality <= 1.0:  # a scorer on another scale (0-10, BLEU x 100), or NaN
        raise ConfigError(f"the outcome scores of {backend!r} on task {task!r} average {quality:g}: "
                          "scores must be in [0, 1]", field="outcomes.scorer")
    if unmeasured(sides, cloud) is not None:
        return None
    latency = np.asarray([s.latency_s for s in sides if has_latency(s)])
    costs = np.asarray([side_cost(s, cloud) for s in sides if has_cost(s, cloud)])
    return BackendStats(
        n=len(sides), quality=quality, quality_ci=quality_ci(scores, seed=seed),
        cost_n=len(costs) if len(costs) < len(sides) else None,
        latency_n=len(latency) if len(latency) < len(sides) else None,
        metric="outcomes", latency_p50_s=float(np.quantile(latency, 0.5)) if len(latency) else None,
        latency_p95_s=float(np.quantile(latency, 0.95)) if len(latency) else None,
        cost_per_request_usd=float(costs.mean()),
        cost_p95_usd=float(np.quantile(costs, 0.95)), cost_max_usd=float(costs.max()),
        input_tokens_mean=float(np.mean([s.input_tokens for s in sides])),
        output_tokens_mean=float(np.mean([s.output_tokens for s in sides])))


def training_rows(records: Sequence[RecordFigures], *, cloud: bool | None = None) -> list[dict[str, Any]]:
    """Rows for ``genroute.policies.learned.train``: every scored side of every record that has its input.

    A side without a recorded cost takes its backend's mean recorded cost (it is unknown, not free: as 0 it made
    that backend the cheapest right answer); a backend with no recorded cost at all is left out, as the statistics
    leave it out.
    """
    cloud = uses_cloud_equivalent(records) if cloud is None else cloud
    known: dict[str, list[float]] = {}
    for record in records:
        for backend, side in record.outcomes.items():
            if side.score is not None and has_cost(side, cloud):
                known.setdefault(backend, []).append(side_cost(side, cloud))
    mean = {backend: sum(costs) / len(costs) for backend, costs in known.items()}
    return [{"input": r.input, "backend": backend, "score": float(side.score),
             "cost_usd": side_cost(side, cloud) if has_cost(side, cloud) else mean[backend],
             "record_id": r.id, "task": r.task}
            for r in records if r.input for backend, side in r.outcomes.items()
            if side.score is not None and backend in mean]
