"""A benchmark run as an outcome matrix: ``outcomes.jsonl`` beside ``results.jsonl``.

``results.jsonl`` holds one row per record and backend, without the record's input; ``genroute compile --outcomes``
and ``genroute bench --outcomes`` read outcome records (``{"input", "output", "metadata", "outcomes": {backend:
{score, cost_usd, latency_s, ...}}}``, one a record). This file is the run in that shape, so that what a benchmark
measured compiles, and replays offline, as production outcomes and public matrices do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from genroute.bench.datasets import BenchRecord
from genroute.bench.runner import POLICY_TARGET, Outcome
from genroute.cache import atomic_write_bytes

#: The outcome matrix a benchmark run writes into its output directory.
MATRIX_FILE = "outcomes.jsonl"


def export_matrix(outcomes: Sequence[Outcome], records: Sequence[BenchRecord], out_dir: str | Path) -> Path:
    """Write ``out_dir/outcomes.jsonl``: each record with every backend's outcome on it (a failed request scores 0,
    as in the report; ``@policy`` rows are left out: the policy is no candidate to route to)."""
    by_record: dict[str, dict[str, Outcome]] = {}
    for o in outcomes:
        if o.backend != POLICY_TARGET:
            by_record.setdefault(o.record_id, {})[o.backend] = o
    lines = []
    for record in records:
        if not (done := by_record.get(record.id)):
            continue
        metadata = {**record.metadata, "id": record.id, **({"task": record.task} if record.task else {})}
        line = {"input": record.input, "output": record.output or record.label, "metadata": metadata,
                "outcomes": {b: _side(o) for b, o in sorted(done.items())}}
        lines.append(json.dumps(line, ensure_ascii=False, allow_nan=False))
    path = Path(out_dir) / MATRIX_FILE
    # Owner-only when new (a rerun keeps its mode), as an outcome export is: it holds every record's input and output.
    atomic_write_bytes(path, "".join(f"{line}\n" for line in lines).encode("utf-8"), private=True, same_mode=True)
    return path


def _side(o: Outcome) -> dict[str, object]:
    # Output tokens as billed (thoughts included), as a served side records them: a matrix priced by --prices on
    # them prices a thinking model's thoughts too.
    side: dict[str, object] = {"score": o.score if o.ok else 0.0, "cost_usd": o.cost_usd,
                               "input_tokens": o.input_tokens, "output_tokens": o.output_tokens + o.thinking_tokens,
                               "role": "bench"}
    if o.latency_s is not None:
        side["latency_s"] = o.latency_s
    if o.cloud_equivalent_cost_usd is not None:
        side["cloud_equivalent_cost_usd"] = o.cloud_equivalent_cost_usd
    return side
