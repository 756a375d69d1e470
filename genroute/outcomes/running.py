"""The outcome statistics a router refreshes from, kept up to date from what its store wrote since the last read.

``Router.refresh`` used to read every record and recompute every statistic on each call. ``RunningOutcomes`` asks
the store for the records written since its place (``changes``: both stores keep one), folds them in, and
recomputes only the entries (task, backend) those records touched: the result equals ``outcome_stats`` and
``training_rows`` over a full read, which it does again only when the store says the place is lost.

It keeps every record for the process's life, so not as the parsed ``OutcomeRecord`` (~5 KB a record with its
metadata, ~9x its JSON): only what the statistics and the training rows read of it (its place, task, captured
input, and each side's figures as a tuple of numbers: ~1 KB; benchmarks/RESULTS.md, "RunningOutcomes memory").
"""

from __future__ import annotations

import sys
from collections.abc import Set
from typing import TYPE_CHECKING, Any

from genroute.outcomes.changes import Changes, Key, Place
from genroute.outcomes.stats import CostSums, EntrySums, stats_of, training_rows
from genroute.policies.stats import ANY_TASK
from genroute.runtime.locks import LoopsLock
from genroute.runtime.threads import to_thread_to_end

if TYPE_CHECKING:
    from genroute.outcomes.records import OutcomeRecord, Side
    from genroute.outcomes.shared import SharedOutcomeStore
    from genroute.outcomes.store import OutcomeStore
    from genroute.policies.stats import BackendStats, BenchStats

Group = tuple[str, str]  # (task, backend)
#: The fields a side was written with, as far as the statistics ask (``has_cost``, ``has_latency``), by its
#: ``Figures``' last number (1: cost_usd written, 2: latency_s): shared.
_SET = [frozenset({"cost_usd"} if written & 1 else set()) | ({"latency_s"} if written & 2 else set())
        for written in range(4)]
#: A side as the statistics read it, kept as a plain tuple of strings and numbers: backend, score, cost_usd,
#: latency_s, cloud_equivalent_cost_usd, input_tokens, output_tokens, and which of cost_usd (1) and latency_s (2)
#: were written. The collector untracks such a tuple; an object of its own a side (and the tuples holding it) was
#: scanned at every full collection, which made the first full fold of 100,000 records ~1.4 s slower
#: (benchmarks/RESULTS.md, "RunningOutcomes memory").
Figures = tuple[str, float | None, float, float, float | None, int, int, int]


def _figures(backend: str, side: Side) -> Figures:
    written = side.model_fields_set
    return (sys.intern(backend), side.score, side.cost_usd, side.latency_s, side.cloud_equivalent_cost_usd,
            side.input_tokens, side.output_tokens, ("cost_usd" in written) | 2 * ("latency_s" in written))


class _Side:
    """A side's ``Figures`` as the statistics read them (``SideFigures``): made for one computation, not kept."""

    __slots__ = ("score", "cost_usd", "latency_s", "cloud_equivalent_cost_usd", "input_tokens", "output_tokens",
                 "model_fields_set")

    def __init__(self, figures: Figures) -> None:
        (_, self.score, self.cost_usd, self.latency_s, self.cloud_equivalent_cost_usd, self.input_tokens,
         self.output_tokens, written) = figures
        self.model_fields_set: Set[str] = _SET[written]


class _Held:
    """A record as the statistics and the training rows read it (``RecordFigures``), with its place in the store's
    order: not its metadata, output or the sides' other fields."""

    __slots__ = ("key", "id", "task", "input", "sides")

    def __init__(self, key: Key, record: OutcomeRecord) -> None:
        self.key, self.id, self.input = key, record.id, record.input
        task = record.task
        self.task = None if task is None else sys.intern(task)
        self.sides = tuple(_figures(backend, side) for backend, side in record.outcomes.items())

    @property
    def outcomes(self) -> dict[str, _Side]:
        return {figures[0]: _Side(figures) for figures in self.sides}


class RunningOutcomes:
    """``outcome_stats`` and ``training_rows`` of a store's records, updated from its changes."""

    def __init__(self, store: OutcomeStore | SharedOutcomeStore, *, min_n: int) -> None:
        self.store = store
        self.min_n = min_n
        #: Reads of every record (the first, and each time the store lost this reader's place).
        self.full_reads = 0
        self._place: Place | None = None
        self._records: dict[str, _Held] = {}
        #: Each entry's scored sides (record id -> the side's index in the record), their sums, and the first side's
        #: place (record key, index; missing: to be found again, that side was taken out).
        self._groups: dict[Group, dict[str, int]] = {}
        self._sums: dict[Group, EntrySums] = {}
        self._costs = CostSums()  # each backend's recorded costs, for the training rows' missing ones
        self._captured: dict[str, _Held] = {}  # the records with an input: those the training rows read
        self._first: dict[Group, tuple[Key, int]] = {}
        self._entries: dict[Group, tuple[tuple[Key, int], BackendStats | None]] = {}  # (first side, entry)
        self._dirty: set[Group] = set()
        self._priced = 0  # sides with a recorded cost of either kind
        self._free = 0  # of those, the free ones with a cloud-equivalent cost (``uses_cloud_equivalent``)
        self._cloud = False  # how the sums price sides (``uses_cloud_equivalent``)
        self._rows: list[dict[str, Any]] | None = None
        self._means: dict[str, float] = {}  # the mean costs ``_rows`` were made with
        self._lock = LoopsLock()  # one read and fold at a time (a refresh on each of two loops)

    async def read(self) -> tuple[BenchStats, list[dict[str, Any]]]:
        """The statistics and training rows of every record the store holds now."""
        async with self._lock:
            changes = await self.store.changes(self._place)
            # To its end, lock held, even if this refresh is cancelled: a fold left running on its thread after the
            # lock was let go folded at the same time as the next refresh's.
            return await to_thread_to_end(self._fold, changes)

    def _fold(self, changes: Changes) -> tuple[BenchStats, list[dict[str, Any]]]:
        if changes.full:
            self.full_reads += 1
            for id in list(self._records):
                self._drop(id)
        for key, record in changes.records:
            self._put(key, record)
        for id in changes.removed:
            self._drop(id)
        self._place = None  # until the statistics are computed: a ConfigError reads everything again next time
        cloud = bool(self._priced) and self._free == self._priced
        if cloud != self._cloud:  # every side priced the other way: counted again
            self._cloud, self._dirty = cloud, set(self._groups)
            self._sums = {group: EntrySums(cloud) for group in self._groups}
            self._costs = CostSums()
            for held in self._records.values():
                for side in held.sides:
                    if side[1] is not None:
                        self._sums[held.task or ANY_TASK, side[0]].add(_Side(side))
                        self._costs.add(side[0], _Side(side), cloud)
        for group in sorted(self._dirty):
            first = self._first.get(group)
            if first is None:  # its first side was taken out
                first = self._first[group] = min((self._records[id].key, index)
                                                 for id, index in self._groups[group].items())
            self._entries[group] = (first, self._sums[group].entry(*group, min_n=self.min_n))
        self._dirty.clear()
        means = self._costs.means()
        if self._rows is None or means != self._means:  # over the captured records, with every record's mean costs
            ordered = sorted(self._captured.values(), key=lambda held: held.key)
            self._rows, self._means = training_rows(ordered, cloud=cloud, means=means), means
        self._place = changes.place
        return self._stats(), self._rows

    def _stats(self) -> BenchStats:
        """The entries in ``outcome_stats``'s order: tasks, then each task's backends, as the records first scored
        them."""
        order = sorted(self._entries.items(), key=lambda item: item[1][0])
        task_first: dict[str, tuple[Key, int]] = {}
        for (task, _), (first, _) in order:
            task_first.setdefault(task, first)
        tasks: dict[str, dict[str, BackendStats]] = {}
        for (task, backend), (_, entry) in sorted(order, key=lambda item: task_first[item[0][0]]):
            if entry is not None:
                tasks.setdefault(task, {})[backend] = entry
        return stats_of(tasks)

    def _put(self, key: Key, record: OutcomeRecord) -> None:
        self._drop(record.id)
        held = self._records[record.id] = _Held(key, record)
        self._count(held, 1)

    def _drop(self, id: str) -> None:
        old = self._records.pop(id, None)
        if old is not None:
            self._count(old, -1)

    def _count(self, record: _Held, sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) ``record``'s sides."""
        if record.input:
            self._rows = None
            if sign > 0:
                self._captured[record.id] = record
            else:
                del self._captured[record.id]
        for index, side in enumerate(record.sides):
            backend, score, cost, _, cloud_cost, _, _, written = side
            if written & 1 or cloud_cost is not None:  # has_cost, measured or cloud-equivalent
                self._priced += sign
                self._free += sign * (cost == 0 and cloud_cost is not None)
            if score is None:
                continue
            group = (record.task or ANY_TASK, backend)
            self._dirty.add(group)
            sides = self._groups.setdefault(group, {})
            view = _Side(side)
            self._costs.add(backend, view, self._cloud, sign)
            place = (record.key, index)
            if sign > 0:
                sides[record.id] = index
                if (sums := self._sums.get(group)) is None:
                    sums = self._sums[group] = EntrySums(self._cloud)
                sums.add(view)
                if group in self._first and place < self._first[group]:
                    self._first[group] = place
                elif len(sides) == 1:
                    self._first[group] = place
                continue
            del sides[record.id]
            self._sums[group].add(view, -1)
            if self._first.get(group) == place:
                del self._first[group]
            if not sides:
                del self._groups[group], self._sums[group]
                self._first.pop(group, None)
                self._entries.pop(group, None)
                self._dirty.discard(group)
