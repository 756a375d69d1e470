"""Semantic routes compiled from an outcome matrix: a ``semantic`` policy config a person can read.

The training queries are clustered (spherical k-means on their unit embeddings, seeded). Each cluster goes to
the candidate that is best at the cost trade-off on that cluster's training records — the highest mean score
net of ``cost_weight x`` its cost relative to the dearest candidate, the mean shrunk towards the whole training
set's so that a small cluster does not follow its noise — and becomes a route: the cluster's training queries
nearest its centre are that candidate's utterances. A request then goes where its nearest utterance goes (the
``semantic`` policy's own rule, ``top_k`` 1, no threshold), so the routes need no task label.

The number of clusters and the operating points are chosen by cross-validation on the training records only
(each fold's queries routed by routes built without them); nothing is tuned on the records being scored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from genroute.bench.outcomes import OutcomeMatrix
from genroute.bench.report import markdown_row

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Cluster counts compared by cross-validation.
CLUSTERS: tuple[int, ...] = (8, 16, 32, 64)
#: Training queries kept per route as its utterances (those nearest the cluster's centre).
UTTERANCES = 8
#: Pseudo-records of the whole training set's mean mixed into each cluster's mean score (shrinkage).
PRIOR_WEIGHT = 20.0


def kmeans(x: NDArray[Any], k: int, *, seed: int = 0, iterations: int = 30) -> NDArray[Any]:
    """Unit-length centres of ``k`` spherical k-means clusters of the unit rows ``x`` (k-means++ start)."""
    rng = np.random.default_rng(seed)
    k = max(1, min(k, len(x)))
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        far = np.maximum(1.0 - np.max(x @ np.array(centres).T, axis=1), 0.0)
        centres.append(x[rng.choice(len(x), p=far / far.sum())] if far.sum() > 0 else x[rng.integers(len(x))])
    # float32 throughout (the division by a Python float keeps it), whatever the numpy stubs infer for ``new``.
    c: NDArray[np.floating[Any]] = np.array(centres, dtype=np.float32)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        empty = ~np.isin(np.arange(k), assign)
        sums[empty] = c[empty]  # an empty cluster keeps its centre
        new = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, c, atol=1e-6):
            break
        c = new
    return c


@dataclass
class Routes:
    """Routes over one set of training records: cluster centres, each cluster's utterances (row indices of
    the training records) and its shrunk mean score per candidate."""

    centres: NDArray[Any]
    members: list[NDArray[Any]]
    utterances: list[NDArray[Any]]
    quality: NDArray[Any]  # (clusters, candidates)
    relative_cost: NDArray[Any]  # (candidates,)

    def pick(self, cost_weight: float) -> NDArray[Any]:
        """Each cluster's candidate at ``cost_weight`` (ties: the cheaper)."""
        utility = self.quality - cost_weight * self.relative_cost - 1e-9 * self.relative_cost
        return np.argmax(utility, axis=1)

    def route(self, x_train: NDArray[Any], x: NDArray[Any], cost_weight: float) -> NDArray[Any]:
        """The candidate of each unit row of ``x``: that of its nearest utterance (the semantic policy's rule)."""
        rows = np.concatenate(self.utterances)
        owner = np.concatenate([np.full(len(u), i) for i, u in enumerate(self.utterances)])
        nearest = np.argmax(x @ x_train[rows].T, axis=1)
        return self.pick(cost_weight)[owner[nearest]]


def build(x: NDArray[Any], scores: NDArray[Any], costs: NDArray[Any], k: int, *, seed: int = 0,
          utterances: int = UTTERANCES, prior: float = PRIOR_WEIGHT) -> Routes:
    """Cluster the unit rows ``x`` and summarise each cluster's scores (see module)."""
    centres = kmeans(x, k, seed=seed)
    sims = x @ centres.T
    assign = np.argmax(sims, axis=1)
    overall = scores.mean(axis=0)
    keep, members, quality, spoken = [], [], [], []
    for c in range(len(centres)):
        rows = np.flatnonzero(assign == c)
        if not len(rows):
            continue
        keep.append(c)
        members.append(rows)
        quality.append((scores[rows].sum(axis=0) + prior * overall) / (len(rows) + prior))
        spoken.append(rows[np.argsort(-sims[rows, c])[:utterances]])
    mean_cost = costs.mean(axis=0)
    relative = mean_cost / mean_cost.max() if mean_cost.max() > 0 else np.zeros_like(mean_cost)
    return Routes(centres=centres[keep], members=members, utterances=spoken, quality=np.array(quality),
                  relative_cost=relative)


@dataclass
class SemanticFit:
    """Semantic routes chosen by cross-validation on the training records, rebuilt on all of them."""

    clusters: int
    routes: Routes
    predicted_points: list[tuple[float, float, float]]  # out-of-fold (weight, cost, quality) on train
    methods: list[dict[str, Any]] = field(default_factory=list)


def fit(train: OutcomeMatrix, x_train: NDArray[Any], weights: Sequence[float], *, seed: int = 0, folds: int = 5,
        clusters: Sequence[int] = CLUSTERS) -> SemanticFit:
    """Choose the cluster count by cross-validated AIQ on ``train`` (out-of-fold routing), rebuild on all."""
    from genroute.bench.clusters import text_groups
    from genroute.bench.curves import aiq
    from genroute.policies import cost_weight

    # Copies of one input share a fold (a query routed by its own twin's cluster would look well routed).
    fold_of = cost_weight.fold_of(len(train.records), max(2, folds), seed,
                                  text_groups([r.input for r in train.records]), salt=2)
    cost = train.costs.mean(axis=0)
    rows = np.arange(len(train.records))
    results: list[_Clustering] = []
    for k in clusters:
        if k > len(train.records) // 2:
            continue
        picks = np.zeros((len(weights), len(rows)), dtype=int)
        for f in range(max(2, folds)):
            part, out = fold_of != f, fold_of == f
            routes = build(x_train[part], train.scores[part], train.costs[part], k, seed=seed)
            for i, w in enumerate(weights):
                picks[i, out] = routes.route(x_train[part], x_train[out], w)
        points = [(w, float(train.costs[rows, p].mean()), float(train.scores[rows, p].mean()))
                  for w, p in zip(weights, picks, strict=True)]
        results.append({"k": k, "points": points,
                        "aiq": aiq([(c, q) for _, c, q in points], float(cost.min()), float(cost.max()))})
    if not results:
        results.append({"k": 1, "points": [], "aiq": 0.0})
    best = max(results, key=lambda r: r["aiq"])
    return SemanticFit(clusters=best["k"], routes=build(x_train, train.scores, train.costs, best["k"], seed=seed),
                       predicted_points=best["points"],
                       methods=[{"spec": f"semantic routes ({r['k']} clusters)", "validation_aiq": r["aiq"],
                                 "chosen": r is best} for r in results])


class _Clustering(TypedDict):
    """One cluster count's cross-validated routes."""

    k: int
    points: list[tuple[float, float, float]]
    aiq: float


def config(routes: Routes, train: OutcomeMatrix, cost_weight: float, *, default: str) -> dict[str, Any]:
    """The compiled ``semantic`` policy config: candidate -> the utterances of the clusters routed to it."""
    chosen = routes.pick(cost_weight)
    by_candidate: dict[str, list[str]] = {}
    for cluster, rows in enumerate(routes.utterances):
        by_candidate.setdefault(train.candidates[int(chosen[cluster])], []).extend(
            train.records[int(r)].input for r in rows)
    return {"kind": "semantic", "default": default, "threshold": -1.0, "top_k": 1,
            "routes": {c: by_candidate[c] for c in sorted(by_candidate)}}


def route_table(routes: Routes, train: OutcomeMatrix, cost_weight: float) -> str:
    """The routes as Markdown: per cluster, its size, tasks, the candidate chosen and an example query."""
    chosen = routes.pick(cost_weight)
    lines = ["| route | training records | main tasks | candidate | its training quality | example query |",
             "|---|---|---|---|---|---|"]
    for c, rows in enumerate(routes.members):
        tasks: dict[str, int] = {}
        for r in rows:
            task = train.records[int(r)].task or "–"
            tasks[task] = tasks.get(task, 0) + 1
        top = ", ".join(f"{t} {n}" for t, n in sorted(tasks.items(), key=lambda kv: -kv[1])[:3])
        j = int(chosen[c])
        example = " ".join(train.records[int(routes.utterances[c][0])].input.split())[:90]
        lines.append(markdown_row([c + 1, len(rows), top, train.candidates[j], f"{train.scores[rows, j].mean():.3f}",
                                   example]))
    return "\n".join(lines) + "\n"


def write_config(path: Path, routes: Routes, train: OutcomeMatrix, cost_weight: float, *, default: str) -> Path:
    """Write the compiled semantic policy config (JSON) atomically."""
    from genroute.cache import atomic_write_bytes

    body = config(routes, train, cost_weight, default=default)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Owner-only when new (a rerun keeps its mode): the utterances are training queries, word for word.
    atomic_write_bytes(path, (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode(), private=True,
                       same_mode=True)
    return path
