"""The outcomes of a matrix file as flat numbers, a cell per (record, candidate) side, while the file is read.

``load_matrix`` cannot know the candidates before it has read every record (it routes between the ones the file
names), so it keeps each side until the end. Kept as the validated ``Side`` models, 100,000 records of 29
candidates took 2.8 GB; here a cell is its numbers in typed arrays (a few dozen bytes), and only the token counts an
outcome recorded (rare in published matrices) are kept as Python objects.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from genroute.outcomes.records import OutcomeRecord


class MatrixCells:
    """Each side read so far: its record's row, its candidate's column, score (NaN: unscored), ``cost_usd`` and
    latency (NaN: not given), and the token counts it recorded."""

    def __init__(self) -> None:
        self.columns: dict[str, int] = {}  # candidate -> column, in the order first seen
        self._row, self._col = array("q"), array("q")
        self._score, self._cost, self._latency = array("d"), array("d"), array("d")
        self.tokens: dict[int, tuple[int | None, int | None]] = {}  # cell -> the (input, output) tokens recorded
        self.unscored = ""  # where the first side without a score is, and its keys

    def add(self, row: int, where: str, record: OutcomeRecord) -> None:
        """Keep ``record``'s sides as the cells of ``row``."""
        for name, side in record.outcomes.items():
            given = side.model_fields_set
            if "input_tokens" in given or "output_tokens" in given:
                self.tokens[len(self._row)] = (side.input_tokens if "input_tokens" in given else None,
                                               side.output_tokens if "output_tokens" in given else None)
            self._row.append(row)
            self._col.append(self.columns.setdefault(name, len(self.columns)))
            self._score.append(math.nan if side.score is None else side.score)
            self._cost.append(side.cost_usd if "cost_usd" in given else math.nan)
            self._latency.append(side.latency_s if "latency_s" in given else math.nan)
            if side.score is None and not self.unscored:
                keys = ", ".join(sorted(side.model_dump(exclude_unset=True))) or "none"
                self.unscored = f"; e.g. {where}: outcomes.{name} has no \"score\" (its keys: {keys})"

    def scored(self, name: str) -> int:
        """How many records scored ``name``."""
        col = np.frombuffer(self._col, dtype=np.int64)
        return int(np.count_nonzero((col == self.columns[name]) & ~np.isnan(np.frombuffer(self._score))))

    def grids(self, rows: int, names: Sequence[str]) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
        """``(scores, costs, latencies, cells)`` of shape ``(rows, len(names))``: NaN where a record has no outcome
        of the candidate (score) or gave no ``cost_usd`` (cost) or ``latency_s`` (latency); ``cells`` is each one's cell number (-1: none)."""
        lookup = np.full(len(self.columns) + 1, -1, dtype=np.int64)
        for j, name in enumerate(names):
            lookup[self.columns[name]] = j
        col = lookup[np.frombuffer(self._col, dtype=np.int64)]
        at = col >= 0
        row, col = np.frombuffer(self._row, dtype=np.int64)[at], col[at]
        out = []
        for values in (self._score, self._cost, self._latency):
            grid = np.full((rows, len(names)), math.nan)
            grid[row, col] = np.frombuffer(values)[at]
            out.append(grid)
        cells = np.full((rows, len(names)), -1, dtype=np.int64)
        cells[row, col] = np.flatnonzero(at)
        return out[0], out[1], out[2], cells
