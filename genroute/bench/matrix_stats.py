"""An outcome matrix's summaries and ``BenchStats``, from its score, cost and latency arrays.

The same statistics as ``summarize`` and ``stats_from`` give an outcome list (``genroute.bench.report.summary_of`` is
the one implementation), without an ``Outcome`` object per cell: 120,000 of them for 20,000 records of 6 candidates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from genroute.bench.compile import stats_of
from genroute.bench.outcomes import MATRIX_SCORER, OutcomeMatrix
from genroute.bench.report import Summary, summary_of
from genroute.errors import UsageError
from genroute.policies.stats import ANY_TASK, BenchStats

if TYPE_CHECKING:
    from numpy.typing import NDArray


def matrix_summaries(matrix: OutcomeMatrix, rows: NDArray[Any] | None = None, *, seed: int = 0,
                     n_boot: int = 2000) -> list[Summary]:
    """One summary per candidate (in the matrix's order) over ``rows`` (record indices; ``None``: every record).
    A latency the file did not record is unknown, not 0 s."""
    _check(matrix)
    take = np.arange(len(matrix.records)) if rows is None else rows
    summaries = []
    for j, candidate in enumerate(matrix.candidates):
        latencies = matrix.latencies[take, j]
        summaries.append(summary_of(candidate, MATRIX_SCORER, matrix.scores[take, j].tolist(),
                                    matrix.costs[take, j].tolist(), latencies[~np.isnan(latencies)].tolist(),
                                    seed=seed, n_boot=n_boot))
    return summaries


def matrix_stats(matrix: OutcomeMatrix, *, source: str | None = None, seed: int = 0,
                 n_boot: int = 2000) -> BenchStats:
    """``BenchStats`` per task (in the order tasks first appear; records without one under ``*``) and candidate."""
    _check(matrix)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(matrix.tasks):
        by_task.setdefault(task or ANY_TASK, []).append(i)
    return stats_of({task: matrix_summaries(matrix, np.array(rows, dtype=np.intp), seed=seed, n_boot=n_boot)
                     for task, rows in by_task.items()}, source=source)


def _check(matrix: object) -> None:
    if not isinstance(matrix, OutcomeMatrix):  # a path or records: an AttributeError deep inside
        raise UsageError(f"must be an OutcomeMatrix (load_matrix reads one), not {type(matrix).__name__}",
                         field="matrix")
