"""Which 95 % interval for a mean of graded scores in [0, 1]? A calibration simulation of the current method and the
candidates, one backend's mean (``quality_ci``), a paired difference (``compare_paired``) and two independent arms
(``compare_unpaired``).

    nice -n 10 python benchmarks/graded_intervals.py [--runs 10000] [--seed 0] [--check 200]

Every candidate is computed here from what a running statistic keeps of a sample (its n, mean and sample SD:
``genroute.exact_sums.Moments``), vectorized over the runs:

- ``t (before)``: Student's t interval, cut to [0, 1]; for equal scores the t interval at the Bhatia-Davis SD
  ``sqrt(m (1 - m))``, [0, 1] at n = 1 (genroute before this change, commit 631a1cc);
- ``Hoeffding``: ``m ± sqrt(log(2 / alpha) / 2n)``;
- ``emp. Bernstein``: Maurer & Pontil (2009) at ``alpha / 2`` a side: ``sqrt(2 s² L / n) + 7 L / 3(n - 1)``,
  ``L = log(4 / alpha)``;
- ``Wilson at n``: the mean taken for a proportion of n records (the variance of 0/1 scores of that mean);
- ``Wilson at n_eff``: the same at the effective n ``n m (1 - m) / s²`` (a design effect);
- ``t, shrunk k``: the t interval at the variance ``((n - 1) s² + k m (1 - m)) / (n - 1 + k)``: the sample's,
  pulled toward the Bhatia-Davis maximum with weight ~ k / n;
- ``t ⊕ unseen``: each side's half-width ``sqrt((t s / sqrt(n))² + u²)`` with ``u`` the mass a sample of n can
  miss: ``u = m (1 - (alpha / 2)^(1/n))`` below the mean and ``(1 - m) (1 - (alpha / 2)^(1/n))`` above it, the
  Clopper-Pearson bound of n records with no score at 0 (or 1): what genroute uses after this change
  (``genroute.bench.t_interval.t_interval_of``), checked here against it run by run (``--check``);
- ``t + unseen``: the same with the two added instead of squared and added;
- ``max(t + skew, unseen)``: the t part plus the first-order (Edgeworth) skewness bound
  ``(2 z² + 1) / 6 * m / n`` below (``(1 - m)`` above), never less than the unseen part.

The paired difference of scores in [0, 1] is in [-1, 1]: each method runs on ``(d + 1) / 2`` and is mapped back.
Two arms: ``t (before)`` is Welch's interval with Hsu's df; the others join each arm's interval by Newcombe's
square-and-add (MOVER, as his 0/1 interval joins two Wilson intervals); ``t + unseen, Welch-Hsu`` is Welch's t part
(Hsu's df) plus the arms' unseen parts squared and added. A cell is ``--runs`` samples; coverage has a Monte Carlo
margin of ± 1.96 standard errors (± 0.30 points at 20,000 runs; a side's 2.5 %, ± 0.22).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

SIZES = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500)
LEVEL = 0.95
ALPHA = 1 - LEVEL
PARTIALS = np.array([0.25, 0.4, 0.5, 0.67, 0.8])

Draw = Callable[[Any, tuple[int, ...]], Any]


def f1_like(rng: Any, shape: tuple[int, ...]) -> Any:
    u = rng.random(shape)
    partial = PARTIALS[np.clip(((u - 0.45) / 0.2 * 5).astype(int), 0, 4)]
    return np.where(u < 0.45, 0.0, np.where(u >= 0.65, 1.0, partial))


#: name -> (draw, true mean)
ONE: dict[str, tuple[Draw, float]] = {
    "near-constant 0.7 ± 0.01": (lambda r, s: 0.7 + r.uniform(-0.01, 0.01, s), 0.7),
    "two-point 0.3 / 0.9": (lambda r, s: np.where(r.random(s) < 0.5, 0.3, 0.9), 0.6),
    "uniform": (lambda r, s: r.random(s), 0.5),
    "beta(8, 1.5), skewed to 1": (lambda r, s: r.beta(8, 1.5, s), 8 / 9.5),
    "beta(0.5, 4), skewed to 0": (lambda r, s: r.beta(0.5, 4, s), 0.5 / 4.5),
    "0.9, 5 % zeros": (lambda r, s: np.where(r.random(s) < 0.05, 0.0, 0.9), 0.855),
    "0.9 ± 0.005, 5 % zeros": (lambda r, s: np.where(r.random(s) < 0.05, 0.0, 0.9 + r.uniform(-0.005, 0.005, s)),
                               0.855),
    "F1-like (45 % 0, 35 % 1)": (f1_like, 0.35 + 0.2 * float(PARTIALS.mean())),
}


def _pair_shared(r: Any, s: tuple[int, ...], fa: Draw, fb: Draw) -> tuple[Any, Any]:
    return fa(r, s), fb(r, s)


def _zeros_pair(r: Any, s: tuple[int, ...]) -> tuple[Any, Any]:
    base = 0.9 + r.uniform(-0.005, 0.005, s)
    return np.where(r.random(s) < 0.05, 0.0, base), base


def _f1_pair(r: Any, s: tuple[int, ...]) -> tuple[Any, Any]:
    """F1-like A and B reading one uniform 70 % of the time (most pairs agree exactly), A moved +0.05."""
    u = np.where(r.random(s) < 0.7, (c := r.random(s)), r.random(s))
    v = np.where(r.random(s) < 0.7, c, r.random(s))

    def at(x: Any, shift: float) -> Any:
        partial = PARTIALS[np.clip(((x - 0.45 + shift) / 0.2 * 5).astype(int), 0, 4)]
        return np.where(x < 0.45 - shift, 0.0, np.where(x >= 0.65 - shift, 1.0, partial))
    return at(u, 0.05), at(v, 0.0)


#: name -> (draw of (a, b) on the same records, true mean(a) - mean(b))
PAIRED: dict[str, tuple[Callable[[Any, tuple[int, ...]], tuple[Any, Any]], float]] = {
    "both near-constant 0.9 ± 0.01": (lambda r, s: (0.9 + r.uniform(-0.01, 0.01, s),
                                                    0.9 + r.uniform(-0.01, 0.01, s)), 0.0),
    "A 5 % zeros, else as B (0.9 ± 0.005)": (_zeros_pair, -0.045),
    "uniform vs uniform": (lambda r, s: (r.random(s), r.random(s)), 0.0),
    "beta(8, 1.5) vs beta(6, 1.5)": (lambda r, s: (r.beta(8, 1.5, s), r.beta(6, 1.5, s)), 8 / 9.5 - 6 / 7.5),
    "F1-like +0.05, 70 % shared": (_f1_pair, 0.05),
}

#: name -> (A's draw, B's draw, truth): two independent arms of n records each
UNPAIRED: dict[str, tuple[Draw, Draw, float]] = {
    "near-constant 0.7 vs 0.7": (ONE["near-constant 0.7 ± 0.01"][0], ONE["near-constant 0.7 ± 0.01"][0], 0.0),
    "0.9 with 5 % zeros vs 0.9 (± 0.005)": (ONE["0.9 ± 0.005, 5 % zeros"][0],
                                            lambda r, s: 0.9 + r.uniform(-0.005, 0.005, s), -0.045),
    "uniform vs two-point": (ONE["uniform"][0], ONE["two-point 0.3 / 0.9"][0], -0.1),
    "beta(8, 1.5) vs F1-like": (ONE["beta(8, 1.5), skewed to 1"][0], f1_like,
                                8 / 9.5 - ONE["F1-like (45 % 0, 35 % 1)"][1]),
}


class Quantiles:
    """Student's t quantiles from genroute's own ``student_t_quantile``, cached by df (inf for df 0)."""

    def __init__(self) -> None:
        from genroute.bench.t_interval import student_t_quantile

        self._q = student_t_quantile
        self._cache: dict[int, float] = {}

    def __call__(self, df: int) -> float:
        if df < 1:
            return math.inf
        if df not in self._cache:
            self._cache[df] = self._q((1 + LEVEL) / 2, df)
        return self._cache[df]


T = Quantiles()
Z = 1.959963984540054


def _sd(x: Any) -> Any:
    n = x.shape[-1]
    return x.std(axis=-1, ddof=1) if n > 1 else np.zeros(x.shape[:-1])


def _constant(x: Any) -> Any:
    return np.all(x == x[..., :1], axis=-1)


def _unseen(n: int) -> float:
    return 1 - (ALPHA / 2) ** (1 / n)


# Each method: (x: runs x n) -> (mean, distance down, distance up), uncut (the caller cuts to [0, 1])
def m_before(x: Any) -> tuple[Any, Any, Any]:
    n = x.shape[-1]
    m, s = x.mean(axis=-1), _sd(x)
    const = _constant(x)
    if n == 1:
        return m, np.ones_like(m), np.ones_like(m)
    bd = T(n - 1) * np.sqrt(m * (1 - m) / n)
    half = np.where(const, bd, T(n - 1) * s / math.sqrt(n))
    return m, half, half


def m_hoeffding(x: Any) -> tuple[Any, Any, Any]:
    n, m = x.shape[-1], x.mean(axis=-1)
    half = np.full_like(m, math.sqrt(math.log(2 / ALPHA) / (2 * n)))
    return m, half, half


def m_bernstein(x: Any) -> tuple[Any, Any, Any]:
    n, m, s = x.shape[-1], x.mean(axis=-1), _sd(x)
    if n == 1:
        return m, np.ones_like(m), np.ones_like(m)
    log = math.log(4 / ALPHA)
    half = np.sqrt(2 * s * s * log / n) + 7 * log / (3 * (n - 1))
    return m, half, half


def _wilson(m: Any, n: Any) -> tuple[Any, Any, Any]:
    z2 = Z * Z
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = (m + z2 / (2 * n)) / (1 + z2 / n)
        half = Z / (1 + z2 / n) * np.sqrt(m * (1 - m) / n + z2 / (4 * n * n))
    centre = np.where(np.isinf(n), m, centre)
    half = np.where(np.isinf(n), 0.0, half)
    return m, m - (centre - half), centre + half - m


def m_wilson(x: Any) -> tuple[Any, Any, Any]:
    return _wilson(x.mean(axis=-1), np.full(x.shape[:-1], float(x.shape[-1])))


def m_wilson_eff(x: Any) -> tuple[Any, Any, Any]:
    n, m, s = x.shape[-1], x.mean(axis=-1), _sd(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.where(s > 0, n * m * (1 - m) / (s * s), np.inf)
    return _wilson(m, np.where(n == 1, 1.0, n_eff))


def m_shrunk(k: float) -> Callable[[Any], tuple[Any, Any, Any]]:
    def method(x: Any) -> tuple[Any, Any, Any]:
        n, m, s = x.shape[-1], x.mean(axis=-1), _sd(x)
        if n == 1:
            return m, np.ones_like(m), np.ones_like(m)
        var = ((n - 1) * s * s + k * m * (1 - m)) / (n - 1 + k)
        half = T(n - 1) * np.sqrt(var / n)
        return m, half, half
    return method


def m_unseen(add: bool) -> Callable[[Any], tuple[Any, Any, Any]]:
    def method(x: Any) -> tuple[Any, Any, Any]:
        n, m, s = x.shape[-1], x.mean(axis=-1), _sd(x)
        t_half = T(n - 1) * s / math.sqrt(n) if n > 1 else np.zeros_like(m)
        u = _unseen(n)
        down, up = m * u, (1 - m) * u
        if add:
            return m, t_half + down, t_half + up
        return m, np.hypot(t_half, down), np.hypot(t_half, up)
    return method


def m_edgeworth(x: Any) -> tuple[Any, Any, Any]:
    """t plus the first-order skewness bound (2 z² + 1) / 6 * distance / n, never below the unseen part."""
    n, m, s = x.shape[-1], x.mean(axis=-1), _sd(x)
    t_half = T(n - 1) * s / math.sqrt(n) if n > 1 else np.zeros_like(m)
    u, c = _unseen(n), (2 * Z * Z + 1) / 6 / n
    return m, np.maximum(t_half + c * m, u * m), np.maximum(t_half + c * (1 - m), u * (1 - m))


METHODS: dict[str, Callable[[Any], tuple[Any, Any, Any]]] = {
    "t (before)": m_before,
    "Hoeffding": m_hoeffding,
    "emp. Bernstein": m_bernstein,
    "Wilson at n": m_wilson,
    "Wilson at n_eff": m_wilson_eff,
    "t, shrunk k = 1": m_shrunk(1),
    "t, shrunk k = 4": m_shrunk(4),
    "t + unseen": m_unseen(add=True),
    "t ⊕ unseen": m_unseen(add=False),
    "max(t + skew, unseen)": m_edgeworth,
}
CHOSEN = "t ⊕ unseen"


def interval(method: Callable[[Any], tuple[Any, Any, Any]], x: Any) -> tuple[Any, Any]:
    m, down, up = method(x)
    return np.maximum(0.0, m - down), np.minimum(1.0, m + up)


def cell(low: Any, high: Any, truth: float) -> tuple[float, float, float, float]:
    """(coverage, low above the truth, high below it, mean width)"""
    return (float(np.mean((low <= truth) & (truth <= high))), float(np.mean(low > truth)),
            float(np.mean(high < truth)), float(np.mean(high - low)))


def one_sample(runs: int, seed: int, check: int) -> dict[tuple[str, str, int], tuple[float, ...]]:
    from genroute.bench.stats import quality_ci

    out = {}
    for d, (name, (draw, truth)) in enumerate(ONE.items()):
        for n in SIZES:
            x = draw(np.random.default_rng([seed, 1, d, n]), (runs, n))
            for method_name, method in METHODS.items():
                low, high = interval(method, x)
                out[name, method_name, n] = cell(low, high, truth)
                if method_name == CHOSEN:
                    for i in range(min(check, runs)):
                        got = quality_ci(x[i].tolist())
                        if not np.isclose(got, (low[i], high[i]), rtol=0, atol=1e-9).all() and \
                                not (np.isin(x[i], (0.0, 1.0)).all()):
                            raise AssertionError(f"{name} n={n} run {i}: genroute {got}, here {low[i], high[i]}")
    return out


def paired(runs: int, seed: int, check: int) -> dict[tuple[str, str, int], tuple[float, ...]]:
    from genroute.bench.stats import compare_paired

    out = {}
    for d, (name, (draw, truth)) in enumerate(PAIRED.items()):
        for n in SIZES:
            a, b = draw(np.random.default_rng([seed, 2, d, n]), (runs, n))
            y = (a - b + 1) / 2
            for method_name, method in METHODS.items():
                low, high = interval(method, y)
                low, high = 2 * low - 1, 2 * high - 1
                out[name, method_name, n] = cell(low, high, truth)
                if method_name == CHOSEN:
                    same_as_genroute(compare_paired, a[:check], b[:check], low, high, f"{name} n={n}")
    return out


def same_as_genroute(compare: Any, a: Any, b: Any, low: Any, high: Any, where: str) -> None:
    """``AssertionError`` unless genroute's ``compare`` gives each graded run of ``a`` vs ``b`` (0/1 runs are its
    exact methods') the interval [``low``, ``high``] computed here, to 1e-9."""
    for i in range(len(a)):
        if np.isin(a[i], (0.0, 1.0)).all() and np.isin(b[i], (0.0, 1.0)).all():
            continue
        got = compare(a[i].tolist(), b[i].tolist()).ci
        if not np.isclose(got, (low[i], high[i]), rtol=0, atol=1e-9).all():
            raise AssertionError(f"{where} run {i}: genroute {got}, here {low[i], high[i]}")


def welch_before(a: Any, b: Any) -> tuple[Any, Any, Any]:
    n = a.shape[-1]
    d = a.mean(axis=-1) - b.mean(axis=-1)
    va = np.where(_constant(a), 0.0, _sd(a) ** 2 / n)
    vb = np.where(_constant(b), 0.0, _sd(b) ** 2 / n)
    half = T(n - 1) * np.sqrt(va + vb) if n > 1 else np.zeros_like(d)
    return d, half, half


def mover(method: Callable[[Any], tuple[Any, Any, Any]]) -> Callable[[Any, Any], tuple[Any, Any, Any]]:
    def joined(a: Any, b: Any) -> tuple[Any, Any, Any]:
        ma, da, ua = method(a)
        mb, db, ub = method(b)
        la, ha = np.maximum(0.0, ma - da), np.minimum(1.0, ma + ua)
        lb, hb = np.maximum(0.0, mb - db), np.minimum(1.0, mb + ub)
        return ma - mb, np.hypot(ma - la, hb - mb), np.hypot(ha - ma, mb - lb)
    return joined


def welch_unseen(add: bool) -> Callable[[Any, Any], tuple[Any, Any, Any]]:
    """Welch's t part (Hsu's df) and the arms' unseen parts squared and added, then added to it (``add``) or
    squared and added to it too."""
    def joined(a: Any, b: Any) -> tuple[Any, Any, Any]:
        n = a.shape[-1]
        ma, mb = a.mean(axis=-1), b.mean(axis=-1)
        t_half = T(n - 1) * np.sqrt((_sd(a) ** 2 + _sd(b) ** 2) / n) if n > 1 else np.zeros_like(ma)
        u = _unseen(n)
        down, up = np.hypot(ma * u, (1 - mb) * u), np.hypot((1 - ma) * u, mb * u)
        if add:
            return ma - mb, t_half + down, t_half + up
        return ma - mb, np.hypot(t_half, down), np.hypot(t_half, up)
    return joined


TWO: dict[str, Callable[[Any, Any], tuple[Any, Any, Any]]] = {
    "t (before)": welch_before,
    "Hoeffding": mover(m_hoeffding),
    "emp. Bernstein": mover(m_bernstein),
    "Wilson at n": mover(m_wilson),
    "Wilson at n_eff": mover(m_wilson_eff),
    "t, shrunk k = 1": mover(m_shrunk(1)),
    "t, shrunk k = 4": mover(m_shrunk(4)),
    "t + unseen, Welch-Hsu": welch_unseen(add=True),
    "t + unseen": mover(m_unseen(add=True)),
    "t ⊕ unseen": mover(m_unseen(add=False)),
    "max(t + skew, unseen)": mover(m_edgeworth),
}


def unpaired(runs: int, seed: int, check: int) -> dict[tuple[str, str, int], tuple[float, ...]]:
    from genroute.bench.stats import compare_unpaired

    out = {}
    for d, (name, (draw_a, draw_b, truth)) in enumerate(UNPAIRED.items()):
        for n in SIZES:
            rng = np.random.default_rng([seed, 3, d, n])
            a, b = draw_a(rng, (runs, n)), draw_b(rng, (runs, n))
            for method_name, method in TWO.items():
                diff, down, up = method(a, b)
                low, high = np.maximum(-1.0, diff - down), np.minimum(1.0, diff + up)
                out[name, method_name, n] = cell(low, high, truth)
                if method_name == CHOSEN:
                    same_as_genroute(compare_unpaired, a[:check], b[:check], low, high, f"{name} n={n}")
    return out


def summary(title: str, results: dict[tuple[str, str, int], tuple[float, ...]], rows: list[str],
            methods: list[str]) -> None:
    # worst coverage: the lowest over the distributions; worst one-sided miss: the most often a lower bound was above
    # the truth or an upper one below it
    print(f"\n#### {title}: worst coverage / worst one-sided miss over {len(rows)} distributions, %\n")
    print("| method | " + " | ".join(f"n = {n}" for n in SIZES) + " |")
    print("|---|" + "---:|" * len(SIZES))
    for method in methods:
        cells = []
        for n in SIZES:
            cov = min(results[r, method, n][0] for r in rows)
            above = max(max(results[r, method, n][1:3]) for r in rows)
            text = f"{cov * 100:.1f} / {above * 100:.1f}"
            short = cov < LEVEL - 1.96 * math.sqrt(LEVEL * ALPHA / RUNS[0]) or \
                above > ALPHA / 2 + 1.96 * math.sqrt(ALPHA / 2 * (1 - ALPHA / 2) / RUNS[0])
            cells.append(f"**{text}**" if short else text)
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"\n#### {title}: mean width, averaged over the distributions\n")
    print("| method | " + " | ".join(f"n = {n}" for n in SIZES) + " |")
    print("|---|" + "---:|" * len(SIZES))
    for method in methods:
        print(f"| {method} | " + " | ".join(f"{np.mean([results[r, method, n][3] for r in rows]):.3f}"
                                            for n in SIZES) + " |")


def detail(title: str, results: dict[tuple[str, str, int], tuple[float, ...]], rows: list[str],
           methods: list[str]) -> None:
    print(f"\n#### {title}, by distribution: coverage % (mean width)\n")
    print("| distribution | method | " + " | ".join(f"n = {n}" for n in SIZES) + " |")
    print("|---|---|" + "---:|" * len(SIZES))
    for r in rows:
        for method in methods:
            print(f"| {r} | {method} | " + " | ".join(
                f"{results[r, method, n][0] * 100:.1f} ({results[r, method, n][3]:.3f})" for n in SIZES) + " |")


RUNS = [20000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", type=int, default=200,
                        help="runs a cell whose chosen interval is checked against genroute's functions")
    args = parser.parse_args()
    RUNS[0] = args.runs
    start = time.perf_counter()
    one = one_sample(args.runs, args.seed, args.check)
    pair = paired(args.runs, args.seed, args.check)
    two = unpaired(args.runs, args.seed, args.check)
    methods = list(METHODS)
    summary("One mean (quality_ci)", one, list(ONE), methods)
    summary("Paired difference (compare_paired)", pair, list(PAIRED), methods)
    summary("Two arms of n records (compare_unpaired)", two, list(UNPAIRED), list(TWO))
    detail("One mean", one, list(ONE), ["t (before)", "t + unseen", CHOSEN])
    detail("Paired difference", pair, list(PAIRED), ["t (before)", "t + unseen", CHOSEN])
    detail("Two arms", two, list(UNPAIRED), ["t (before)", "t + unseen", CHOSEN])
    print(f"\n{args.runs} runs a cell, seed {args.seed}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
