"""``learned``: a router trained on benchmark outcomes — which backend answers this kind of input
correctly at the lowest cost — as kNN or multinomial logistic regression over request embeddings (numpy).

``train(outcomes, path)`` writes the model file and reports held-out routing accuracy; the policy loads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from genroute.errors import ConfigError
from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext, PolicyUpdate
from genroute.policies.static import check_backends
from genroute.types import Decision, GenerateRequest, Rung


class Outcome(BaseModel):
    """One benchmark record answered by one backend (the bench writes one per record and backend)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    input: str
    backend: str
    score: float = Field(description="Scorer output; >= pass_score counts as correct.")
    cost_usd: float = 0.0
    record_id: str | None = None
    task: str | None = None


class TrainReport(BaseModel):
    """What training produced and how the router does on records it never saw."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: str
    method: str
    backends: tuple[str, ...]
    n_train: int
    n_test: int
    #: Share of held-out records routed to their best backend (correct, then cheapest).
    routing_accuracy: float
    #: Share of held-out records the chosen backend answered correctly, and their mean cost.
    success_rate: float
    mean_cost_usd: float
    oracle_success_rate: float
    #: Baseline: routing accuracy of always choosing the training split's most common best backend.
    majority_routing_accuracy: float
    #: Baselines: success rate, mean cost and routing accuracy of sending every held-out record to one backend.
    single_backend: dict[str, dict[str, float]]


def _group(outcomes: Iterable[Outcome | Mapping[str, Any]]) -> list[tuple[str, dict[str, Outcome]]]:
    records: dict[str, tuple[str, dict[str, Outcome]]] = {}
    for raw in outcomes:
        o = raw if isinstance(raw, Outcome) else Outcome.model_validate(
            {**raw, "record_id": raw.get("record_id", raw.get("id"))})
        rid = o.record_id or f"{o.task}\x00{o.input}"
        records.setdefault(rid, (o.input, {}))[1][o.backend] = o
    return list(records.values())


def best_backend(by_backend: Mapping[str, Outcome], pass_score: float) -> str:
    """The label: a backend that answered correctly at the lowest cost (if none did, the cheapest)."""
    return min(by_backend, key=lambda b: (by_backend[b].score < pass_score, by_backend[b].cost_usd, b))


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fit_logreg(x: np.ndarray, y: np.ndarray, classes: int, *, epochs: int = 400, lr: float = 4.0,
                l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    w = np.zeros((x.shape[1], classes), dtype=np.float32)
    b = np.zeros(classes, dtype=np.float32)
    onehot = np.eye(classes, dtype=np.float32)[y]
    for _ in range(epochs):  # full-batch gradient descent: a few thousand rows x 384 dims is quick
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) / len(x)
        w -= lr * (x.T @ grad + l2 * w)
        b -= lr * grad.sum(axis=0)
    return w, b


class RouterModel:
    """A trained router: predicts a backend and a confidence for normalised embeddings."""

    def __init__(self, method: str, backends: list[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.method = method
        self.backends = backends
        self.arrays = arrays
        self.meta = meta

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Per-backend scores summing to 1 for each row of ``x``."""
        if self.method == "logreg":
            logits = x @ self.arrays["w"] + self.arrays["b"]
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            return p / p.sum(axis=1, keepdims=True)
        k = min(int(self.meta["k"]), len(self.arrays["y"]))
        # One row (a decision): einsum, not BLAS — see SemanticPolicy.nearest. Many rows (evaluation): BLAS.
        sims = np.einsum("id,jd->ij", x, self.arrays["x"]) if len(x) == 1 else x @ self.arrays["x"].T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out = np.zeros((len(x), len(self.backends)), dtype=np.float32)
        for row, idx in enumerate(top):
            # Similarity-weighted votes; clipped so that dissimilar neighbours do not vote negatively.
            np.add.at(out[row], self.arrays["y"][idx], np.maximum(sims[row, idx], 1e-6))
        return out / out.sum(axis=1, keepdims=True)

    def save(self, path: str | Path) -> Path:
        """Write the model file atomically (``.npz``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        meta = {**self.meta, "method": self.method, "backends": self.backends}
        with tmp.open("wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **self.arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, field: str = "model_path") -> RouterModel:
        """Read a model file written by ``save``."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in data.files if k != "meta"}
        except FileNotFoundError:
            raise ConfigError(f"model file {str(path)!r} does not exist", field=field) from None
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read model file {str(path)!r}: {exc}", field=field) from None
        return cls(meta.pop("method"), meta.pop("backends"), arrays, meta)


def train(outcomes: Iterable[Outcome | Mapping[str, Any]], path: str | Path, *, embedder: Any = None,
          method: Literal["knn", "logreg"] = "knn", k: int = 7, pass_score: float = 0.5,
          test_share: float = 0.2, seed: int = 0) -> TrainReport:
    """Train on a seeded split of the records, write the model file, report held-out figures."""
    records = _group(outcomes)
    if len(records) < 2:
        raise ConfigError("need at least two benchmark records to train", field="outcomes")
    backends = sorted({b for _, by in records for b in by})
    labels = np.array([backends.index(best_backend(by, pass_score)) for _, by in records])
    embedder = embedder or _default_embedder()
    x = _normalise(np.asarray(embedder.embed_array([text for text, _ in records]), dtype=np.float32))
    order = np.random.default_rng(seed).permutation(len(records))
    n_test = max(1, int(round(len(records) * test_share)))
    test, fit = order[:n_test], order[n_test:]
    meta = {"k": k, "pass_score": pass_score, "embedder": getattr(embedder, "model", "unknown"),
            "n_train": int(len(fit))}
    if method == "logreg":
        w, b = _fit_logreg(x[fit], labels[fit], len(backends))
        model = RouterModel("logreg", backends, {"w": w, "b": b}, meta)
    else:
        model = RouterModel("knn", backends, {"x": x[fit].astype(np.float32), "y": labels[fit]}, meta)
    model.save(path)
    chosen = model.scores(x[test]).argmax(axis=1)
    held = [records[i][1] for i in test]

    def figures(pick: list[str | None]) -> tuple[float, float]:
        ok = [by[b].score >= pass_score if b in by else False for b, by in zip(pick, held)]
        cost = [by[b].cost_usd if b in by else 0.0 for b, by in zip(pick, held)]
        return float(np.mean(ok)), float(np.mean(cost))

    success, cost = figures([backends[c] for c in chosen])
    oracle, _ = figures([best_backend(by, pass_score) for by in held])
    single = {b: {**dict(zip(("success_rate", "mean_cost_usd"), figures([b] * len(held)))),
                  "routing_accuracy": float(np.mean(labels[test] == i))} for i, b in enumerate(backends)}
    majority = int(np.bincount(labels[fit], minlength=len(backends)).argmax()) if len(fit) else 0
    return TrainReport(model_path=str(path), method=method, backends=tuple(backends), n_train=len(fit),
                       n_test=len(test), routing_accuracy=float(np.mean(chosen == labels[test])),
                       success_rate=success, mean_cost_usd=cost, oracle_success_rate=oracle,
                       majority_routing_accuracy=float(np.mean(labels[test] == majority)),
                       single_backend=single)


def _default_embedder() -> Any:
    from genroute.policies.semantic import default_embedder

    return default_embedder()


class LearnedConfig(PolicyConfig):
    """Config of ``LearnedPolicy``."""

    kind: Literal["learned"] = "learned"
    model_path: str = Field(description="Model file written by `genroute.policies.learned.train`.")
    default: str = Field(min_length=1, description="Used when the model is not confident enough.")
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    fallbacks: int = Field(default=0, ge=0, description="Next most likely backends added as rungs.")
    cache_size: int = Field(default=1024, ge=0, description="Request embeddings remembered (repeated inputs).")


class LearnedPolicy(Policy):
    """Route by the trained model's prediction for the request's embedding."""

    kind = "learned"
    Config = LearnedConfig
    config: LearnedConfig
    blocking = True  # embeds the request

    def __init__(self, config: LearnedConfig, *, embedder: Any = None) -> None:
        super().__init__(config)
        self.model = RouterModel.load(config.model_path, field=f"{self.field}.model_path")
        self.embedder = embedder or _default_embedder()
        self._embed_request = lru_cache(maxsize=config.cache_size)(
            lambda text: _normalise(np.asarray(self.embedder.embed_array([text]), dtype=np.float32)))
        trained_on = self.model.meta.get("embedder")
        if trained_on not in (None, "unknown", getattr(self.embedder, "model", trained_on)):
            raise ConfigError(f"model was trained on {trained_on!r} embeddings, the embedder is "
                              f"{self.embedder.model!r}", field=f"{self.field}.model_path")

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        scores = self.model.scores(self._embed_request(request.input))[0]
        ranked = np.argsort(-scores)
        best = self.model.backends[int(ranked[0])]
        confidence = float(scores[ranked[0]])
        if confidence < self.config.min_confidence:
            return Decision.single(self.name, self.config.default,
                                   f"learned: {self.model.method} predicts {best} with confidence "
                                   f"{confidence:.2f} < {self.config.min_confidence:g} -> default "
                                   f"{self.config.default}")
        picks = [self.model.backends[int(i)] for i in ranked[: 1 + self.config.fallbacks]]
        return Decision(policy=self.name, rungs=tuple(Rung(backend=b) for b in picks),
                        reason=f"learned: {self.model.method} predicts {best} (confidence {confidence:.2f})")

    def refreshed(self, update: PolicyUpdate) -> LearnedPolicy | None:
        """A policy retrained on the outcomes' captured inputs (written next to ``model_path`` as
        ``<name>.refreshed.npz``); ``None`` below ``min_n`` records or with fewer than two backends scored."""
        records = {row["record_id"] for row in update.rows}
        if len(records) < max(2, update.min_n) or len({row["backend"] for row in update.rows}) < 2:
            return None
        path = Path(self.config.model_path)
        path = path.with_name(path.name.removesuffix(".npz").removesuffix(".refreshed") + ".refreshed.npz")
        train(update.rows, path, embedder=self.embedder, method=self.model.method,  # type: ignore[arg-type]
              k=int(self.model.meta.get("k", 7)), pass_score=float(self.model.meta.get("pass_score", 0.5)),
              test_share=0.0)
        new = LearnedPolicy.__new__(LearnedPolicy)
        new.field = self.field
        new.__init__(self.config.model_copy(update={"model_path": str(path)}), embedder=self.embedder)
        return new

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(self.config.default, f"{self.field}.default")]
        named += [(b, f"{self.field}.model_path") for b in self.model.backends]
        check_backends(catalogue, named)
