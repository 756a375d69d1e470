"""Routers and baselines scored on an outcome matrix: each picks one candidate per record (an index array),
and the pick's score and cost are read off the matrix. Nothing is fitted on the records being scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from genroute.bench.outcomes import OutcomeMatrix
from genroute.errors import UsageError
from genroute.types import GenerateRequest

#: Cost weights swept for the learned policy's curve (0: best predicted quality at any cost).
COST_WEIGHTS: tuple[float, ...] = (0.0, *[float(w) for w in np.geomspace(0.002, 5.0, 48)], 1e6)
#: cost_aware floors (share of each task's best training quality) swept for its curve.
FLOORS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)


class RouterRow(BaseModel):
    """How one router or baseline did on the evaluation records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    quality: float
    cost_per_request_usd: float
    n: int
    picks: dict[str, int] = Field(default_factory=dict, description="Records routed to each candidate.")
    knob: float | None = Field(default=None, description="The trade-off setting (cost weight or floor share).")


def check_disjoint(train: OutcomeMatrix, evaluate: OutcomeMatrix, *, field: str = "eval_outcomes") -> None:
    """Refuse to evaluate on records the policy was compiled from (same id or same input text)."""
    ids = set(train.ids) & set(evaluate.ids)
    texts = {r.input for r in train.records} & {r.input for r in evaluate.records}
    if ids or texts:
        example = sorted(ids)[0] if ids else repr(sorted(texts)[0][:60])
        raise UsageError(f"{len(ids)} record id(s) and {len(texts)} input(s) of the evaluation records are in "
                         f"the training records (e.g. {example}): a policy is never scored on what it was "
                         "compiled from; remove them or use another file", field=field)


def row(name: str, matrix: OutcomeMatrix, choice: np.ndarray, knob: float | None = None) -> RouterRow:
    """Quality, cost and picks of routing ``matrix``'s records to ``choice``."""
    rows = np.arange(len(choice))
    counts = Counter(matrix.candidates[int(c)] for c in choice)
    return RouterRow(name=name, quality=float(matrix.scores[rows, choice].mean()),
                     cost_per_request_usd=float(matrix.costs[rows, choice].mean()), n=len(choice),
                     picks=dict(sorted(counts.items())), knob=knob)


def picked_scores(matrix: OutcomeMatrix, choice: np.ndarray) -> np.ndarray:
    """Per-record score of the chosen candidate."""
    return matrix.scores[np.arange(len(choice)), choice]


def picked_costs(matrix: OutcomeMatrix, choice: np.ndarray) -> np.ndarray:
    """Per-record cost of the chosen candidate."""
    return matrix.costs[np.arange(len(choice)), choice]


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


def cost_aware_choices(train: OutcomeMatrix, held: OutcomeMatrix, floor: float) -> np.ndarray:
    """The compiled ``cost_aware`` policy (stats and floors from ``train``) deciding every held record."""
    from genroute.bench.compile import cost_aware_policy, policy_context, stats_from

    stats = stats_from(train.outcomes())
    policy, _ = cost_aware_policy(stats, list(train.candidates), relative_floor=floor)
    context = policy_context(list(train.candidates), stats)
    decided: dict[str | None, int] = {}  # the policy keys on the task alone: decide once per task
    for task in set(held.tasks):
        request = GenerateRequest(input="x", task=task)
        decided[task] = held.candidates.index(policy.decide(request, context).rungs[0].backend)
    return np.array([decided[t] for t in held.tasks], dtype=int)


@dataclass
class LearnedFit:
    """The learned router chosen on a validation part of the training records, refitted on all of them."""

    name: str
    spec: dict[str, Any]
    model: Any
    predicted: np.ndarray  # (held records, candidates)
    cost_weight_match: float  # cheapest weight reaching the best single's validation quality
    cost_weight_budget: float  # best validation quality at no more than per-task-best's validation cost
    methods: list[dict[str, Any]] = field(default_factory=list)


def learned_fit(train: OutcomeMatrix, held: OutcomeMatrix, x_train: np.ndarray, x_held: np.ndarray, *,
                use_task: bool, specs: Sequence[dict[str, Any]], seed: int = 0, validation: float = 0.2
                ) -> LearnedFit:
    """Pick the estimator and the two operating points on a validation split of ``train``; refit on all of
    ``train``; predict ``held``. ``x_*`` are raw embeddings (task features are added here if ``use_task``)."""
    from genroute.bench.curves import aiq
    from genroute.bench.datasets import split_ids
    from genroute.policies.router_models import features, fit

    fit_ids, val_ids = split_ids(train.ids, holdout=validation, seed=seed + 1)
    index = {rid: i for i, rid in enumerate(train.ids)}
    fit_rows, val_rows = [index[i] for i in fit_ids], [index[i] for i in val_ids]
    inner, val = train.subset(fit_ids), train.subset(val_ids)
    vocab = sorted({t for t in train.tasks if t is not None}) if use_task else []
    x_tr = features(x_train, train.tasks, vocab)
    x_he = features(x_held, held.tasks, vocab)
    cost = train.costs.mean(axis=0)
    target_q = val.scores[:, best_single(inner)].mean()
    budget = picked_costs(val, per_task_best(inner, val)).mean()
    lo, hi = val.costs.mean(axis=0).min(), val.costs.mean(axis=0).max()
    results = []
    for spec in specs:
        model = fit(x_tr[fit_rows], inner.scores, train.candidates, cost=inner.costs.mean(axis=0),
                    tasks=vocab, seed=seed, **spec)
        predicted = model.predict(x_tr[val_rows])
        points = [(w, *_point(val, model.choose(predicted, w))) for w in COST_WEIGHTS]
        results.append({"spec": spec, "validation_aiq": aiq([(c, q) for _, c, q in points], lo, hi),
                        "points": points})
    best = max(results, key=lambda r: r["validation_aiq"])
    points = best["points"]
    reaching = [w for w, _, q in points if q >= target_q]
    match = max(reaching) if reaching else 0.0
    affordable = [(q, w) for w, c, q in points if c <= budget]
    budget_w = max(affordable)[1] if affordable else max(COST_WEIGHTS)
    model = fit(x_tr, train.scores, train.candidates, cost=cost, tasks=vocab, seed=seed, cost_weight=match,
                **best["spec"])
    name = "learned " + ("(text + task)" if use_task else "(text only)")
    methods = [{"spec": _spec_name(r["spec"]), "validation_aiq": r["validation_aiq"]} for r in results]
    return LearnedFit(name=name, spec=best["spec"], model=model, predicted=model.predict(x_he),
                      cost_weight_match=match, cost_weight_budget=budget_w, methods=methods)


def _point(matrix: OutcomeMatrix, choice: np.ndarray) -> tuple[float, float]:
    return float(picked_costs(matrix, choice).mean()), float(picked_scores(matrix, choice).mean())


def _spec_name(spec: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "method")
    return spec["method"] + (f" ({extra})" if extra else "")


def curve(held: OutcomeMatrix, choices: Sequence[tuple[float, np.ndarray]]) -> list[tuple[float, float, float]]:
    """``(knob, cost, quality)`` of each ``(knob, picks)`` on the held records."""
    return [(knob, *_point(held, choice)) for knob, choice in choices]
