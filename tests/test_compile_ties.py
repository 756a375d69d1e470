"""Compiled policies break quality ties by cost: the default of a compiled ``cost_aware`` (and ``learned``) policy is
the best backend by mean quality, then the cheaper, then the faster, then the first name (the name alone chose a
priced cloud model over a free local one of the same quality); a ``cost_aware`` decision among equally cheap backends
takes the higher quality, then the lower p50, then the name, whatever order the statistics file lists them in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genroute.bench import compile_policy
from genroute.bench.datasets import BenchRecord
from genroute.bench.runner import Outcome
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.policies.cost_aware import CostAwareConfig, CostAwarePolicy
from genroute.policies.cost_aware_compiled import default_backend
from genroute.policies.stats import BackendStats, BenchStats
from genroute.types import GenerateRequest


def entry(quality: float, cost: float, p50: float | None = 0.5) -> BackendStats:
    return BackendStats(n=50, quality=quality, latency_p50_s=p50, latency_p95_s=None if p50 is None else 2 * p50,
                        cost_per_request_usd=cost)


@pytest.mark.parametrize(("entries", "expected"), [
    ({"flash": entry(0.9, 0.001), "icl": entry(0.9, 0.0)}, "icl"),                   # equal quality: the cheaper
    ({"flash": entry(0.9, 0.0), "icl": entry(0.9, 0.001)}, "flash"),
    ({"flash": entry(0.9, 0.0, p50=0.8), "icl": entry(0.9, 0.0, p50=0.2)}, "icl"),   # and cost: the faster
    ({"flash": entry(0.9, 0.0, p50=None), "icl": entry(0.9, 0.0, p50=3.0)}, "icl"),  # a recorded latency first
    ({"icl": entry(0.9, 0.0), "flash": entry(0.9, 0.0)}, "flash"),                   # all equal: the first name
    ({"flash": entry(0.91, 0.001), "icl": entry(0.9, 0.0)}, "flash"),                # quality first
    ({"flash": entry(0.1 + 0.2, 0.001), "icl": entry(0.3, 0.0)}, "icl"),             # equal but for float noise
])
def test_the_compiled_default_breaks_a_quality_tie_by_cost_then_latency_then_name(entries: dict[str, BackendStats],
                                                                                  expected: str) -> None:
    stats = BenchStats(tasks={"t": entries})
    assert default_backend(stats, sorted(entries)) == expected


@pytest.mark.parametrize("order", [["zeta", "alpha"], ["alpha", "zeta"]])
def test_a_cost_aware_decision_among_equals_takes_the_name_not_the_files_order(order: list[str]) -> None:
    stats = BenchStats(tasks={"t": {name: entry(0.9, 0.001) for name in order}})
    catalogue = {name: BackendInfo(name=name, kind="bench") for name in order}
    policy = CostAwarePolicy(CostAwareConfig(default="zeta", fallbacks=1))
    decision = policy.decide(GenerateRequest(input="hi", task="t"), PolicyContext(catalogue=catalogue, stats=stats))
    assert [r.backend for r in decision.rungs] == ["alpha", "zeta"]


class _Embedder:
    model = "ties-test"

    def embed_array(self, texts: list[str]) -> Any:
        import numpy as np

        return np.array([[1.0, float(len(t) % 3)] for t in texts], dtype=np.float32)


def test_compile_writes_the_free_backend_as_default_when_a_priced_one_ties_on_quality(tmp_path: Path) -> None:
    # Both answer the same records right; "flash" is billed, "icl" (a local model) is free: the checker saw the
    # compiled cost_aware.json default to flash, the first name.
    records = [BenchRecord(id=f"r{i}", input=f"question number {i}", output="yes", label="yes", task="t")
               for i in range(30)]
    outcomes = [Outcome(backend=backend, record_id=r.id, task="t", ok=True, score=float(i % 3 != 0),
                        scorer="label_accuracy", latency_s=0.5, cost_usd=cost)
                for i, r in enumerate(records) for backend, cost in (("flash", 0.0004), ("icl", 0.0))]
    compiled = compile_policy(outcomes, records, tmp_path, embedder=_Embedder())
    cost_aware = json.loads(Path(compiled.policy_files["cost_aware"]).read_text(encoding="utf-8"))
    assert cost_aware["default"] == "icl"
    learned = json.loads(Path(compiled.policy_files["learned"]).read_text(encoding="utf-8"))
    assert learned["default"] == "icl"
