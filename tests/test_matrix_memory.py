"""An outcome matrix is kept as numbers while its file is read, not as a validated model per cell."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

from genroute.bench.outcomes import load_matrix


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
