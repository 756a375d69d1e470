"""Routers and baselines scored on an outcome matrix: each picks one candidate per record (an index array),
and the pick's score and cost are read off the matrix. Nothing is fitted on the records being scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from pydantic import ConfigDict, Field

from genroute.bench.baselines import best_single, per_task_best
from genroute.bench.outcomes import OutcomeMatrix
from genroute.errors import ConfigError, UsageError
from genroute.policies.cost_weight import WEIGHTS, CostWeightChoice, CostWeightRule, choose, fold_of, out_of_fold
from genroute.public_model import PublicModel
from genroute.types import GenerateRequest

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Cost weights swept for the learned policy's curve (0: best predicted quality at any cost).
COST_WEIGHTS: tuple[float, ...] = WEIGHTS
#: The cost-weight rules reported side by side (the compiled file uses the one asked for).
RULES: tuple[str, ...] = ("best", "one_se", "resolved")
#: cost_aware floors (share of each task's best training quality) swept for its curve.
FLOORS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)


class RouterRow(PublicModel):
    """How one router or baseline did on the evaluation records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    quality: float
    quality_ci: tuple[float, float] = Field(default=(0.0, 0.0),
                                           description="95 % CI of the quality (`stats.quality_ci`).")
    cost_per_request_usd: float
    n: int
    picks: dict[str, int] = Field(default_factory=dict, description="Records routed to each candidate.")
    knob: float | None = Field(default=None, description="The trade-off setting (cost weight or floor share).")


def check_disjoint(train: OutcomeMatrix, evaluate: OutcomeMatrix, *, field: str = "eval_outcomes") -> None:
    """Refuse to evaluate on records the policy was compiled from (same id or same input text, case, runs of
    whitespace and Unicode composition aside, as ``datasets.split_by_input`` reads a repeat). Only ids the records
    gave count: two files without ids both number theirs ``record-1``, ``record-2``..."""
    from genroute.knowledge.examples import input_key

    ids = _given(train) & _given(evaluate)
    seen = {input_key(r.input) for r in train.records}
    texts = sorted({r.input for r in evaluate.records if input_key(r.input) in seen})
    if ids or texts:
        example = sorted(ids)[0] if ids else repr(texts[0][:60])
        raise UsageError(f"{len(ids)} record id(s) and {len(texts)} input(s) of the evaluation records are in "
                         f"the training records (e.g. {example}): a policy is never scored on what it was "
                         "compiled from; remove them or use another file", field=field)


def _given(matrix: OutcomeMatrix) -> set[str]:
    return set(matrix.ids) if matrix.given_ids is None else set(matrix.ids) & matrix.given_ids


def row(name: str, matrix: OutcomeMatrix, choice: NDArray[Any], knob: float | None = None) -> RouterRow:
    """Quality (with its 95 % CI, ``stats.quality_ci``), cost and picks of routing ``matrix``'s records to
    ``choice``."""
    from genroute.bench.stats import quality_ci

    rows = np.arange(len(choice))
    counts = Counter(matrix.candidates[int(c)] for c in choice)
    scores = matrix.scores[rows, choice]
    return RouterRow(name=name, quality=float(scores.mean()), quality_ci=quality_ci(scores.tolist()),
                     cost_per_request_usd=float(matrix.costs[rows, choice].mean()), n=len(choice),
                     picks=dict(sorted(counts.items())), knob=knob)


def picked_scores(matrix: OutcomeMatrix, choice: NDArray[Any]) -> NDArray[Any]:
    """Per-record score of the chosen candidate."""
    return matrix.scores[np.arange(len(choice)), choice]


def picked_costs(matrix: OutcomeMatrix, choice: NDArray[Any]) -> NDArray[Any]:
    """Per-record cost of the chosen candidate."""
    return matrix.costs[np.arange(len(choice)), choice]


def cost_aware_choices(train: OutcomeMatrix, held: OutcomeMatrix, floors: Sequence[float]
                       ) -> list[tuple[float, NDArray[Any]]]:
    """The compiled ``cost_aware`` policy (stats and floors from ``train``) deciding every held record, at
    each floor share of the task's best training quality."""
    from genroute.bench.compile import policy_context
    from genroute.bench.matrix_stats import matrix_stats
    from genroute.policies.cost_aware_compiled import cost_aware_policy

    stats = matrix_stats(train, n_boot=200)
    context = policy_context(list(train.candidates), stats)
    out = []
    for floor in floors:
        policy, _ = cost_aware_policy(stats, list(train.candidates), relative_floor=floor)
        decided: dict[str | None, int] = {}  # the policy keys on the task alone: decide once per task
        for task in set(held.tasks):
            request = GenerateRequest(input="x", task=task)
            decided[task] = held.candidates.index(policy.decide(request, context).rungs[0].backend)
        out.append((floor, np.array([decided[t] for t in held.tasks], dtype=int)))
    return out


@dataclass
class LearnedFit:
    """The learned router chosen by cross-validation on the training records, refitted on all of them."""

    name: str
    spec: dict[str, Any]
    model: Any
    predicted: NDArray[Any]  # (held records, candidates)
    cost_weight_match: float  # cheapest weight whose out-of-fold quality reaches the best single's
    cost_weight_budget: float  # best out-of-fold quality at no more than per-task-best's cost
    #: share of the best single's cost -> best out-of-fold quality at no more than that cost
    cost_weight_shares: dict[float, float] = field(default_factory=dict)
    methods: list[dict[str, Any]] = field(default_factory=list)
    #: rule -> the weight it chose from the chosen estimator's out-of-fold routing (``cost_weight``)
    cost_weight_choices: dict[str, CostWeightChoice] = field(default_factory=dict)
    #: the weight written into the model file: the asked-for rule's choice
    cost_weight: float = 0.0


def learned_fit(train: OutcomeMatrix, held: OutcomeMatrix, x_train: NDArray[Any], x_held: NDArray[Any], *,
                use_task: bool, specs: Sequence[dict[str, Any]], seed: int = 0, folds: int | None = None,
                cost_shares: Sequence[float] = (0.5, 0.4), rule: CostWeightRule | None = None,
                embedder: str = "unknown") -> LearnedFit:
    """Pick the estimator and the operating points on out-of-fold predictions for ``train`` (``folds``-fold
    cross-validation, by default ``rule.folds``: every training record is predicted by a model that did not see
    it); refit on all of ``train``; predict ``held``. ``x_*`` are raw embeddings (task features are added here if ``use_task``).
    Each of ``RULES`` chooses a cost weight from the same out-of-fold routing; the model file gets ``rule``'s
    (default: ``CostWeightRule()``) and the name of the ``embedder`` that embedded ``x_*``."""
    from genroute.bench.clusters import text_groups
    from genroute.bench.curves import aiq
    from genroute.policies.router_models import features, fit

    vocab = sorted({t for t in train.tasks if t is not None}) if use_task else []
    x_tr = features(x_train, train.tasks, vocab)
    x_he = features(x_held, held.tasks, vocab)
    cost = train.costs.mean(axis=0)
    rule = rule or CostWeightRule()
    folds = max(2, rule.folds if folds is None else folds)
    # Copies of one input share a fold: validated on its own twin, a model would look better than it is.
    groups = text_groups([r.input for r in train.records])
    fold = fold_of(len(train.records), folds, seed, groups)
    folds = len(np.unique(fold))  # fewer distinct inputs than ``folds`` make fewer folds: report those used
    # The targets the operating points must meet, measured on the same (training) records.
    target_q = train.scores[:, best_single(train)].mean()
    best_cost = train.costs[:, best_single(train)].mean()
    budget = picked_costs(train, per_task_best(train, train)).mean()
    lo, hi = cost.min(), cost.max()
    results: list[_Fitted] = []
    skipped: list[dict[str, Any]] = []
    for spec in specs:
        def fit_fold(tr: NDArray[Any], te: NDArray[Any], spec: dict[str, Any] = spec) -> Any:
            model = fit(x_tr[tr], train.scores[tr], train.candidates, cost=cost, tasks=vocab, seed=seed, **spec)
            predicted = model.predict(x_tr[te])
            return lambda w: model.choose(predicted, w)  # each fold decided by its own model

        try:
            oof_s, oof_c = out_of_fold(train.scores, train.costs, fold, COST_WEIGHTS, fit_fold)
        except ConfigError as exc:  # e.g. pairwise with no cheaper candidate on the front: not applicable here
            skipped.append({"spec": _spec_name(spec), "validation_aiq": None, "chosen": False, "note": str(exc)})
            continue
        points = [(w, float(oof_c[:, j].mean()), float(oof_s[:, j].mean())) for j, w in enumerate(COST_WEIGHTS)]
        results.append({"spec": spec, "validation_aiq": aiq([(c, q) for _, c, q in points], lo, hi),
                        "points": points, "oof": (oof_s, oof_c)})
    if not results:
        raise UsageError("no learned estimator applies to these records: " + "; ".join(
            f"{s['spec']}: {s['note']}" for s in skipped), field="outcomes")
    best = max(results, key=lambda r: r["validation_aiq"])
    match, budget_w, shares = operating_points(best["points"], target_q, budget, best_cost, cost_shares)
    choices = {r: choose(*best["oof"], COST_WEIGHTS, rule.model_copy(update={"rule": r}), folds=folds, groups=groups)
               for r in RULES}
    weight = choices[rule.rule].weight
    # The embedder's name goes into the model file: a learned policy given another embedder refuses it.
    model = fit(x_tr, train.scores, train.candidates, cost=cost, tasks=vocab, seed=seed, cost_weight=weight,
                meta={"embedder": embedder}, **best["spec"])
    name = "learned " + ("(text + task)" if use_task else "(text only)")
    methods = [{"spec": _spec_name(r["spec"]), "validation_aiq": r["validation_aiq"], "chosen": r is best}
               for r in results] + skipped
    return LearnedFit(name=name, spec=best["spec"], model=model, predicted=model.predict(x_he),
                      cost_weight_match=match, cost_weight_budget=budget_w, methods=methods,
                      cost_weight_shares=shares, cost_weight_choices=choices, cost_weight=weight)


def operating_points(points: Sequence[tuple[float, float, float]], target_quality: float, budget: float,
                     best_cost: float, shares: Sequence[float]) -> tuple[float, float, dict[float, float]]:
    """Knob values read off ``(weight, cost, quality)`` points measured on training records: the largest
    weight still reaching ``target_quality``; the best quality at no more than ``budget``; and at no more than
    each share of ``best_cost``."""
    reaching = [w for w, _, q in points if q >= target_quality]

    def within(limit: float) -> float:  # the weight with the best quality at no more than ``limit``
        affordable = [(q, w) for w, c, q in points if c <= limit]
        return max(affordable)[1] if affordable else max(COST_WEIGHTS)

    return (max(reaching) if reaching else 0.0, within(budget),
            {share: within(share * best_cost) for share in shares})


def _point(matrix: OutcomeMatrix, choice: NDArray[Any]) -> tuple[float, float]:
    return float(picked_costs(matrix, choice).mean()), float(picked_scores(matrix, choice).mean())


class _Fitted(TypedDict):
    """One estimator's cross-validated fit."""

    spec: dict[str, Any]
    validation_aiq: float
    points: list[tuple[float, float, float]]
    oof: tuple[NDArray[Any], NDArray[Any]]


def _spec_name(spec: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "method")
    return spec["method"] + (f" ({extra})" if extra else "")


def curve(held: OutcomeMatrix, choices: Sequence[tuple[float, NDArray[Any]]]) -> list[tuple[float, float, float]]:
    """``(knob, cost, quality)`` of each ``(knob, picks)`` on the held records."""
    return [(knob, *_point(held, choice)) for knob, choice in choices]
