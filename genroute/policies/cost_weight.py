"""Choosing the ``learned`` policy's compiled cost weight from cross-validation, without paying for noise.

A learned router predicts each backend's quality and picks the best ``predicted - cost_weight x relative cost``.
Compiling sweeps the cost weight over ``WEIGHTS`` and routes every training record with a model that did not
see it (``folds``-fold cross-validation), which gives, per weight, each record's score and cost. Picking the
weight with the best mean out-of-fold quality (rule ``best``) chases noise: on a few hundred 0/1 outcomes a dearer
setting often looks a little better by chance, and the compiled policy then pays up to twice the best single
backend's cost for a gain that does not hold. The other rules are the statistician's answer:

- ``resolved`` (default): the cheapest weight (by mean out-of-fold cost) whose quality is not resolved below the
  best's — ``best - it`` within the ``confidence`` (95 %) normal interval of the per-record difference, paired on
  the same records. A dearer weight is paid for only when cross-validation resolves its gain;
- ``one_se``: the cheapest weight (by mean out-of-fold cost) whose quality is within one standard error
  of the best — the standard error of the per-record difference to the best weight, paired on the same records
  (Breiman's one-standard-error rule, with cost in the place of model size): less strict, it keeps a dearer
  weight whose gain is between one and two standard errors.

Measured on the embedded-model runs and both public outcome matrices: see ``benchmarks/RESULTS.md``.

Folds hold at least two records each; below four records cross-validation says nothing and the largest weight
(always the cheapest backend) is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, ValidationError

from genroute.config_errors import config_error, pydantic_validated
from genroute.errors import ConfigError
from genroute.groups import group_index, input_means
from genroute.policies.router_models import CHEAPEST_WEIGHT, cheapest_note
from genroute.public_model import ConfigModel, PublicModel

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Cost weights swept (0: best predicted quality at any cost; ``CHEAPEST_WEIGHT``, 1e6: always the cheapest backend).
WEIGHTS: tuple[float, ...] = (0.0, *[float(w) for w in np.geomspace(0.002, 5.0, 48)], CHEAPEST_WEIGHT)

Rule = Literal["resolved", "one_se", "best"]


class CostWeightRule(ConfigModel):
    """How compiling chooses the learned policy's cost weight from out-of-fold quality and cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Rule = Field(default="resolved", description="resolved (the cheapest weight not resolved worse than the "
                                                       "best at `confidence`), one_se (the cheapest within one paired "
                                                       "standard error of the best) or best (best mean out-of-fold "
                                                       "quality).")
    folds: int = Field(default=5, ge=2, le=50, description="Cross-validation folds over the training records.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Two-sided level of `resolved`'s interval.")

    @property
    def margin(self) -> float:
        """Standard errors a cheaper weight may trail the best by: 0 (best), 1 (one_se) or the normal quantile."""
        if self.rule == "best":
            return 0.0
        return 1.0 if self.rule == "one_se" else NormalDist().inv_cdf((1 + self.confidence) / 2)


class CostWeightChoice(PublicModel):
    """The weight a rule chose and what cross-validation measured for it and for the best weight."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Rule
    weight: float
    n: int = Field(description="Training records routed out of fold (distinct inputs, when some input repeats).")
    n_records: int | None = Field(default=None, description="The records behind the n inputs, when some repeats.")
    folds: int
    quality: float = Field(description="Mean out-of-fold quality at the chosen weight.")
    cost_usd: float = Field(description="Mean out-of-fold cost per request at the chosen weight.")
    best_weight: float
    best_quality: float
    best_cost_usd: float
    standard_error: float = Field(description="Paired standard error of best - chosen quality, per record.")

    def summary(self) -> str:
        """One sentence for reports."""
        records = f"{self.n} training records" if self.n_records is None else \
            f"{self.n} distinct training inputs ({self.n_records} records)"
        if self.folds == 0:  # cross_validate had too few records: nothing was routed out of fold
            return (f"cost weight {self.weight:.3g}{cheapest_note(self.weight)}: {records} are too few to "
                    f"cross-validate (at least 4), so the cheapest backend (quality {self.quality:.3f} on those "
                    f"records at ${self.cost_usd * 1000:.4f}/1k)")
        head = (f"cost weight {self.weight:.3g}{cheapest_note(self.weight)} by rule `{self.rule}` ({self.folds}-fold "
                f"cross-validation on {records}): out-of-fold quality {self.quality:.3f} at "
                f"${self.cost_usd * 1000:.4f}/1k")
        if self.weight == self.best_weight:
            return head + " (the best out-of-fold quality)"
        return (head + f"; the best, {self.best_quality:.3f} at ${self.best_cost_usd * 1000:.4f}/1k (weight "
                f"{self.best_weight:.3g}{cheapest_note(self.best_weight)}), is {self.best_quality - self.quality:+.3f} "
                f"better, paired standard error {self.standard_error:.3f}: not worth its cost")


def as_rule(value: CostWeightRule | str | Mapping[str, Any] | None, *, field: str = "cost_weight_rule"
            ) -> CostWeightRule | None:
    """``value`` validated: a rule name, a mapping of ``CostWeightRule`` fields, a rule, or ``None`` (no rule:
    a fixed cost weight). Raises ``ConfigError`` naming the field."""
    if value is None or isinstance(value, CostWeightRule):
        return value
    try:
        return pydantic_validated(CostWeightRule, {"rule": value} if isinstance(value, str) else value)
    except ValidationError as exc:
        raise config_error(exc, field) from None


def choose(scores: NDArray[Any], costs: NDArray[Any], weights: Sequence[float], rule: CostWeightRule, *,
           folds: int, groups: Sequence[Hashable] | None = None) -> CostWeightChoice:
    """Apply ``rule`` to out-of-fold per-record ``scores`` and ``costs`` of shape ``(records, weights)``. Records of
    one of ``groups`` (copies of one input) are one input: their mean score and cost, weighted once (as paired
    comparisons read repeats, ``genroute.bench.clusters``)."""
    scores, costs = np.asarray(scores, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    if scores.shape != costs.shape or scores.ndim != 2 or scores.shape[1] != len(weights) or not len(weights):
        raise ConfigError("need one score and one cost per record and cost weight", field="cost_weight_rule")
    n_records = len(scores)
    if groups is not None:
        # Ten copies of one input, routed alike, are not ten pieces of evidence: counted so, the paired standard
        # error shrank by sqrt(10) and a dearer weight's gain on a few inputs read as resolved.
        scores, costs = input_means(scores, groups), input_means(costs, groups)
    n = len(scores)
    quality, cost = scores.mean(axis=0), costs.mean(axis=0)
    order = list(range(len(weights)))
    # Ties: the cheaper setting, then the larger weight (the same picks, held more firmly towards cheap).
    best = max(order, key=lambda j: (quality[j], -cost[j], weights[j]))
    if n >= 2:
        diff = scores[:, [best]] - scores
        se = diff.std(axis=0, ddof=1) / math.sqrt(n)
    else:
        se = np.zeros(len(weights))
    # Within the margin (a float tolerance keeps a setting tied with the best, whose paired SE is 0, eligible).
    eligible = [j for j in order if quality[best] - quality[j] <= rule.margin * se[j] + 1e-12]
    pick = min(eligible, key=lambda j: (cost[j], -quality[j], -weights[j]))
    return CostWeightChoice(rule=rule.rule, weight=float(weights[pick]), n=n,
                            n_records=None if n == n_records else n_records, folds=folds,
                            quality=float(quality[pick]), cost_usd=float(cost[pick]), best_weight=float(weights[best]),
                            best_quality=float(quality[best]), best_cost_usd=float(cost[best]),
                            standard_error=float(se[pick]))


def fold_of(n: int, folds: int, seed: int, groups: Sequence[Hashable] | None = None, *, salt: int = 1
            ) -> NDArray[Any]:
    """Each record's fold: the distinct inputs (``groups``; each record its own without them) in a seeded order,
    dealt round-robin, so copies of one input share a fold and every fold up to the number of inputs holds one."""
    rng = np.random.default_rng(seed + salt)
    if groups is None:
        return rng.permutation(n) % folds
    inverse, distinct = group_index(groups, n)
    return (rng.permutation(distinct) % folds)[inverse]





def held_out(order: NDArray[Any], share: float, groups: Sequence[Hashable]) -> NDArray[Any]:
    """A mask over records: the first ``share`` of the distinct inputs (``groups``; at least one) in the order their
    records come in ``order`` (a seeded permutation of the records), each with every copy. A copy on the other side
    would let a model be tested on what it was fitted on (a kNN finds the twin at similarity 1); the share is of
    inputs, as ``fold_of`` deals them (of records, five inputs asked twenty times each had every input hit by a 20 %
    draw). When no input repeats: the first ``share`` of ``order``'s records."""
    inverse, distinct = group_index(groups, len(order))
    _, first = np.unique(inverse[order], return_index=True)
    ranked = inverse[order][np.sort(first)]  # the inputs in the order their first record comes
    hit = np.zeros(distinct, dtype=bool)
    hit[ranked[:max(1, int(round(distinct * share)))]] = True
    return hit[inverse]


def out_of_fold(scores: NDArray[Any], costs: NDArray[Any], folds: NDArray[Any], weights: Sequence[float],
                fit_fold: Callable[[NDArray[Any], NDArray[Any]], Callable[[float], NDArray[Any]]]
                ) -> tuple[NDArray[Any], NDArray[Any]]:
    """Per-record score and cost of the backend chosen at each weight by a model fitted without the record's fold.

    ``fit_fold(train_mask, test_mask)`` fits on the training rows and returns ``weight -> chosen backend index of
    every test row``.
    """
    picked_s = np.zeros((len(scores), len(weights)))
    picked_c = np.zeros((len(scores), len(weights)))
    for k in np.unique(folds):
        test = folds == k
        rows = np.flatnonzero(test)
        decide = fit_fold(~test, test)
        for j, w in enumerate(weights):
            pick = decide(w)
            picked_s[rows, j] = scores[rows, pick]
            picked_c[rows, j] = costs[rows, pick]
    return picked_s, picked_c


def cross_validate(scores: NDArray[Any], costs: NDArray[Any], rule: CostWeightRule, *, seed: int,
                   fit_fold: Callable[[NDArray[Any], NDArray[Any]], Callable[[float], NDArray[Any]]],
                   weights: Sequence[float] = WEIGHTS, groups: Sequence[Hashable] | None = None) -> CostWeightChoice:
    """Route the records out of fold at every weight and apply ``rule`` (``rule.folds``, fewer when there are
    fewer than two records a fold; below four records, the largest weight: the cheapest backend). Records of one
    of ``groups`` (copies of one input) share a fold."""
    n = len(scores)
    if n == 0:
        raise ConfigError("cross-validating the cost weight needs training records", field="outcomes")
    distinct = n if groups is None else group_index(groups, n)[1]
    folds = min(rule.folds, distinct // 2)  # at least two inputs a fold: every fold leaves training rows
    if folds < 2:  # every weight scored as "always the cheapest backend": the largest weight wins the ties
        cheap = [int(np.argmin(np.asarray(costs).mean(axis=0)))] * len(weights)
        return choose(np.asarray(scores)[:, cheap], np.asarray(costs)[:, cheap], weights, rule, folds=0, groups=groups)
    picked_s, picked_c = out_of_fold(scores, costs, fold_of(n, folds, seed, groups), weights, fit_fold)
    return choose(picked_s, picked_c, weights, rule, folds=folds, groups=groups)
