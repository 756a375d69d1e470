"""A refresh folds the sides written since into each touched entry's running sums (``EntrySums``) instead of
recomputing the entry over every side it holds: the statistics equal a full recompute's to the last bit, over random
sequences of new records, rewrites (a feedback's score, a side's cost or latency written later, a record moved to
another task) and drops; and a refresh of one new record reads that record, not the entry's other sides."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genroute import ConfigError
from genroute.bench.stats import quality_ci
from genroute.exact_sums import Moments, quantile
from genroute.outcomes import OutcomeRecord, Side
from genroute.outcomes import running as running_module
from genroute.outcomes.changes import Changes, Place
from genroute.outcomes.running import RunningOutcomes
from genroute.outcomes.stats import outcome_stats, training_rows

SCORES = st.one_of(st.none(), st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
FIGURES = st.one_of(st.floats(0.0, 10.0), st.sampled_from([0.0, 1e-6, 0.1, 0.25]))


@st.composite
def sides(draw: Any) -> dict[str, Side]:
    found = {}
    for backend in draw(st.lists(st.sampled_from(["local", "pro", "chat"]), min_size=1, max_size=3, unique=True)):
        fields: dict[str, Any] = {"score": draw(SCORES), "input_tokens": draw(st.integers(0, 500)),
                                  "output_tokens": draw(st.integers(0, 50))}
        if draw(st.booleans()):
            fields["cost_usd"] = draw(FIGURES)
        if draw(st.booleans()):
            fields["latency_s"] = draw(FIGURES)
        if draw(st.integers(0, 3)) == 0:
            fields["cloud_equivalent_cost_usd"] = draw(FIGURES)
        found[backend] = Side(**fields)
    return found


# One step: write record ``slot`` (new, or a rewrite keeping its place), or drop it.
STEPS = st.lists(st.tuples(st.integers(0, 11), st.sampled_from(["t", "u", None]), sides(),
                           st.integers(0, 5), st.booleans()), min_size=1, max_size=40)


def same(got: Any, expected: Any) -> None:
    assert got.tasks == expected.tasks
    assert [(t, list(by)) for t, by in got.tasks.items()] == [(t, list(by)) for t, by in expected.tasks.items()]
    for task, by in expected.tasks.items():  # to the bit: == takes -0.0 for 0.0 and no NaN gets here
        for backend, entry in by.items():
            assert repr(got.tasks[task][backend].model_dump()) == repr(entry.model_dump())


@settings(max_examples=150, deadline=None)
@given(STEPS, st.integers(1, 3))
def test_folded_statistics_equal_a_full_recompute_after_every_write(steps, min_n) -> None:
    running = RunningOutcomes(None, min_n=min_n)  # type: ignore[arg-type]  # folded directly: no store
    held: dict[str, tuple[tuple[float, str], OutcomeRecord]] = {}
    pending: dict[str, tuple[tuple[float, str], OutcomeRecord] | None] = {}  # since the last fold (None: dropped)
    for at, (slot, task, written, batch, drop) in enumerate(steps):
        id = f"r{slot}"
        key = held[id][0] if id in held else (float(at), id)  # a rewrite keeps the record's place
        if drop and id in held:
            del held[id]
            pending[id] = None
        else:
            metadata = {"id": id} if task is None else {"id": id, "task": task}
            new = OutcomeRecord(input=f"q{slot}" if batch % 2 else None, metadata=metadata, outcomes=written)
            held[id] = pending[id] = (key, new)
        if batch > 1 and at < len(steps) - 1:  # folded with the next writes (several a refresh)
            continue
        changes = Changes(place=Place("p", at), full=False,
                          records=[change for change in pending.values() if change is not None],
                          removed=[id for id, change in pending.items() if change is None])
        pending.clear()
        ordered = [record for _, record in sorted(held.values(), key=lambda item: item[0])]
        try:
            expected = outcome_stats(ordered, min_n=min_n)
        except ConfigError:
            with pytest.raises(ConfigError):
                running._fold(changes)
            return
        stats, rows = running._fold(changes)
        same(stats, expected)
        assert rows == training_rows(ordered)


def test_a_refresh_of_one_new_record_reads_that_record_not_the_entrys_other_sides(monkeypatch) -> None:
    # Each scored side the statistics read is viewed through a ``_Side`` made for it: a refresh counted every side of
    # each entry it touched (100,000 at 100,000 records, 0.4-1.7 s), where it needs only the record written since.
    rng = random.Random(1)
    records = [OutcomeRecord(metadata={"id": f"r{i}", "task": "t"}, outcomes={
        "chat": Side(score=float(rng.random() < 0.8), cost_usd=1e-5, latency_s=rng.uniform(0.2, 2.0)),
        "pro": Side(score=rng.random(), cost_usd=4e-5, latency_s=rng.uniform(0.5, 4.0))}) for i in range(2_000)]
    running = RunningOutcomes(None, min_n=1)  # type: ignore[arg-type]
    running._fold(Changes(place=Place("p", 1), full=True, records=[((float(i), r.id), r) for i, r in
                                                                      enumerate(records)]))
    made = []
    view = running_module._Side

    def counted(figures: Any) -> Any:
        made.append(figures)
        return view(figures)

    monkeypatch.setattr(running_module, "_Side", counted)
    new = OutcomeRecord(metadata={"id": "new", "task": "t"}, outcomes={"chat": Side(score=1.0, cost_usd=1e-5)})
    stats, _ = running._fold(Changes(place=Place("p", 2), full=False, records=[((2_000.0, "new"), new)]))
    assert len(made) <= 2  # the new record's one scored side
    same(stats, outcome_stats([*records, new]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]))
def test_quantile_of_a_sorted_list_is_numpys(values, q) -> None:
    assert quantile(sorted(values), q) == float(np.quantile(np.asarray(values), q))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3) | st.floats(0.0, 1.0), min_size=2, max_size=40))
def test_exact_sums_give_the_nearest_float_to_the_mean_and_variance(values) -> None:
    moments = Moments.of(values)
    exact = [Fraction(v) for v in values]
    total = sum(exact)
    assert moments.mean == float(total / len(values))
    assert moments.variance == float(sum((v - total / len(values)) ** 2 for v in exact) / (len(values) - 1))
    assert moments.constant == (len(set(values)) == 1)
    low, high = quality_ci(values) if all(0 <= v <= 1 for v in values) else (0.0, 1.0)
    assert math.isfinite(low) and math.isfinite(high)
