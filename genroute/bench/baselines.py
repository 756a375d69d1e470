"""Baselines every compiled comparison includes, on outcome matrices: random, each single candidate, the best
single and the per-task best candidate (both chosen on the training records only), and the cost-quality oracle.
"""

from __future__ import annotations

import numpy as np

from genroute.bench.outcomes import OutcomeMatrix


def best_single(train: OutcomeMatrix) -> int:
    """The candidate with the best mean training score (ties: the cheaper)."""
    return int(min(range(len(train.candidates)),
                   key=lambda j: (-train.scores[:, j].mean(), train.costs[:, j].mean(), j)))


def cheapest(train: OutcomeMatrix) -> int:
    """The candidate with the lowest mean training cost (ties: the better)."""
    return int(min(range(len(train.candidates)),
                   key=lambda j: (train.costs[:, j].mean(), -train.scores[:, j].mean(), j)))


def per_task_best(train: OutcomeMatrix, held: OutcomeMatrix) -> np.ndarray:
    """Each record's task's best training candidate (tasks unseen in training: the best single)."""
    fallback = best_single(train)
    tasks = np.array([t or "" for t in train.tasks])
    best = {task: best_single(train.subset(np.array(train.ids)[tasks == task])) for task in set(tasks)}
    return np.array([best.get(t or "", fallback) for t in held.tasks], dtype=int)


def oracle(held: OutcomeMatrix) -> np.ndarray:
    """The cost-quality oracle: each record's best-scoring candidate, the cheapest among equals."""
    best = held.scores.max(axis=1, keepdims=True)
    costs = np.where(held.scores >= best, held.costs, np.inf)
    return costs.argmin(axis=1)


def baselines(train: OutcomeMatrix, held: OutcomeMatrix, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Every baseline's picks on ``held``, each chosen on ``train`` only (the oracle sees the answers)."""
    n = len(held.records)
    out = {"random": np.random.default_rng(seed).integers(0, len(held.candidates), size=n)}
    out |= {f"single {c}": np.full(n, j) for j, c in enumerate(held.candidates)}
    out["best single (train)"] = np.full(n, best_single(train))
    out["per-task best (train)"] = per_task_best(train, held)
    out["oracle"] = oracle(held)
    return out
