"""An outcome matrix is kept as numbers while its file is read and while its statistics are made, not as a validated
model per cell."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from pathlib import Path

import pytest

from genroute.bench.compile import stats_from
from genroute.bench.matrix_routers import cost_aware_choices
from genroute.bench.matrix_stats import matrix_stats, matrix_summaries
from genroute.bench.outcomes import MATRIX_SCORER, OutcomeMatrix, load_matrix
from genroute.bench.report import summarize
from genroute.bench.runner import Outcome


def test_loading_a_matrix_does_not_hold_a_model_per_cell(tmp_path: Path) -> None:
    # load_matrix kept every record's Side models until it had read the whole file (it needs every candidate's
    # name first): 911 bytes a cell at the peak here, 2.8 GB for 100,000 records of 29 candidates
    # (benchmarks/matrix_scale.py). Each side is now its numbers in typed arrays: 192 bytes a cell here.
    rng = random.Random(0)
    rows, candidates = 2000, 29
    path = tmp_path / "matrix.jsonl"
    path.write_text("".join(json.dumps({
        "input": f"question {i}", "metadata": {"task": f"t{i % 5}", "id": f"q{i}"},
        "outcomes": {f"m{j:02d}": {"score": float(rng.random() < 0.5), "cost_usd": 1e-4 * (j + 1)}
                     for j in range(candidates)}}) + "\n" for i in range(rows)), encoding="utf-8")
    tracemalloc.start()
    try:
        matrix = load_matrix(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert matrix.scores.shape == (rows, candidates) and matrix.costs[0, 3] == 4e-4
    assert peak / (rows * candidates) < 400


def _matrix(rows: int, candidates: int, *, seed: int = 0, binary: bool = True) -> OutcomeMatrix:
    rng = random.Random(seed)
    return load_matrix([{
        "input": f"question {i}", "metadata": {"id": f"q{i}", **({"task": f"t{i % 7}"} if i % 11 else {})},
        "outcomes": {f"m{j}": {"score": float(rng.random() < 0.5) if binary else round(rng.random(), 3),
                               "cost_usd": 1e-4 * (j + 1) * rng.random(),
                               **({"latency_s": rng.random()} if (i + j) % 3 else {})}
                     for j in range(candidates)}} for i in range(rows)])


def test_the_cost_aware_step_does_not_make_an_outcome_object_per_cell() -> None:
    # The cost_aware step (and stats.json, and the report's table) made the matrix an Outcome model per cell:
    # 84,000 of them, ~96 MB, for the training part of 20,000 records x 6 candidates. The statistics are now made
    # from the matrix's columns: 1,812 bytes a cell at the peak here before, 39 after.
    train = _matrix(6000, 6)
    tracemalloc.start()
    try:
        choices = cost_aware_choices(train, train, [0.9])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert choices[0][1].shape == (6000,)
    assert peak / train.scores.size < 200


@pytest.mark.parametrize("binary", [True, False])
def test_a_matrix_summarises_as_its_outcome_rows_would(binary: bool) -> None:
    # The statistics from the matrix's arrays are those of the Outcome rows it stands for, bit for bit (0/1 scores
    # take the exact interval, other scores the bootstrap; a latency the file did not give is unknown).
    matrix = _matrix(300, 4, seed=3, binary=binary)
    rows = [Outcome(backend=c, record_id=r.id, task=r.task, ok=True, score=float(matrix.scores[i, j]),
                    scorer=MATRIX_SCORER, cost_usd=float(matrix.costs[i, j]),
                    latency_s=None if math.isnan(matrix.latencies[i, j]) else float(matrix.latencies[i, j]))
            for j, c in enumerate(matrix.candidates) for i, r in enumerate(matrix.records)]
    assert matrix_summaries(matrix, n_boot=300) == summarize(rows, n_boot=300)
    ours, theirs = matrix_stats(matrix, n_boot=300), stats_from(rows, n_boot=300)
    assert list(ours.tasks) == list(theirs.tasks) and "*" in ours.tasks
    assert ours.model_dump(exclude={"created_at"}) == theirs.model_dump(exclude={"created_at"})


def test_matrix_statistics_refuse_what_is_not_a_matrix() -> None:
    from genroute.errors import UsageError

    for call in (matrix_summaries, matrix_stats):
        with pytest.raises(UsageError) as err:
            call("matrix.jsonl")  # type: ignore[arg-type]
        assert err.value.field == "matrix" and "load_matrix" in err.value.message
