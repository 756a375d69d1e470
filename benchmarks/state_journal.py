"""What ``state.journal`` costs a write owed to Redis during an outage (docs/shared-state.md, "Replays live in the
journal, or in the process").

    python benchmarks/state_journal.py [--n 2000] [--rounds 5] [--dir DIR]

For each setup, ``--rounds`` interleaved rounds of ``--n`` settles kept for replay (``UnsentWrites.settle``, what a
request's settle costs while Redis is unreachable), then the same writes taken and marked sent in batches of 100
(``REPLAY_BATCH``: what the replay adds once Redis answers, with the rest of a journal larger than ``ADOPT_MAX`` read
as it goes), and a journal of ``--n`` rows taken over by a new store (``adopt``: what a router started on a killed
replica's journal pays at build, for its first ``ADOPT_MAX`` rows). µs a write, median of the rounds:

- ``memory``: no journal (the default);
- ``journal``: the journal as shipped (WAL, ``synchronous=NORMAL``: survives the process being killed);
- ``journal, synchronous=FULL``: the same with an fsync per write (would survive a power loss too), for comparison.

No Redis is needed: the writes are kept, not sent. ``--dir``: where the journal files go (default: a temporary
directory; name one on the disk the journal would live on).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

from genroute.state.journal import Journal  # noqa: E402
from genroute.state.ops import Settle  # noqa: E402
from genroute.state.redis_script import settle_id  # noqa: E402
from genroute.state.unsent import ADOPT_MAX, UnsentWrites  # noqa: E402

BATCH = 100


def one_round(setup: str, n: int, directory: Path, index: int) -> tuple[float, float, float]:
    """µs a write to keep, to take and mark sent, and (with a journal) to take over from a closed one's file."""
    journal = None
    path = directory / f"{setup.split(',')[0]}-{index}.db"
    if setup != "memory":
        journal = Journal(str(path), "bench:")
        if "FULL" in setup:
            journal._connect().execute("PRAGMA synchronous=FULL")
    unsent = UnsentWrites(lambda *_: None, journal)
    ops = [(Settle("acct", None, 1000), settle_id()) for _ in range(n)]
    start = time.perf_counter()
    for op, op_id in ops:
        unsent.settle(op, op_id)
    kept = time.perf_counter() - start
    adopted = 0.0
    if journal is not None:
        journal.close()  # let go, as a killed process's lock is: a new store takes the rows over
        start = time.perf_counter()
        taker = UnsentWrites(lambda *_: None, Journal(str(path), "bench:"))
        taker.adopt()  # the first ADOPT_MAX (the rest are read as the replay sends those)
        adopted = (time.perf_counter() - start) * n / min(n, ADOPT_MAX)
        assert taker.waiting() == min(n, ADOPT_MAX), taker.waiting()
        unsent = taker
    start = time.perf_counter()
    while batch := unsent.take(BATCH):
        unsent.sent(batch)
    sent = time.perf_counter() - start
    assert unsent.waiting() == 0 and (unsent.journal is None or not unsent.journal.adopt(1)), "not all sent"
    if unsent.journal is not None:
        unsent.journal.close()
    return kept / n * 1e6, sent / n * 1e6, adopted / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    setups = ["memory", "journal", "journal, synchronous=FULL"]
    results: dict[str, list[tuple[float, float, float]]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for index in range(args.rounds):
            for setup in setups:
                results[setup].append(one_round(setup, args.n, Path(tmp), index))
    print(f"{args.n} writes x {args.rounds} rounds; µs a write, median (min-max)", file=sys.stderr)
    print("| setup | keep (the request's settle) | take + sent (the replay) | take over at build |")
    print("|---|---|---|---|")
    for setup, rows in results.items():
        cells = []
        for column in range(3):
            values = [row[column] for row in rows]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"
                         if any(values) else "—")
        print(f"| {setup} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
