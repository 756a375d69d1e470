"""Baselines every compiled comparison includes, on outcome matrices: random, each single candidate, the best
single and the per-task best candidate (both chosen on the training records only), and the cost-quality oracle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from genroute.bench.outcomes import OutcomeMatrix

if TYPE_CHECKING:
    from numpy.typing import NDArray


def best_single(train: OutcomeMatrix) -> int:
    """The candidate with the best mean training score (ties: the cheaper)."""
    return _best(train.scores, train.costs)


def _best(scores: NDArray[Any], costs: NDArray[Any]) -> int:
    return int(min(range(scores.shape[1]), key=lambda j: (-scores[:, j].mean(), costs[:, j].mean(), j)))


def cheapest(train: OutcomeMatrix) -> int:
    """The candidate with the lowest mean training cost (ties: the better)."""
    return int(min(range(len(train.candidates)),
                   key=lambda j: (train.costs[:, j].mean(), -train.scores[:, j].mean(), j)))


def per_task_best(train: OutcomeMatrix, held: OutcomeMatrix) -> NDArray[Any]:
    """Each record's task's best training candidate (tasks unseen in training: the best single)."""
    fallback = best_single(train)
    # Each task's rows gathered in one pass (a subset per task was a pass over every record per task: quadratic
    # when a matrix has thousands of tasks), in record order, so each mean is the one it was.
    rows: dict[str, list[int]] = {}
    for i, task in enumerate(train.tasks):
        rows.setdefault(task or "", []).append(i)
    best = {task: _best(train.scores[r], train.costs[r]) for task, r in rows.items()}
    return np.array([best.get(t or "", fallback) for t in held.tasks], dtype=int)


def oracle(held: OutcomeMatrix) -> NDArray[Any]:
    """The cost-quality oracle: each record's best-scoring candidate, the cheapest among equals."""
    best = held.scores.max(axis=1, keepdims=True)
    costs = np.where(held.scores >= best, held.costs, np.inf)
    return costs.argmin(axis=1)


def baselines(train: OutcomeMatrix, held: OutcomeMatrix, *, seed: int = 0) -> dict[str, NDArray[Any]]:
    """Every baseline's picks on ``held``, each chosen on ``train`` only (the oracle sees the answers)."""
    n = len(held.records)
    out = {"random": np.random.default_rng(seed).integers(0, len(held.candidates), size=n)}
    out |= {f"single {c}": np.full(n, j) for j, c in enumerate(held.candidates)}
    out["best single (train)"] = np.full(n, best_single(train))
    out["per-task best (train)"] = per_task_best(train, held)
    out["oracle"] = oracle(held)
    return out
