"""Benchmark records a router's policy was compiled from (``genroute bench`` writes ``cost_aware.json`` and
``learned.json``; a user serves one and benchmarks it with ``--policy`` on the same file).

A compiled policy records the inputs it was fit on, as keys (``knowledge.examples.input_key``: hashes, no text): a
``stats.json`` compiled by a benchmark (``BenchStats.input_keys``), a learned model (its ``input_keys`` meta) and a
``semantic`` policy's utterances (``semantic.json`` takes them from the training queries). The
``@policy`` row on those records measures how well the policy fits what it was compiled from (a kNN router looks
up the record itself), not how it routes new requests: the report says how many records that concerns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from genroute.bench.datasets import BenchRecord

if TYPE_CHECKING:
    from genroute.policies.base import Policy

_log = logging.getLogger("genroute.bench")


def compiled_from(policy: Policy) -> frozenset[str]:
    """The input keys the statistics, learned models and semantic routes in ``policy`` (nested ones too: a wrapper's
    inner policy, a split's arms) were compiled from (a semantic policy's: its utterances, which
    ``genroute bench --outcomes`` takes from its training queries)."""
    return policy.compiled_inputs().union(*(compiled_from(inner) for inner in policy.nested))


def policy_inputs_note(policy: Any, records: Sequence[BenchRecord]) -> str:
    """The report section on ``@policy`` records whose input ``policy`` was compiled from, or ``""``."""
    from genroute.knowledge.examples import input_key

    seen = compiled_from(policy)
    held = sum(input_key(r.input) in seen for r in records) if seen else 0
    if not held:
        return ""
    text = (f"The router's policy ({getattr(policy, 'name', 'policy')}) was compiled from the inputs of {held} of the "
            f"{len(records)} records (its stats file, learned model or route utterances list them): the @policy row and its paired "
            "differences on those records measure how well it fits what it was compiled from, not how it routes "
            "new requests. Benchmark a compiled policy on records it was not compiled from (the compile section's "
            "held-out rows do).")
    _log.warning("%s", text)
    return text
