"""Statistics from outcome records: what ``cost_aware`` reads (``BenchStats``) and what ``learned`` trains on.

The same records come from a benchmark, a public outcome matrix or production (shadows and feedback), so one
function serves ``Router.refresh``, ``genroute compile --outcomes`` and the graduation step.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any, Protocol

from genroute.errors import ConfigError
from genroute.exact_sums import Moments, mean, quantile, scaled, scaled_square
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
    """``outcome_stats``'s entry for one task and backend from its scored sides; ``None``: left out (fewer than
    ``min_n`` sides, or none with a recorded cost). ``seed`` is checked, and no longer used (``quality_ci``)."""
    from genroute.bench.stats import check_seed

    check_seed(seed)
    return EntrySums(cloud, sides).entry(task, backend, min_n=min_n)


class EntrySums:
    """What ``backend_stats`` reads of one task and backend's scored sides (priced by ``cloud``), as sums kept up to
    date a side at a time, so that a refresh folds in only the sides written since (a rewritten record: its old
    sides out, its new ones in) where it recomputed the entry over all of them (0.4-1.7 s at 100,000 records).

    The entry equals the one computed again over every side, to the last bit: the means and the variance come from
    exact sums (``genroute.exact_sums``), the quantiles and the largest cost from lists kept sorted, the rest from
    counts (``tests/test_outcome_sums.py`` checks it over random sequences of writes and rewrites).
    """

    __slots__ = ("cloud", "n", "ones", "zeros", "outside", "total", "squares", "odd", "costs", "cost_total",
                 "latencies", "unsorted", "input_tokens", "output_tokens")

    def __init__(self, cloud: bool, sides: Iterable[SideFigures] = ()) -> None:
        self.cloud = cloud
        self.n = self.ones = self.zeros = self.outside = self.total = self.squares = self.cost_total = 0
        self.input_tokens = self.output_tokens = 0
        self.odd: Counter[tuple[str, str]] = Counter()  # (figure, repr) of a NaN or infinite one: refused when read
        self.costs: list[float] = []  # sorted (``_sort``) but for what was added since ``unsorted`` was set
        self.latencies: list[float] = []
        self.unsorted = False
        for side in sides:
            self.add(side)

    def add(self, side: SideFigures, sign: int = 1) -> None:
        """Count ``side`` (scored) in (``sign`` 1), or take it out (-1) as it was counted in."""
        score = float(side.score)  # type: ignore[arg-type]
        self.n += sign
        self.input_tokens += sign * side.input_tokens
        self.output_tokens += sign * side.output_tokens
        if self._finite("score", score, sign):
            self.ones += sign * (score == 1)
            self.zeros += sign * (score == 0)
            self.outside += sign * (not 0.0 <= score <= 1.0)
            self.total += sign * scaled(score)
            self.squares += sign * scaled_square(score)
        if has_cost(side, self.cloud) and self._finite("cost", cost := float(side_cost(side, self.cloud)), sign):
            self.cost_total += sign * scaled(cost)
            self._put(self.costs, cost, sign)
        if has_latency(side) and self._finite("latency", latency := float(side.latency_s), sign):
            self._put(self.latencies, latency, sign)

    def _put(self, values: list[float], value: float, sign: int) -> None:
        """Add ``value`` at the end (an insort moved half the list each time: seconds in a full read of 100,000
        records), or take it away from the list sorted first."""
        if sign > 0:
            values.append(value)
            self.unsorted = True
            return
        self._sort()
        del values[bisect.bisect_left(values, value)]

    def _sort(self) -> None:
        if self.unsorted:  # sorted values with those added since after them: timsort merges the two runs
            self.costs.sort()
            self.latencies.sort()
            self.unsorted = False

    def _finite(self, what: str, value: float, sign: int) -> bool:
        if math.isfinite(value):
            return True
        self.odd[what, repr(value)] += sign
        self.odd = +self.odd  # no zero counts
        return False

    def entry(self, task: str, backend: str, *, min_n: int = 1) -> BackendStats | None:
        """``backend_stats``'s entry: ``None`` below ``min_n`` sides or with no recorded cost; ``ConfigError`` for a
        mean score outside [0, 1] or a cost or latency that is not a finite number."""
        from genroute.bench.stats import quality_ci_of

        if self.n < min_n:
            return None
        odd = [float(value) for what, value in self.odd if what == "score"]
        quality = sum(odd) if odd else mean(self.total, self.n)  # a NaN or infinite score: what a float sum gives
        if not 0.0 <= quality <= 1.0:  # a scorer on another scale (0-10, BLEU x 100), or NaN
            raise ConfigError(f"the outcome scores of {backend!r} on task {task!r} average {quality:g}: "
                              "scores must be in [0, 1]", field="outcomes.scorer")
        if not self.costs and not any(what == "cost" for what, _ in self.odd):
            return None  # ``unmeasured``
        for what, value in self.odd:
            raise ConfigError(f"an outcome {what} of {backend!r} on task {task!r} is {value}: costs and latencies "
                              "must be finite numbers", field=f"outcomes.{backend}")
        self._sort()
        costs, latencies, n = self.costs, self.latencies, self.n
        return BackendStats(
            n=n, quality=quality,
            quality_ci=quality_ci_of(Moments(n, self.total, self.squares), ones=self.ones, zeros=self.zeros,
                                     inside=not self.outside),
            cost_n=len(costs) if len(costs) < n else None, latency_n=len(latencies) if len(latencies) < n else None,
            metric="outcomes", latency_p50_s=quantile(latencies, 0.5) if latencies else None,
            latency_p95_s=quantile(latencies, 0.95) if latencies else None,
            cost_per_request_usd=mean(self.cost_total, len(costs)), cost_p95_usd=quantile(costs, 0.95),
            cost_max_usd=costs[-1], input_tokens_mean=self.input_tokens / n, output_tokens_mean=self.output_tokens / n)


def training_rows(records: Sequence[RecordFigures], *, cloud: bool | None = None,
                  means: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Rows for ``genroute.policies.learned.train``: every scored side of every record that has its input.

    A side without a recorded cost takes its backend's mean recorded cost (``means``: ``cost_means`` of every
    record, given by a caller that keeps them up to date); it is unknown, not free: as 0 it made that backend the
    cheapest right answer. A backend with no recorded cost at all is left out, as the statistics leave it out.
    """
    cloud = uses_cloud_equivalent(records) if cloud is None else cloud
    mean = cost_means(records, cloud) if means is None else means
    return [{"input": r.input, "backend": backend, "score": float(side.score),
             "cost_usd": side_cost(side, cloud) if has_cost(side, cloud) else mean[backend],
             "record_id": r.id, "task": r.task}
            for r in records if r.input for backend, side in r.outcomes.items()
            if side.score is not None and backend in mean]


def cost_means(records: Sequence[RecordFigures], cloud: bool) -> dict[str, float]:
    """Each backend's mean recorded cost over its scored sides (the float nearest the exact mean: ``CostSums``)."""
    sums = CostSums()
    for record in records:
        for backend, side in record.outcomes.items():
            sums.add(backend, side, cloud)
    return sums.means()


class CostSums:
    """``cost_means``' sums, kept up to date a side at a time: (count, ``scaled`` sum, non-finite ones) by backend."""

    def __init__(self) -> None:
        self.by_backend: dict[str, list[Any]] = {}

    def add(self, backend: str, side: SideFigures, cloud: bool, sign: int = 1) -> None:
        if side.score is None or not has_cost(side, cloud):
            return
        cost = float(side_cost(side, cloud))
        kept = self.by_backend.get(backend)
        if kept is None:  # (not ``setdefault``: a Counter made for each side cost ~30 % of a full fold)
            kept = self.by_backend[backend] = [0, 0, Counter()]
        kept[0] += sign
        if math.isfinite(cost):
            kept[1] += sign * scaled(cost)
        else:
            kept[2][repr(cost)] += sign
            kept[2] = +kept[2]
        if not kept[0]:
            del self.by_backend[backend]

    def means(self) -> dict[str, float]:
        """Each backend's mean (a NaN or infinite cost among them: what a float sum gives)."""
        return {backend: sum(float(v) for v in odd) if odd else mean(total, n)
                for backend, (n, total, odd) in self.by_backend.items()}
