"""The memory ``RunningOutcomes`` (what ``Router.refresh`` folds outcome changes into) keeps for the process's life.

    python benchmarks/running_memory.py [--n 100000]

Folds ``--n`` records into a ``RunningOutcomes`` as one full read (``Changes`` parsed from the JSON lines a store
holds, as ``changes`` parses them) and prints what it keeps once the read's own objects are gone (tracemalloc: the
traced memory after the fold and a collection, less before), per record, beside the same records as compact JSON
(``exclude_unset``, what the shared store's view keeps), and the time (best of 3 runs without tracemalloc) of the
full fold and of a fold of 100 new records after it.
Two shapes: records as ``OutcomeRecorder.shadow`` writes them (no text; the served side scored, the shadow's
agreement only, as ``outcome_list.py`` makes them), and captured ones (an input of ~300 characters, both sides
scored: training rows too).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from outcome_list import shadow_record

from genroute.outcomes import OutcomeRecord
from genroute.outcomes.changes import Changes, Place
from genroute.outcomes.running import RunningOutcomes

WORDS = "card arrived late top up cash fee exchange rate pin blocked transfer account balance refund".split()


def captured(record: OutcomeRecord, rng: random.Random) -> OutcomeRecord:
    """``record`` with its input captured and its shadow side scored too."""
    text = " ".join(rng.choice(WORDS) for _ in range(50))[:300]
    pro = record.outcomes["pro"].model_copy(update={"score": float(rng.random() < 0.7)})
    return record.model_copy(update={"input": text, "outcomes": {**record.outcomes, "pro": pro}})


def measure(lines: list[bytes], *, traced: bool) -> dict[str, Any]:
    """What a ``RunningOutcomes`` keeps after a full read of ``lines`` (``traced``: by tracemalloc, which slows
    allocation; the times are those of a run without it)."""
    gc.collect()
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    running = RunningOutcomes(None, min_n=1)  # type: ignore[arg-type]  # folded directly: no store
    records = [OutcomeRecord.model_validate_json(line) for line in lines]
    changes = Changes(place=Place("bench", len(lines)), full=True,
                      records=[((float(i), r.id), r) for i, r in enumerate(records)])
    del records
    start = time.perf_counter()
    stats, rows = running._fold(changes)
    fold_s = time.perf_counter() - start
    n_rows = len(rows)
    del changes, stats, rows
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # A refresh after 100 new writes (outside tracemalloc): the fold of a small change.
    more = [OutcomeRecord.model_validate_json(line) for line in lines[:100]]
    small = Changes(place=Place("bench", len(lines) + 100), full=False,
                    records=[((float(len(lines) + i), f"new{i}"), r.model_copy(update={
                        "metadata": {**r.metadata, "id": f"new{i}"}})) for i, r in enumerate(more)])
    start = time.perf_counter()
    running._fold(small)
    small_s = time.perf_counter() - start
    return {"kept": kept, "fold_s": fold_s, "small_s": small_s, "rows": n_rows, "running": running}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(0)
    shadow = [shadow_record(i, rng) for i in range(args.n)]
    shapes = {"shadow (no text)": shadow, "captured (input, both scored)": [captured(r, rng) for r in shadow]}
    print(f"n = {args.n:,} records; python {sys.version.split()[0]}")
    print("| records | compact JSON (shared view) | RunningOutcomes keeps | per record | ratio | training rows | "
          "full fold | fold of 100 new |")
    print("|---|---|---|---|---|---|---|---|")
    for name, records in shapes.items():
        lines = [r.model_dump_json(exclude_unset=True).encode() for r in records]
        json_bytes = sum(len(line) for line in lines)
        got = measure(lines, traced=True)
        del got["running"]
        got["fold_s"] = got["small_s"] = float("inf")
        for _ in range(3):  # the times: best of 3 runs without tracemalloc
            timed = measure(lines, traced=False)
            got["fold_s"], got["small_s"] = min(got["fold_s"], timed["fold_s"]), min(got["small_s"], timed["small_s"])
            del timed
        print(f"| {name} | {json_bytes / 1e6:.1f} MB ({json_bytes / len(lines):,.0f} B) | {got['kept'] / 1e6:.1f} MB | "
              f"{got['kept'] / len(lines):,.0f} B | {got['kept'] / json_bytes:.1f}x | {got['rows']:,} | "
              f"{got['fold_s']:.2f} s | {got['small_s'] * 1e3:.0f} ms |")
        del got
        gc.collect()


if __name__ == "__main__":
    main()
