"""Load with faults (small): every request through a two-rung cascade is accounted for; none lost or hung.

The full run (2,000 requests at concurrency 200) is ``python benchmarks/load.py``; this test runs the same
code with 200 requests at concurrency 50 and twice the fault rate, so that the fallback rung is exercised.
Memory must plateau: RSS may grow while the first half warms up, but not over the second half.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "load.py"
PLATEAU_MIB = 15.0


def _load_module():
    spec = importlib.util.spec_from_file_location("genroute_bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    # It imports benchmarks/checkout.py first, as every script does: found beside it (as `python benchmarks/load.py`
    # finds it), not only when an earlier test of the session left that module imported.
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH.parent))
    return module


def test_200_requests_at_concurrency_50_with_faults_are_all_accounted_for(capsys):
    load = _load_module()
    tally = load.main(["--requests", "200", "--concurrency", "50", "--fault-rate", "0.1", "--seed", "7"])
    printed = capsys.readouterr().out
    outcomes = tally.outcomes
    assert tally.accounted == 200 and len(tally.latencies) == 200
    assert outcomes["lost"] == 0 and outcomes["hung"] == 0, tally.errors
    assert outcomes["fell through"] > 0  # faults on the first rung were answered by the second
    assert outcomes["ok"] + outcomes["fell through"] + outcomes["typed error"] == 200
    assert not any(k.startswith("UNTYPED") for k in tally.errors)
    assert "faults injected" in printed and "| requests | ok | fell through |" in printed
    assert [label for label, _, _ in tally.memory] == ["start", "middle", "end"]
    first_half, second_half = tally.rss_growth()
    assert first_half + second_half < 100  # MiB, start -> end: generous, it includes one-time warm-up
    # The plateau: once warm, the second 100 requests add next to nothing (measured: -0.4 MiB). The bound
    # leaves room for allocator noise; a leak of ~150 KiB or more per request would cross it.
    assert second_half < PLATEAU_MIB, f"RSS grew {second_half:.1f} MiB over the second half of the run"
    assert "memory growth: start -> middle" in printed
