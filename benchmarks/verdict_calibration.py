"""Do a bench report's verdicts hold their level? Simulated paired scores through genroute's own statistics.

    nice -n 10 python benchmarks/verdict_calibration.py [--runs 1000] [--family-runs 200] [--workers 2] [--seed 0]
    nice -n 10 python benchmarks/verdict_calibration.py --unpaired [--unpaired-runs 2000] [--binary-only]  # table 4

Each run draws the scores of backends on ``n`` records (n = 20, 30, 50, 100, 340, 1,000) from a known truth and
reads what genroute reports about them: ``compare_paired`` (its CI and its verdict, ``min_n`` = ``MIN_PAIRED_N`` as
the report's all-records table), ``quality_ci`` (one backend's mean) and, for a table of k backends,
``backend_comparisons`` (every pair, Holm over the family, as ``genroute bench`` builds it).

Scores, per record:

- 0/1 ("binary"): the four cells (both right, only A, only B, neither) drawn with the accuracies and discordance
  of the row (Newcombe's interval, McNemar's test).
- graded ("F1-like"): token-F1-like scores: exact 0s and 1s and a few values between (0.25, 0.4, 0.5, 0.67, 0.8),
  each backend's score the quantile of its own distribution at a uniform it shares with the other backend 70 % of
  the time (so most pairs agree exactly and the differences are skewed); the bootstrap's interval and the sign-flip
  test. A "+d" row moves d of A's probability from 0 to 1, so A's mean is exactly d higher.
- repeated inputs: n distinct inputs, each asked 3 times, whose copies mostly repeat one outcome (each record's
  uniform is its input's 80 % of the time): the same records compared record by record (as if no input repeated)
  and clustered (``groups``: one key an input, as the report passes them).
- families: k backends with one score distribution, each record's difficulty shared (all k read one uniform 70 % of
  the time): every pair compared; a false win is any win among the k(k - 1)/2 comparisons.

Table 4 (``--unpaired``, on its own): ``compare_unpaired``, the CI a split's fixed-horizon rule reads, on two
independent arms (20 vs 20 to 300 vs 300 records, and unequal arms either way round): 0/1 scores at each arm's
accuracy, graded ones drawn from each arm's F1-like distribution on its own; how often the CI holds the true
difference, and how often its lower bound is above it (a promotion passing at a true loss of exactly the margin)
or its upper bound below it.

Cells at n = 340 run half as many runs, at 1,000 a quarter (``runs_at``). Tables give the share of runs with its
Monte Carlo margin (± 1.96 standard errors: a figure whose margin does not reach the nominal level misses it).
Seeded (``--seed``): the same arguments print the same tables, whatever ``--workers``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

SIZES = (20, 30, 50, 100, 340, 1000)
PARTIALS = (0.25, 0.4, 0.5, 0.67, 0.8)
#: token-F1-like: (P(0), P(1)); the rest is spread evenly over PARTIALS.
F1_LIKE = (0.45, 0.35)
SHARED = 0.7

#: name -> (kind, parameters, the truth: A's mean - B's mean). Binary: (P(A right), P(B right), discordance).
PAIRED: dict[str, tuple[str, tuple[float, ...], float]] = {
    "0/1 A/A 0.60, 30 % discordant": ("binary", (0.60, 0.60, 0.30), 0.0),
    "0/1 A/A 0.97, 2 % discordant": ("binary", (0.97, 0.97, 0.02), 0.0),
    "0/1 0.55 vs 0.60, 25 % discordant": ("binary", (0.55, 0.60, 0.25), -0.05),
    "0/1 0.90 vs 0.92, 6 % discordant": ("binary", (0.90, 0.92, 0.06), -0.02),
    "0/1 +0.03 (0.83 vs 0.80, 20 %)": ("binary", (0.83, 0.80, 0.20), 0.03),
    "0/1 +0.05 (0.85 vs 0.80, 20 %)": ("binary", (0.85, 0.80, 0.20), 0.05),
    "0/1 +0.10 (0.90 vs 0.80, 20 %)": ("binary", (0.90, 0.80, 0.20), 0.10),
    "F1-like A/A": ("graded", (0.0,), 0.0),
    "F1-like equal means, A all-or-nothing": ("graded", (-1.0,), 0.0),
    "F1-like +0.03": ("graded", (0.03,), 0.03),
    "F1-like +0.05": ("graded", (0.05,), 0.05),
    "F1-like +0.10": ("graded", (0.10,), 0.10),
}
#: Repeated inputs (null: A and B alike): name -> P(0), P(1) of both.
CLUSTERED = {"0/1 (0.8 right), 3 records an input": (0.2, 0.8), "F1-like, 3 records an input": F1_LIKE}
FAMILIES = {"0/1 (0.8 right)": (0.2, 0.8), "F1-like": F1_LIKE}
KS = (3, 5, 9)
#: Two independent arms (split mode): name -> (kind, A's parameters, B's, the truth A - B). Binary: P(right);
#: graded: the F1-like shift of ``marginal``.
UNPAIRED: dict[str, tuple[str, float, float, float]] = {
    "0/1 0.60 vs 0.60": ("binary", 0.60, 0.60, 0.0),
    "0/1 0.95 vs 0.95": ("binary", 0.95, 0.95, 0.0),
    "0/1 0.85 vs 0.80": ("binary", 0.85, 0.80, 0.05),
    "0/1 0.97 vs 0.90": ("binary", 0.97, 0.90, 0.07),
    "F1-like A/A": ("graded", 0.0, 0.0, 0.0),
    "F1-like equal means, A all-or-nothing": ("graded", -1.0, 0.0, 0.0),
    "F1-like +0.05": ("graded", 0.05, 0.0, 0.05),
    "F1-like +0.10": ("graded", 0.10, 0.0, 0.10),
    "0/1 0.50 vs 0.50": ("binary", 0.50, 0.50, 0.0),
    "0/1 0.80 vs 0.80": ("binary", 0.80, 0.80, 0.0),
}
#: (records of arm A, of arm B): equal arms, and the unequal ones of a 1:5 and 1:6 split, either way round.
ARMS = ((20, 20), (30, 30), (50, 50), (100, 100), (300, 300), (20, 100), (100, 20), (50, 300))


def marginal(shift: float) -> tuple[float, float]:
    """(P(0), P(1)) of A in a graded row: F1-like moved by ``shift``; -1 is all-or-nothing at F1-like's mean."""
    p0, p1 = F1_LIKE
    if shift == -1.0:  # 5 % partial instead of 20 %, the mean kept
        mean = p1 + (1 - p0 - p1) * sum(PARTIALS) / len(PARTIALS)
        p1 = mean - 0.05 * sum(PARTIALS) / len(PARTIALS)
        return 1 - 0.05 - p1, p1
    return p0 - shift, p1 + shift


def mean_of(p0: float, p1: float) -> float:
    return p1 + (1 - p0 - p1) * sum(PARTIALS) / len(PARTIALS)


def quantile(u: Any, p0: float, p1: float) -> Any:
    """Scores at uniforms ``u`` of the distribution with P(0) = p0, P(1) = p1, the rest even over PARTIALS."""
    import numpy as np

    mid = (u - p0) / max(1 - p0 - p1, 1e-12)
    partial = np.asarray(PARTIALS)[np.clip((mid * len(PARTIALS)).astype(int), 0, len(PARTIALS) - 1)]
    return np.where(u < p0, 0.0, np.where(u >= 1 - p1, 1.0, partial))


def shared_uniforms(k: int, n: int, rng: Any, base: Any = None) -> Any:
    """k x n uniforms, each column's entries equal to one shared uniform (``base``, else drawn) 70 % of the time."""
    common = rng.random(n) if base is None else base
    own = rng.random((k, n))
    return np.where(rng.random((k, n)) < SHARED, common, own)


def binary_pair(pa: float, pb: float, disc: float, n: int, rng: Any) -> tuple[Any, Any]:
    """0/1 scores of n records: the cells with P(A right) = pa, P(B right) = pb, P(A != B) = disc."""
    only_a, only_b = (disc + pa - pb) / 2, (disc - pa + pb) / 2
    both = pa - only_a
    cells = rng.choice(4, size=n, p=[both, only_a, only_b, 1 - both - only_a - only_b])
    return ((cells <= 1).astype(float), ((cells == 0) | (cells == 2)).astype(float))


def paired_job(job: tuple[str, int, int, int, int]) -> list[tuple[bool, bool, str | None, bool]]:
    """Runs ``start..stop`` of a PAIRED row at n: (paired CI covers the truth, A's quality CI covers A's mean,
    the winner or None, resolved)."""
    from genroute.bench.stats import MIN_PAIRED_N, compare_paired, quality_ci

    name, n, start, stop, seed = job
    kind, params, truth = PAIRED[name]
    out = []
    for run in range(start, stop):
        rng = np.random.default_rng([seed, list(PAIRED).index(name), n, run])
        if kind == "binary":
            a, b = binary_pair(*params, n, rng)
            mean_a = params[0]
        else:
            (p0a, p1a), (p0b, p1b) = marginal(params[0]), F1_LIKE
            u = shared_uniforms(2, n, rng)
            a, b = quantile(u[0], p0a, p1a), quantile(u[1], p0b, p1b)
            mean_a = mean_of(p0a, p1a)
        c = compare_paired(a.tolist(), b.tolist(), min_n=MIN_PAIRED_N)
        low, high = quality_ci(a.tolist())
        out.append((c.ci[0] <= truth <= c.ci[1], low <= mean_a <= high, c.winner if c.decision == "win" else None,
                    c.resolved))
    return out


def cluster_job(job: tuple[str, int, int, int, int]) -> list[tuple[bool, bool, bool, bool]]:
    """Runs of a CLUSTERED row at n inputs: (record-level win, record-level CI covers 0, clustered win,
    clustered CI covers 0)."""
    from genroute.bench.stats import MIN_PAIRED_N, compare_paired

    name, n, start, stop, seed = job
    p0, p1 = CLUSTERED[name]
    out = []
    for run in range(start, stop):
        rng = np.random.default_rng([seed, 100 + list(CLUSTERED).index(name), n, run])
        inputs = shared_uniforms(2, n, rng)  # each input's uniform for A and for B
        copies = np.repeat(inputs, 3, axis=1)
        u = np.where(rng.random(copies.shape) < 0.8, copies, rng.random(copies.shape))
        a, b = quantile(u[0], p0, p1).tolist(), quantile(u[1], p0, p1).tolist()
        groups = np.repeat(np.arange(n), 3).tolist()
        flat = compare_paired(a, b, min_n=MIN_PAIRED_N)
        grouped = compare_paired(a, b, min_n=MIN_PAIRED_N, groups=groups)
        out.append((flat.decision == "win", flat.ci[0] <= 0 <= flat.ci[1],
                    grouped.decision == "win", grouped.ci[0] <= 0 <= grouped.ci[1]))
    return out


def family_job(job: tuple[str, int, int, int, int, int]) -> list[tuple[bool, bool]]:
    """Runs of a family of k equal backends on n records: (any win after Holm, any win before it)."""
    from genroute.bench.paired import backend_comparisons
    from genroute.bench.runner import Outcome
    from genroute.bench.stats import HOLM_DEMOTED

    name, k, n, start, stop, seed = job
    p0, p1 = FAMILIES[name]
    out = []
    for run in range(start, stop):
        rng = np.random.default_rng([seed, 200 + list(FAMILIES).index(name), k, n, run])
        scores = quantile(shared_uniforms(k, n, rng), p0, p1)
        outcomes = [Outcome(backend=f"b{j}", record_id=str(i), ok=True, score=float(scores[j, i]), scorer="sim")
                    for j in range(k) for i in range(n)]
        family = backend_comparisons(outcomes)
        out.append((any(c.decision == "win" for c in family),
                    any(c.decision == "win" or c.verdict.startswith(HOLM_DEMOTED) for c in family)))
    return out


def unpaired_job(job: tuple[str, int, int, int, int, int]) -> list[tuple[bool, bool, bool]]:
    """Runs of an UNPAIRED row at (n_a, n_b) records: (CI covers the truth, its lower bound is above the truth,
    its upper bound is below it) of ``compare_unpaired``, the CI split mode's fixed-horizon rule reads."""
    from genroute.bench.stats import compare_unpaired

    name, n_a, n_b, start, stop, seed = job
    kind, pa, pb, truth = UNPAIRED[name]
    out = []
    for run in range(start, stop):
        rng = np.random.default_rng([seed, 300 + list(UNPAIRED).index(name), n_a, n_b, run])
        if kind == "binary":
            a, b = (rng.random(n_a) < pa).astype(float), (rng.random(n_b) < pb).astype(float)
        else:
            a, b = quantile(rng.random(n_a), *marginal(pa)), quantile(rng.random(n_b), *marginal(pb))
        low, high = compare_unpaired(a.tolist(), b.tolist(), seed=run).ci
        out.append((low <= truth <= high, low > truth, high < truth))
    return out


def unpaired_tables(runs: int, workers: int, seed: int, kinds: tuple[str, ...] = ("binary", "graded")) -> None:
    """Table 4: ``compare_unpaired``'s CI over every UNPAIRED row of ``kinds`` and ARMS size."""
    names = [name for name, row in UNPAIRED.items() if row[0] in kinds]
    jobs = [(name, n_a, n_b, s, e, seed) for name in names for n_a, n_b in ARMS for s, e in chunks(runs)]
    by_cell: dict[tuple[str, int, int], list[Any]] = {}
    with ProcessPoolExecutor(workers) as pool:
        for job, result in zip(jobs, pool.map(unpaired_job, jobs), strict=True):
            by_cell.setdefault(job[:3], []).extend(result)
    header = "| scores | " + " | ".join(f"{n_a} vs {n_b}" for n_a, n_b in ARMS) + " |"

    def rows(pick: Any) -> None:
        print(header)
        print("|---|" + "---:|" * len(ARMS))
        for name in names:
            cells = [by_cell[(name, n_a, n_b)] for n_a, n_b in ARMS]
            print(f"| {name} | " + " | ".join(share(sum(1 for r in c if pick(r)), len(c)) for c in cells) + " |")

    print(f"\n{runs} runs a cell, seed {seed}; records of arm A vs arm B")
    print("\n4a. compare_unpaired's CI holds the true difference (nominal 95 %)\n")
    rows(lambda r: r[0])
    print("\n4b. Its lower bound is above the truth (a split promotion passing at a true loss of exactly the margin; "
          "nominal 2.5 %)\n")
    rows(lambda r: r[1])
    print("\n4c. Its upper bound is below the truth (nominal 2.5 %)\n")
    rows(lambda r: r[2])


def share(hits: int, runs: int) -> str:
    """A share with its Monte Carlo margin (± 1.96 standard errors)."""
    p = hits / runs
    return f"{p:.1%} ± {1.96 * (p * (1 - p) / runs) ** 0.5:.1%}"


def runs_at(n: int, runs: int) -> int:
    """Runs of a cell at n: all of ``runs`` up to 100 records, half at 340, a quarter at 1,000 (the slow cells,
    where nothing small-sample is at stake)."""
    return runs if n <= 100 else max(1, runs // 2 if n <= 340 else runs // 4)


def chunks(runs: int) -> list[tuple[int, int]]:
    step = max(1, runs // 4)
    return [(s, min(s + step, runs)) for s in range(0, runs, step)]


def table(title: str, header: str, rows: list[tuple[str, list[str]]], sizes: tuple[int, ...]) -> None:
    print(f"\n{title}\n")
    print(f"| {header} | " + " | ".join(f"n = {n:,}" for n in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="simulated comparisons per cell (pairs, clusters)")
    parser.add_argument("--family-runs", type=int, default=200, help="simulated reports per family cell")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="n of the cells (a quicker check)")
    parser.add_argument("--skip-families", action="store_true", help="no table 3 (the slowest)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unpaired", action="store_true", help="only table 4, compare_unpaired (split arms)")
    parser.add_argument("--unpaired-runs", type=int, default=2000, help="simulated comparisons per table 4 cell")
    parser.add_argument("--binary-only", action="store_true", help="table 4's 0/1 rows alone")
    args = parser.parse_args()
    if args.unpaired:
        started = time.perf_counter()
        unpaired_tables(args.unpaired_runs, args.workers, args.seed,
                        ("binary",) if args.binary_only else ("binary", "graded"))
        print(f"\n{time.perf_counter() - started:.0f} s")
        return 0
    sizes = tuple(int(n) for n in args.sizes.split(","))
    started = time.perf_counter()
    paired_jobs = [(name, n, s, e, args.seed) for name in PAIRED for n in sizes
                   for s, e in chunks(runs_at(n, args.runs))]
    cluster_jobs = [(name, n, s, e, args.seed) for name in CLUSTERED for n in sizes
                    for s, e in chunks(runs_at(n, args.runs))]
    family_jobs = [] if args.skip_families else [
        (name, k, n, s, e, args.seed) for name in FAMILIES for k in KS for n in sizes
        for s, e in chunks(runs_at(n, args.family_runs))]
    with ProcessPoolExecutor(args.workers) as pool:
        # The slowest first, so the workers end together.
        family = pool.map(family_job, family_jobs)
        clustered = pool.map(cluster_job, cluster_jobs)
        paired = pool.map(paired_job, paired_jobs)
        by_pair: dict[tuple[str, int], list[Any]] = {}
        for job, result in zip(paired_jobs, paired, strict=True):
            by_pair.setdefault((job[0], job[1]), []).extend(result)
        by_cluster: dict[tuple[str, int], list[Any]] = {}
        for job, result in zip(cluster_jobs, clustered, strict=True):
            by_cluster.setdefault((job[0], job[1]), []).extend(result)
        by_family: dict[tuple[str, int, int], list[Any]] = {}
        for fjob, fresult in zip(family_jobs, family, strict=True):
            by_family.setdefault((fjob[0], fjob[1], fjob[2]), []).extend(fresult)
    print(f"{args.runs} runs a cell ({args.family_runs} a family cell) up to n = 100, half at 340, a quarter at "
          f"1,000; seed {args.seed}; share of runs ± 1.96 Monte Carlo standard errors")

    def cells(key: str, pick: Any, source: dict[Any, list[Any]], extra: tuple[Any, ...] = ()) -> list[str]:
        out = []
        for n in sizes:
            rows = source[(key, *extra, n)]
            out.append(share(sum(1 for r in rows if pick(r)), len(rows)))
        return out

    table("1a. Paired CI of compare_paired holds the true difference (nominal 95 %)", "scores",
          [(name, cells(name, lambda r: r[0], by_pair)) for name in PAIRED], sizes)
    table("1b. quality_ci holds A's true mean (nominal 95 %)",
          "A's scores", [(name, cells(name, lambda r: r[1], by_pair)) for name in PAIRED], sizes)
    table("2a. Verdict 'A wins' or 'B wins' with no true difference (false win; nominal at most 5 %)", "scores",
          [(name, cells(name, lambda r: r[2] is not None, by_pair)) for name, spec in PAIRED.items()
           if spec[2] == 0], sizes)
    table("2b. The verdict calls the better side the winner (power) [wrong side in brackets where any]", "scores",
          [(name, [f"{c}" + (f" [{w}]" if not w.startswith("0.0%") else "") for c, w in zip(
              cells(name, lambda r, s=spec: r[2] == ("A" if s[2] > 0 else "B"), by_pair),
              cells(name, lambda r, s=spec: r[2] == ("B" if s[2] > 0 else "A"), by_pair), strict=True)])
           for name, spec in PAIRED.items() if spec[2] != 0], sizes)
    rows = []
    for name in CLUSTERED:
        rows.append((f"{name}: record-level, false win", cells(name, lambda r: r[0], by_cluster)))
        rows.append((f"{name}: clustered (groups), false win", cells(name, lambda r: r[2], by_cluster)))
        rows.append((f"{name}: record-level, CI holds 0", cells(name, lambda r: r[1], by_cluster)))
        rows.append((f"{name}: clustered (groups), CI holds 0", cells(name, lambda r: r[3], by_cluster)))
    table("2c. Repeated inputs, no true difference (n = distinct inputs, 3 records each)", "comparison", rows, sizes)
    if not args.skip_families:
        rows = []
        for name in FAMILIES:
            for k in KS:
                rows.append((f"{name}, k = {k} ({k * (k - 1) // 2} comparisons): with Holm",
                             cells(name, lambda r: r[0], by_family, (k,))))
                rows.append((f"{name}, k = {k}: without Holm", cells(name, lambda r: r[1], by_family, (k,))))
        table("3. Any false win in a report of k equal backends (family-wise; nominal at most 5 % with Holm)",
              "family", rows, sizes)
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
