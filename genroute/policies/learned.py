"""``learned``: a router trained on benchmark outcomes. It predicts every backend's quality on the request
(kNN, logistic regression, an MLP or a blend over the request's embedding, optionally with its task, or the
cascade-style ``pairwise`` model between two candidates; see ``router_models``) and picks the best predicted
quality net of a cost term applied at decision time.

``train(outcomes, path)`` writes the model file and reports held-out routing accuracy; the policy loads it.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field

from genroute.bounds import PathText
from genroute.errors import ConfigError
from genroute.knowledge.embedders import traced
from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext, PolicyUpdate
from genroute.policies.cost_weight import CostWeightChoice, CostWeightRule, as_rule, cross_validate, held_out
from genroute.policies.remembered import RememberedEmbeddings, deciding_cost
from genroute.policies.router_models import RouterModel, cheapest_note, features, fit
from genroute.policies.static import check_backends
from genroute.public_model import PublicModel
from genroute.types import Decision, GenerateRequest, Rung

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from opentelemetry import trace

    from genroute.knowledge.embedders import ArrayEmbedder
    from genroute.runtime.resources import Resources


class Outcome(PublicModel):
    """One benchmark record answered by one backend (the bench writes one per record and backend)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    input: str
    backend: str
    score: float = Field(description="Scorer output; >= pass_score counts as correct.")
    cost_usd: float = 0.0
    record_id: str | None = None
    task: str | None = None


class TrainReport(PublicModel):
    """What training produced and how the router does on records it never saw."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: str
    method: str
    backends: tuple[str, ...]
    n_train: int
    n_test: int
    #: Share of held-out records routed to their best backend (correct, then cheapest). The held-out figures are
    #: ``None`` (and ``single_backend`` empty) when nothing was held out (``test_share=0``).
    routing_accuracy: float | None
    #: Share of held-out records the chosen backend answered correctly, and their mean cost.
    success_rate: float | None
    mean_cost_usd: float | None
    oracle_success_rate: float | None
    #: Baseline: routing accuracy of always choosing the training split's most common best backend.
    majority_routing_accuracy: float | None
    #: Baselines: success rate, mean cost and routing accuracy of sending every held-out record to one backend.
    single_backend: dict[str, dict[str, float]]
    #: The cost weight stored in the model file (the policy's default), and how a rule chose it, if one did.
    cost_weight: float = 0.1
    cost_weight_choice: CostWeightChoice | None = None


def _group(outcomes: Iterable[Outcome | Mapping[str, Any]]) -> list[tuple[str, str | None, dict[str, Outcome]]]:
    records: dict[str, tuple[str, str | None, dict[str, Outcome]]] = {}
    for raw in outcomes:
        o = raw if isinstance(raw, Outcome) else Outcome.model_validate(
            {**raw, "record_id": raw.get("record_id", raw.get("id"))})
        rid = o.record_id or f"{o.task}\x00{o.input}"
        records.setdefault(rid, (o.input, o.task, {}))[2][o.backend] = o
    return list(records.values())


def best_backend(by_backend: Mapping[str, Outcome], pass_score: float) -> str:
    """The label: a backend that answered correctly at the lowest cost (if none did, the cheapest)."""
    return min(by_backend, key=lambda b: (by_backend[b].score < pass_score, by_backend[b].cost_usd, b))


def train(outcomes: Iterable[Outcome | Mapping[str, Any]], path: str | Path, *, embedder: ArrayEmbedder | None = None,
          method: str = "knn", k: int = 7, pass_score: float = 0.5, test_share: float = 0.2, seed: int = 0,
          use_task: bool = False, cost_weight: float = 0.1,
          cost_weight_rule: CostWeightRule | str | Mapping[str, Any] | None = None, **options: Any) -> TrainReport:
    """Train on a seeded split of the records, write the model file, report held-out figures (``test_share=0``:
    every record trains the model, and the held-out figures are ``None``).

    Records that lack an outcome of some backend are left out (a score matrix has no holes). ``use_task``
    adds the records' task as a feature; ``cost_weight`` is stored as the policy's default trade-off, unless
    ``cost_weight_rule`` (``"resolved"``, ``"one_se"``, ``"best"`` or a ``CostWeightRule``) chooses it by
    cross-validation on the training part (see ``genroute.policies.cost_weight``).
    """
    rule = as_rule(cost_weight_rule)
    grouped = _group(outcomes)
    backends = sorted({b for _, _, by in grouped for b in by})
    records = [r for r in grouped if len(r[2]) == len(backends)]
    if len(records) < 2:
        raise ConfigError("need at least two benchmark records scored by every backend to train",
                          field="outcomes")
    scores = np.array([[by[b].score for b in backends] for _, _, by in records], dtype=np.float32)
    costs = np.array([[by[b].cost_usd for b in backends] for _, _, by in records], dtype=np.float64)
    labels = np.array([backends.index(best_backend(by, pass_score)) for _, _, by in records])
    embedder = embedder or _default_embedder()
    vectors = np.asarray(embedder.embed_array([text for text, _, _ in records]), dtype=np.float32)
    task_names = [t for _, t, _ in records]
    order = np.random.default_rng(seed).permutation(len(records))
    from genroute.knowledge.examples import input_key

    groups = [input_key(text) for text, _, _ in records]
    # Copies of one input stay on one side (and in one cross-validation fold): a held-out copy is no test.
    held = held_out(order, test_share, groups) if test_share > 0 else np.zeros(len(records), dtype=bool)
    test, part = order[held[order]], order[~held[order]]
    if not len(part):
        raise ConfigError(f"nothing left to train on: the held-out share ({test_share:g}) took every one of the "
                          f"{len(set(groups))} distinct input(s) of the {len(records)} records (copies of an input are "
                          "one); give more inputs or a smaller test_share", field="outcomes")
    vocabulary = sorted({task_names[i] for i in part if task_names[i] is not None}) if use_task else []
    x = features(vectors, task_names, vocabulary)
    choice = None
    if rule is not None:
        def fit_fold(tr: NDArray[Any], te: NDArray[Any]) -> Any:
            rows_tr, rows_te = part[tr], part[te]
            fold = fit(x[rows_tr], scores[rows_tr], backends, method=method, cost=costs[rows_tr].mean(axis=0),
                       tasks=vocabulary, k=k, seed=seed, **options)
            predicted = fold.predict(x[rows_te])
            return lambda w: fold.choose(predicted, w)

        choice = cross_validate(scores[part], costs[part], rule, seed=seed, fit_fold=fit_fold,
                                groups=[groups[i] for i in part])
        cost_weight = choice.weight
    # The inputs it was fit on, as keys (hashes, no text): a benchmark of this model on them says so.
    model = fit(x[part], scores[part], backends, method=method, cost=costs[part].mean(axis=0), tasks=vocabulary,
                k=k, seed=seed, cost_weight=cost_weight,
                meta={"pass_score": pass_score, "embedder": getattr(embedder, "model", "unknown"),
                      "input_keys": sorted({groups[i] for i in part})}, **options)
    model.save(path)
    majority = int(np.bincount(labels[part], minlength=len(backends)).argmax())
    if not len(test):
        return TrainReport(model_path=str(path), method=method, backends=tuple(backends), n_train=len(part),
                           n_test=0, routing_accuracy=None, success_rate=None, mean_cost_usd=None,
                           oracle_success_rate=None, majority_routing_accuracy=None, single_backend={},
                           cost_weight=cost_weight, cost_weight_choice=choice)
    chosen = model.choose(model.predict(x[test]), cost_weight)

    def figures(pick: NDArray[Any]) -> tuple[float, float]:
        rows = np.arange(len(test))
        return (float(np.mean(scores[test][rows, pick] >= pass_score)), float(np.mean(costs[test][rows, pick])))

    success, cost = figures(chosen)
    oracle, _ = figures(labels[test])
    single = {b: {**dict(zip(("success_rate", "mean_cost_usd"), figures(np.full(len(test), i)), strict=True)),
                  "routing_accuracy": float(np.mean(labels[test] == i))} for i, b in enumerate(backends)}
    return TrainReport(model_path=str(path), method=method, backends=tuple(backends), n_train=len(part),
                       n_test=len(test), routing_accuracy=float(np.mean(chosen == labels[test])),
                       success_rate=success, mean_cost_usd=cost, oracle_success_rate=oracle,
                       majority_routing_accuracy=float(np.mean(labels[test] == majority)),
                       single_backend=single, cost_weight=cost_weight, cost_weight_choice=choice)


def _default_embedder() -> ArrayEmbedder:
    from genroute.knowledge.embedders import LocalEmbedder
    from genroute.policies.semantic import default_embedder

    embedder = default_embedder()
    assert isinstance(embedder, LocalEmbedder)  # a default store embeds with the offline MiniLM
    return embedder


class LearnedConfig(PolicyConfig):
    """Config of ``LearnedPolicy``."""

    kind: Literal["learned"] = "learned"
    model_path: PathText = Field(description="Model file written by `genroute.policies.learned.train`.")
    default: str = Field(min_length=1, description="Used when no backend is predicted good enough.")
    cost_weight: float | None = Field(
        default=None, ge=0.0,
        description="Quality traded for the dearest backend's cost: the pick maximises predicted quality - "
                    "cost_weight x cost / dearest cost (0: best predicted quality at any cost). "
                    "Default: the value stored in the model file when it was compiled.")
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0,
                                  description="Minimum predicted quality of the pick; below it, the default.")
    fallbacks: int = Field(default=0, ge=0, description="Next best backends (by the same utility) added as rungs.")
    cache_size: int = Field(default=1024, ge=0, description="Request embeddings remembered (repeated inputs).")


class LearnedPolicy(Policy):
    """Route to the backend with the best predicted quality net of its cost, for the request's embedding."""

    kind = "learned"
    Config = LearnedConfig
    config: LearnedConfig
    blocking = True  # embeds the request

    def __init__(self, config: LearnedConfig, *, embedder: ArrayEmbedder | None = None) -> None:
        super().__init__(config)
        self.model = RouterModel.load(config.model_path, field=f"{self.field}.model_path")
        self.embedder = embedder or _default_embedder()
        self.cost_weight = config.cost_weight if config.cost_weight is not None else \
            float(self.model.meta.get("cost_weight", 0.0))
        self._weight_text = f"{self.cost_weight:g}{cheapest_note(self.cost_weight)}"  # as each decision's reason has it
        #: Where request embedding spans go: the binding router's tracer (``None``: the embedder's own).
        self.tracer: trace.Tracer | None = None
        #: ``fit_key`` of the rows and settings a refresh fit this policy's model on (``None``: not fit by a refresh).
        self.fitted_on: str | None = None
        self._embed_request = RememberedEmbeddings(self._embed_text, config.cache_size)
        trained_on = self.model.meta.get("embedder")
        if trained_on not in (None, "unknown", getattr(self.embedder, "model", trained_on)):
            raise ConfigError(f"model was trained on {trained_on!r} embeddings, the embedder is "
                              f"{self.embedder.model!r}", field=f"{self.field}.model_path")

    def bind(self, resources: Resources) -> None:
        """Keep the router's tracer for the spans of request embeddings."""
        self.tracer = resources.tracer

    def _embed_text(self, text: str) -> NDArray[Any]:
        """A request text's embedding, one row; the request's backend retrieving with the same embedder reuses it."""
        from genroute.runtime.embeddings import shared_embedding

        vector = shared_embedding(self.embedder, text, lambda: self.embedder.embed_array(
            [text], **traced(self.embedder, self.tracer))[0])
        return np.asarray([vector], dtype=np.float32)

    def deciding_cost(self, request: GenerateRequest) -> float:
        """The request's embedding at the embedder's price (0 for a remembered one, or the offline embedder)."""
        return deciding_cost(self.embedder, self._embed_request, request.input)

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        predicted = self.model.predict(self.model.features(self._embed_request(request.input), [request.task]))
        ranked = [int(i) for i in self.model.ranking(predicted, self.cost_weight)[0]]
        best = self.model.backends[ranked[0]]
        quality = float(predicted[0, ranked[0]])
        why = f"learned: {self.model.method} predicts {best} (quality {quality:.2f}, cost weight {self._weight_text})"
        if quality < self.config.min_confidence:
            return Decision.single(self.name, self.config.default,
                                   f"{why}; predicted quality < {self.config.min_confidence:g} -> default "
                                   f"{self.config.default}")
        picks = [self.model.backends[i] for i in ranked[: 1 + self.config.fallbacks]]
        return Decision(policy=self.name, rungs=tuple(Rung(backend=b) for b in picks), reason=why)

    def compiled_inputs(self) -> frozenset[str]:
        return frozenset(k for k in self.model.meta.get("input_keys") or () if isinstance(k, str))

    def refreshed(self, update: PolicyUpdate) -> LearnedPolicy | None:
        """A policy retrained on the outcomes' captured inputs (written next to ``model_path`` as
        ``<name>.refreshed.npz``); ``None`` below ``min_n`` records or with fewer than two backends scored, and when
        what the fit would read (``fit_key``) is what this policy was last fit on: the fit is skipped."""
        records = {row["record_id"] for row in update.rows}
        if len(records) < max(2, update.min_n) or len({row["backend"] for row in update.rows}) < 2:
            return None
        key = self.fit_key(update.rows)
        if key == self.fitted_on:
            return None
        path = Path(self.config.model_path)
        path = path.with_name(path.name.removesuffix(".npz").removesuffix(".refreshed") + ".refreshed.npz")
        train(update.rows, path, embedder=self.embedder, method=self.model.method,
              k=int(self.model.meta.get("k", 7)), pass_score=float(self.model.meta.get("pass_score", 0.5)),
              test_share=0.0, use_task=bool(self.model.tasks), cost_weight=self.cost_weight, seed=self._seed(),
              **self._fit_options())
        new = LearnedPolicy.__new__(LearnedPolicy)
        new.field = self.field
        LearnedPolicy.__init__(new, self.config.model_copy(update={"model_path": str(path)}), embedder=self.embedder)
        new.tracer = self.tracer
        new.fitted_on = key
        return new

    def _seed(self) -> int:
        """The seed the model was trained with, as its file records it (a file written before it did: 0, the seed
        every refresh fit with then)."""
        return int(self.model.meta.get("seed") or 0)

    def _fit_options(self) -> dict[str, Any]:
        """The estimator's options the model was fit with (``l2``, ``hidden``, ``candidates``, ``rank``...), as its
        file records them: a refresh fits with them again."""
        options = self.model.meta.get("options")
        named = {n for n, p in inspect.signature(train).parameters.items() if p.kind is not p.VAR_KEYWORD}
        return {k: v for k, v in options.items() if k not in named} if isinstance(options, dict) else {}

    def fit_key(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """A digest of everything a refresh's fit reads: the training rows (input, backend, score, cost, record id
        and task of each, in order: the costs as ``training_rows`` priced them) and the settings the fit takes from
        this policy (method, k, pass score, task feature, cost weight, estimator options, seed, the embedder). No backend fact (the
        catalogue, ICL example counts, the pricing table) is read by the fit: a change there refits nothing."""
        fingerprint = getattr(self.embedder, "fingerprint", None)
        settings = (self.model.method, self.model.meta.get("k", 7), self.model.meta.get("pass_score", 0.5),
                    bool(self.model.tasks), self.cost_weight, sorted(self._fit_options().items()), self._seed(),
                    fingerprint() if callable(fingerprint) else getattr(self.embedder, "model", None))
        digest = hashlib.blake2b(repr(settings).encode(), digest_size=16)
        digest.update(repr([(row.get("input"), row.get("backend"), row.get("score"), row.get("cost_usd"),
                             row.get("record_id", row.get("id")), row.get("task")) for row in rows]).encode())
        return digest.hexdigest()

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(self.config.default, f"{self.field}.default")]
        named += [(b, f"{self.field}.model_path") for b in self.model.backends]
        check_backends(catalogue, named)
