"""Peeking at the promotion rule: how often a team that runs the decision at every refresh promotes a challenger it
should not, with the fixed-horizon 95 % CI and with the anytime-valid 95 % confidence sequence; and what the
anytime-valid rule costs in records for a challenger that is truly better. In split mode two sequences side by side,
on the same records: the union of the two arms' sequences (each at 97.5 %) and the matched arms (the k-th request of
each arm paired, one sequence at 95 %; ``genroute.bench.sequential``).

    nice -n 10 python benchmarks/promotion_peeking.py [--runs 300] [--every 100] [--looks 20] [--workers 2]

Each run simulates one challenger's traffic: 0/1 scores, the incumbent right 80 % of the time and the challenger
``0.8 + diff``. Shadow mode (paired): both score every request, disagreeing on 20 % of requests (so the difference
comes from the discordant pairs, ``P(challenger only) - P(incumbent only) = diff``). Split mode (unpaired): each
request goes to one arm at random, the challenger's with probability ``share`` (50 % or 10 %). After every
``--every`` records, up to ``--every x --looks``, the decision is made by genroute's own ``decide_promotion`` on
the records so far (the challenger is always cheaper,
``min_n`` 100): a run counts as promoted at its first look that says so, as a team would stop there. A promotion is
wrong when the true difference is at or below ``-margin`` (the rule's null hypothesis: a loss of at least the
margin); above it promotion is the rule working (its power). "one look" is the fixed-horizon rule read once, at the
last look only: the rate it is built for. "records (median)": over the runs promoted, the records at the look that
promoted them. Seeded (``--seed``): the same arguments print the same table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

INCUMBENT, DISCORDANT = 0.8, 0.2
#: (margin, true difference challenger - incumbent) of each design's rows
ROWS = [(0.05, -0.07), (0.05, -0.05), (0.0, -0.02), (0.0, 0.0), (0.05, 0.0), (0.05, 0.05), (0.05, 0.10)]
#: (design, challenger's share of a split, margin, true difference)
SCENARIOS = [(design, share, margin, diff) for design, share in (("paired", 1.0), ("split", 0.5), ("split", 0.1))
             for margin, diff in ROWS]
#: The rules read at every look, as (sequential, split_sequence): the fixed-horizon CI, then the anytime-valid
#: sequence(s); shadow mode has one sequence (``split_sequence`` is not read there).
RULES: dict[str, list[tuple[bool, Literal["matched", "union"]]]] = {
    "paired": [(False, "matched"), (True, "matched")],
    "split": [(False, "matched"), (True, "union"), (True, "matched")]}


def records(design: str, share: float, diff: float, n: int, rng: Any) -> list[Any]:
    """``n`` outcome records of one simulated challenger's traffic, in time order."""
    from genroute.outcomes import OutcomeRecord, Side

    if design == "paired":
        # Joint table of (challenger, incumbent) scores with the incumbent's accuracy and the discordant share fixed.
        only_c, only_i = (DISCORDANT + diff) / 2, (DISCORDANT - diff) / 2
        both = INCUMBENT - only_i
        cells = rng.choice(4, size=n, p=[both, only_c, only_i, 1 - both - only_c - only_i])
        a, b = (cells == 0) | (cells == 1), (cells == 0) | (cells == 2)
        return [OutcomeRecord(metadata={"id": str(i), "task": "t", "served": "icl"}, outcomes={
            "icl": Side(score=float(b[i]), cost_usd=0.001, role="served"),
            "lora": Side(score=float(a[i]), cost_usd=0.0001, role="shadow")}) for i in range(n)]
    to_challenger = rng.random(n) < share
    right = rng.random(n) < (INCUMBENT + diff) * to_challenger + INCUMBENT * ~to_challenger
    out = []
    for i in range(n):
        name, cost = ("lora", 0.0001) if to_challenger[i] else ("icl", 0.001)
        out.append(OutcomeRecord(metadata={"id": str(i), "task": "t", "served": name, "arm": name},
                                 outcomes={name: Side(score=float(right[i]), cost_usd=cost, role="served")}))
    return out


def run_chunk(job: tuple[int, int, int, int, int, int]) -> list[tuple[list[int | None], bool]]:
    """For runs ``start..stop`` of scenario ``index``: the records at the first promoting look of each rule of
    ``RULES`` (or ``None``) and whether the fixed-horizon rule promotes when read once, at the last look."""
    import numpy as np

    from genroute.graduation import decide_promotion

    index, start, stop, every, looks, seed = job
    design, share, margin, diff = SCENARIOS[index]
    mode = "shadow" if design == "paired" else "split"
    out = []
    for run in range(start, stop):
        rng = np.random.default_rng([seed, index, run])
        data = records(design, share, diff, every * looks, rng)
        first: list[int | None] = []
        for sequential, sequence in RULES[design]:
            first.append(None)
            for look in range(1, looks + 1):
                n = every * look
                if decide_promotion(data[:n], "t", incumbent="icl", challenger="lora", margin=margin, min_n=100,
                                    mode=mode, sequential=sequential, split_sequence=sequence).promote:
                    first[-1] = n
                    break
        once = decide_promotion(data, "t", incumbent="icl", challenger="lora", margin=margin, min_n=100, mode=mode,
                                sequential=False).promote
        out.append((first, once))
    return out


def share(hits: int, runs: int) -> str:
    """A share with its Monte Carlo standard error."""
    p = hits / runs
    return f"{p:6.1%} ± {(p * (1 - p) / runs) ** 0.5:.1%}"


def median(values: list[int]) -> str:
    """The median of the records at the promoting looks, or "-" where no run was promoted."""
    return f"{statistics.median(values):,.0f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="simulated challengers per row")
    parser.add_argument("--every", type=int, default=100, help="records between two looks")
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    chunk = max(1, args.runs // 10)
    jobs = [(i, s, min(s + chunk, args.runs), args.every, args.looks, args.seed)
            for i in range(len(SCENARIOS)) for s in range(0, args.runs, chunk)]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_chunk, jobs))
    by_row: dict[int, list[tuple[list[int | None], bool]]] = {}
    for job, result in zip(jobs, results, strict=True):
        by_row.setdefault(job[0], []).extend(result)
    print(f"{args.runs} runs per row; a look every {args.every} records, {args.looks} looks (up to "
          f"{args.every * args.looks} records; split: both arms together); min_n 100; incumbent right 80 %, "
          f"paired designs disagree on 20 % of requests; ± one Monte Carlo standard error\n")
    print("| design | margin | true diff | promotion is | fixed-horizon CI, one look | fixed-horizon CI, any look "
          "| records (median) | anytime-valid CS (split: union of arms), any look | records (median) "
          "| split: matched arms, any look | records (median) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for index, (design, split_share, margin, diff) in enumerate(SCENARIOS):
        rows = by_row[index]
        once = sum(o for _, o in rows)
        cells = []
        for rule in range(3):
            promoted = [f[rule] for f, _ in rows if len(f) > rule and f[rule] is not None]
            cells.append(f"{share(len(promoted), len(rows))} | {median(promoted)}" if rule < len(rows[0][0])
                         else "– | –")
        kind = "wrong" if diff <= -margin else "right"
        name = design if design == "paired" else f"split {split_share:.0%}"
        print(f"| {name} | {margin:g} | {diff:+.2f} | {kind} | {share(once, len(rows))} | {' | '.join(cells)} |")
    print(f"\nwall time {time.perf_counter() - started:.0f} s ({args.workers} workers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
