"""Benchmark records whose input an ICL backend holds among its examples (a user who loaded the labeled file as
examples and then benchmarks on it).

ICL never shows a request an example with its own input (``ExampleStore.select``: equal up to case, runs of whitespace
and Unicode composition, by ``input_key``), in a benchmark as in production, so such a record is answered with that
example left out and the rest of the pool as usual: its score is not its own answer read back. The report says how
many records that concerned, so a reader knows the pool each was answered from was one example short.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from genroute.bench.datasets import BenchRecord
from genroute.bench.runner import POLICY_TARGET
from genroute.errors import GenrouteError

if TYPE_CHECKING:
    from genroute.router.router import Router

_log = logging.getLogger("genroute.bench")


async def own_examples_note(router: Router, targets: Sequence[str], records: Sequence[BenchRecord]) -> str:
    """The report section on records whose input is among an ICL target's examples (every ICL backend of the router
    when the policy is a target: it may route to any), or ``""`` when none is."""
    from genroute.knowledge.examples import input_key

    names = [n for n, b in router.backends.items() if "examples" in b.capabilities
             and (n in targets or POLICY_TARGET in targets)]
    keys = [input_key(r.input) for r in records]
    lines = []
    for name in names:
        try:
            examples = getattr(router.backends[name], "examples", None)
            if examples is None:
                continue
            stored = await examples.input_keys()
        except GenrouteError:  # no store, an empty or missing collection: its rows failed, *No scored row* says why
            continue
        held = sum(key in stored for key in keys)
        if held:
            lines.append(f"- {name}: {held} of the {len(records)} records have their input in its example collection "
                         f"`{examples.collection}`")
    if not lines:
        return ""
    text = ("\n".join(lines) + "\n\nICL never shows a request an example with the request's own input (up to case, "
            "runs of whitespace and Unicode composition): each of these records was answered with its own example "
            "left out and the other examples as usual, so its score is not its own answer read back. An example "
            "that only paraphrases a record is not left out: benchmark on records kept apart from the examples.")
    _log.info("benchmark records among the ICL examples: %s", "; ".join(line[2:] for line in lines))
    return text
