"""The estimators behind ``learned``: predict each backend's quality on a request from its features (numpy).

Features are the request's unit-length embedding, optionally followed by a one-hot of its task. Targets are
the benchmark scores (0..1) of every backend on every training record. Three estimators:

- ``knn``: similarity-weighted mean score of the ``k`` nearest training records, per backend;
- ``logreg``: one logistic regression per backend (soft targets, L2, Adam, full batch);
- ``mlp``: one hidden ReLU layer shared by every backend, a sigmoid output per backend (Adam, mini-batches);
- ``blend``: the mean of the kNN and the logistic regression predictions;
- ``pairwise``: a cascade-style choice between two candidates of the training records' cost–quality front —
  the best one and the ``rank``-th cheaper one below it (1: the next): a logistic regression predicts the cheap
  one's quality, two more the chance that the two disagree and that the strong one is the one right when they
  do; the strong one's predicted quality is the cheap one's plus that expected gain. Noisy 0/1 outcomes over
  many candidates make an argmax over all of them chase noise; one predicted gain between two is steadier.

A decision maximises ``predicted quality - cost_weight x cost / dearest backend's cost`` (``choose``): the
cost term is applied when deciding, so one trained model serves every point of the cost–quality curve.
``candidates="front"`` (any method) limits the choice to the training records' cost–quality front (no
candidate both cheaper and better on average); ``pairwise`` chooses between its two only.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from genroute.cache import atomic_write_bytes
from genroute.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

Method = Literal["knn", "logreg", "mlp", "blend", "pairwise"]
METHODS: tuple[str, ...] = ("knn", "logreg", "mlp", "blend", "pairwise")


#: Query-to-training-record similarities a kNN prediction holds at once: 16 bytes each at the peak (the float32
#: similarities, their negated copy and argpartition's int64 index of every one), 128 MB. At 2 ** 27 a block peaked
#: at 2 GB, and one fold of a 20,000-record compile (2,800 x 11,200 similarities) lifted the process by 560 MB.
KNN_BLOCK = 2 ** 23


def normalise(x: NDArray[Any]) -> NDArray[Any]:
    """Rows scaled to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def features(embeddings: NDArray[Any], tasks: Sequence[str | None] | None, vocabulary: Sequence[str],
             task_weight: float = 1.0) -> NDArray[Any]:
    """Unit embeddings, followed by a one-hot of each row's task over ``vocabulary`` (if it is not empty).

    An unseen task (or none) gets no task feature: the text alone decides.
    """
    x = normalise(np.asarray(embeddings, dtype=np.float32))
    if not vocabulary:
        return x
    onehot = np.zeros((len(x), len(vocabulary)), dtype=np.float32)
    index = {t: i for i, t in enumerate(vocabulary)}
    for row, task in enumerate(tasks or [None] * len(x)):
        if task in index:
            onehot[row, index[task]] = task_weight
    return np.concatenate([x, onehot], axis=1)


def _sigmoid(z: NDArray[Any]) -> NDArray[Any]:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


class _Adam:
    """Adam over a list of arrays, updated in place."""

    def __init__(self, params: list[NDArray[Any]], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: Sequence[NDArray[Any]]) -> None:
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= self.lr * (m / (1 - 0.9 ** self.t)) / (np.sqrt(v / (1 - 0.999 ** self.t)) + 1e-8)


def _fit_logreg(x: NDArray[Any], s: NDArray[Any], *, epochs: int, lr: float, l2: float) -> dict[str, NDArray[Any]]:
    w = np.zeros((x.shape[1], s.shape[1]), dtype=np.float32)
    b = np.log(np.clip(s.mean(axis=0), 1e-3, 1 - 1e-3) / np.clip(1 - s.mean(axis=0), 1e-3, 1)).astype(np.float32)
    adam = _Adam([w, b], lr)
    for _ in range(epochs):
        grad = (_sigmoid(x @ w + b) - s) / len(x)  # cross-entropy with soft targets
        adam.step([x.T @ grad + l2 * w, grad.sum(axis=0)])
    return {"w": w, "b": b}


def _fit_mlp(x: NDArray[Any], s: NDArray[Any], *, hidden: int, epochs: int, lr: float, l2: float, seed: int
             ) -> dict[str, NDArray[Any]]:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((x.shape[1], hidden)) * np.sqrt(2.0 / x.shape[1])).astype(np.float32)
    b1 = np.zeros(hidden, dtype=np.float32)
    w2 = (rng.standard_normal((hidden, s.shape[1])) * np.sqrt(1.0 / hidden)).astype(np.float32)
    b2 = np.zeros(s.shape[1], dtype=np.float32)
    adam = _Adam([w1, b1, w2, b2], lr)
    batch = min(128, len(x))
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            h = np.maximum(x[idx] @ w1 + b1, 0.0)
            grad = (_sigmoid(h @ w2 + b2) - s[idx]) / len(idx)
            dh = (grad @ w2.T) * (h > 0)
            adam.step([x[idx].T @ dh + l2 * w1, dh.sum(axis=0), h.T @ grad + l2 * w2, grad.sum(axis=0)])
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


class RouterModel:
    """A trained router: predicted quality per backend for feature rows, and the cost-aware choice."""

    def __init__(self, method: str, backends: list[str], arrays: dict[str, NDArray[Any]], meta: dict[str, Any]):
        if method not in METHODS:
            raise ConfigError(f"unknown learned method {method!r} (known: {', '.join(METHODS)})", field="method")
        self.method = method
        self.backends = backends
        self.arrays = arrays
        self.meta = meta
        quality = meta.get("quality")
        #: Each backend's place when tied: from the best mean training score down (a file without them: the first).
        self._tie_place = np.arange(len(backends)) if quality is None else np.argsort(
            sorted(range(len(backends)), key=lambda j: (-quality[j], j)))

    @property
    def tasks(self) -> list[str]:
        """Task names of the one-hot task features (empty: the model sees only the text)."""
        return list(self.meta.get("tasks") or [])

    @property
    def relative_cost(self) -> NDArray[Any]:
        """Each backend's mean training cost divided by the dearest one's (zeros when all are free)."""
        cost = np.asarray(self.meta.get("cost") or [0.0] * len(self.backends), dtype=np.float64)
        return cost / cost.max() if cost.max() > 0 else np.zeros_like(cost)

    def features(self, embeddings: NDArray[Any], tasks: Sequence[str | None] | None = None) -> NDArray[Any]:
        """Feature rows for this model: ``features(embeddings, tasks, self.tasks)``."""
        return features(embeddings, tasks, self.tasks, float(self.meta.get("task_weight", 1.0)))

    def predict(self, x: NDArray[Any]) -> NDArray[Any]:
        """Predicted quality (0..1) of every backend for each feature row: shape ``(len(x), backends)``."""
        a = self.arrays
        if self.method == "logreg":
            return _sigmoid(x @ a["w"] + a["b"])
        if self.method == "mlp":
            return _sigmoid(np.maximum(x @ a["w1"] + a["b1"], 0.0) @ a["w2"] + a["b2"])
        if self.method == "blend":
            return (_sigmoid(x @ a["w"] + a["b"]) + self._knn(x)) / 2
        if self.method == "pairwise":
            cheap, strong = (int(i) for i in self.meta["pair"])
            out = np.zeros((len(x), len(self.backends)))
            p = _sigmoid(x @ a["w"] + a["b"])  # columns: cheap right, they disagree, strong right given that
            out[:, cheap] = p[:, 0]
            out[:, strong] = np.clip(p[:, 0] + p[:, 1] * (2 * p[:, 2] - 1), 0.0, 1.0)
            return out
        return self._knn(x)

    def _knn(self, x: NDArray[Any]) -> NDArray[Any]:
        a = self.arrays
        k = min(int(self.meta["k"]), len(a["x"]))
        # Rows a block at a time: the similarities of 30k queries to 70k training records at once were 8 GB (twice,
        # negated for argpartition, and 16 GB of indices); a block holds about KNN_BLOCK of them, and each row's
        # result is its own.
        step = max(1, KNN_BLOCK // max(1, len(a["x"])))
        if len(x) > step:
            return np.concatenate([self._knn(x[i:i + step]) for i in range(0, len(x), step)])
        # One row (a decision): einsum, not BLAS — see SemanticPolicy.nearest. Many rows (evaluation): BLAS.
        sims = np.einsum("id,jd->ij", x, a["x"]) if len(x) == 1 else x @ a["x"].T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        # Similarity-weighted mean; clipped so that dissimilar neighbours do not vote negatively.
        weights = np.maximum(np.take_along_axis(sims, top, axis=1), 1e-6)
        return np.einsum("ik,ikc->ic", weights, a["s"][top]) / weights.sum(axis=1, keepdims=True)

    def utility(self, predicted: NDArray[Any], cost_weight: float) -> NDArray[Any]:
        """``predicted - cost_weight x relative cost``: what a decision maximises (``-inf`` for a candidate
        the model does not choose)."""
        util = predicted - cost_weight * self.relative_cost
        allowed = self.meta.get("allowed")
        if allowed is not None:
            util = np.where(np.isin(np.arange(len(self.backends)), allowed), util, -np.inf)
        return util

    def choose(self, predicted: NDArray[Any], cost_weight: float) -> NDArray[Any]:
        """The chosen backend index per row (ties: the cheaper backend, then the better on the training records)."""
        return self.ranking(predicted, cost_weight)[:, 0]

    def ranking(self, predicted: NDArray[Any], cost_weight: float) -> NDArray[Any]:
        """Every backend index per row, from the chosen one down by utility, ties as ``choose`` breaks them (a
        decision's fallback rungs follow it)."""
        # Ties towards lower cost: a tiny cost term below any real difference in predicted quality.
        util = self.utility(predicted, cost_weight) - 1e-9 * self.relative_cost
        # Equal in both (a kNN whose neighbours two backends answered alike; no costs given): the better on the
        # training records, not the first name in the file — renaming a backend must not move a decision.
        return np.lexsort((np.broadcast_to(self._tie_place, util.shape), -util), axis=-1)

    def save(self, path: str | Path) -> Path:
        """Write the model file atomically (``.npz``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The weight in words beside it: a reader of "cost_weight": 1000000.0 could not tell it means "the cheapest".
        meta = {**self.meta, "method": self.method, "backends": self.backends,
                "cost_weight_means": weight_meaning(float(self.meta.get("cost_weight", 0.0)))}
        buffer = io.BytesIO()
        # The stubs read **arrays as possibly naming allow_pickle (a bool); array names never do.
        np.savez(buffer, meta=np.array(json.dumps(meta)), **self.arrays)  # type: ignore[arg-type]
        # Past a planted link; a rerun keeps its mode. Owner-only when new: a kNN model holds every training input's
        # embedding, and every model the input keys (hashes) of what it was trained on.
        atomic_write_bytes(path, buffer.getvalue(), private=True, same_mode=True)
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
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read model file {str(path)!r}: {exc}", field=field) from None
        if isinstance(meta, dict) and meta.get("method") in ("knn", "blend") and "s" not in arrays:
            raise ConfigError(f"model file {str(path)!r} was written by an older genroute (kNN labels, not "
                              "scores); train it again", field=field)
        problem = model_problem(meta, arrays)
        if problem is not None:  # found now, not as a KeyError or a shape error at the first request
            raise ConfigError(f"model file {str(path)!r} is malformed: {problem}", field=field)
        meta = dict(meta)
        return cls(meta.pop("method"), meta.pop("backends"), arrays, meta)


#: The arrays each method predicts with, and their dimensions (``d``: feature width, ``B``: backends, ``n``: training
#: records, ``h``: hidden units; ``3``: the pairwise heads).
_SHAPES: dict[str, dict[str, tuple[str, ...]]] = {
    "knn": {"x": ("n", "d"), "s": ("n", "B")},
    "logreg": {"w": ("d", "B"), "b": ("B",)},
    "blend": {"w": ("d", "B"), "b": ("B",), "x": ("n", "d"), "s": ("n", "B")},
    "mlp": {"w1": ("d", "h"), "b1": ("h",), "w2": ("h", "B"), "b2": ("B",)},
    "pairwise": {"w": ("d", "3"), "b": ("3",)},
}


def model_problem(meta: Any, arrays: dict[str, NDArray[Any]]) -> str | None:
    """What is wrong with a model file's ``meta`` and ``arrays`` for predicting, or ``None``."""
    if not isinstance(meta, dict):
        return f"meta is {type(meta).__name__}, not an object"
    method, backends = meta.get("method"), meta.get("backends")
    if method not in METHODS:
        return f"unknown method {method!r} (known: {', '.join(METHODS)})"
    if not isinstance(backends, list) or not backends or not all(isinstance(b, str) and b for b in backends):
        return f"backends must be a list of backend names, got {backends!r}"
    if method in ("knn", "blend") and (type(meta.get("k")) is not int or meta["k"] < 1):
        return f"{method} needs k, a whole number >= 1, got {meta.get('k')!r}"
    if method == "pairwise" and not _indices(meta.get("pair"), len(backends), size=2):
        return f"pairwise needs pair, two backend indices, got {meta.get('pair')!r}"
    if meta.get("allowed") is not None and not _indices(meta["allowed"], len(backends)):
        return f"allowed must be backend indices, got {meta['allowed']!r}"
    cost = meta.get("cost")
    if cost is not None and (not isinstance(cost, list) or len(cost) != len(backends)
                             or not all(isinstance(c, int | float) and 0 <= c < float("inf") for c in cost)):
        return f"cost must be {len(backends)} finite costs >= 0, one per backend, got {cost!r}"
    quality = meta.get("quality")
    if quality is not None and (not isinstance(quality, list) or len(quality) != len(backends)
                                or not all(isinstance(q, int | float) and 0 <= q <= 1 for q in quality)):
        return f"quality must be {len(backends)} mean training scores in [0, 1], one per backend, got {quality!r}"
    if not isinstance(meta.get("tasks") or [], list):
        return f"tasks must be a list of task names, got {meta['tasks']!r}"
    if meta.get("seed") is not None and (type(meta["seed"]) is not int or meta["seed"] < 0):  # a file before: none
        return f"seed must be a whole number >= 0 (the training's), got {meta['seed']!r}"
    sizes: dict[str, int] = {"B": len(backends), "3": 3}
    for name, dims in _SHAPES[method].items():
        array = arrays.get(name)
        if array is None:
            return f"{method} needs the array {name!r}"
        if array.ndim != len(dims):
            return f"array {name!r} has {array.ndim} dimension(s), expected {len(dims)}"
        for dim, size in zip(dims, array.shape, strict=True):
            if sizes.setdefault(dim, size) != size:
                return f"array {name!r} has shape {array.shape}, which does not fit the other arrays and backends"
    return None


def _indices(value: Any, n: int, *, size: int | None = None) -> bool:
    """Whether ``value`` is a list of indices into ``n`` backends (of length ``size``, if given)."""
    return (isinstance(value, list) and (size is None or len(value) == size)
            and all(type(i) is int and 0 <= i < n for i in value))


#: The largest cost weight compiling sweeps: cost outweighs any difference in predicted quality (at most 1), so the
#: ranking always puts the cheapest backend first. Cross-validation picks it when no dearer setting's gain is resolved.
CHEAPEST_WEIGHT = 1e6


def cheapest_note(weight: float) -> str:
    """What a cost weight means, after its number, when the number alone does not say it: `` (always the cheapest
    backend)`` for ``CHEAPEST_WEIGHT`` and above, else nothing."""
    return " (always the cheapest backend)" if weight >= CHEAPEST_WEIGHT else ""


def weight_meaning(weight: float) -> str:
    """What a cost weight does to the ranking, in words: written beside it in a model file."""
    if weight >= CHEAPEST_WEIGHT:
        return "always the cheapest backend: cost outweighs any difference in predicted quality"
    if weight == 0:
        return "the best predicted quality, at any cost"
    return f"the best predicted quality - {weight:g} x cost / the dearest backend's cost"


def cost_quality_front(quality: NDArray[Any], cost: NDArray[Any]) -> list[int]:
    """Indices of the candidates no other one beats on both mean quality and mean cost."""
    n = len(quality)
    return [i for i in range(n) if not any(cost[j] <= cost[i] and quality[j] >= quality[i]
                                           and (cost[j] < cost[i] or quality[j] > quality[i]) for j in range(n))]


def fit(x: NDArray[Any], scores: NDArray[Any], backends: Sequence[str], *, method: str = "knn",
        cost: NDArray[np.floating[Any]] | Sequence[float] | None = None, tasks: Sequence[str] = (), k: int = 7,
        seed: int = 0, cost_weight: float = 0.1, meta: dict[str, Any] | None = None, **options: Any) -> RouterModel:
    """Fit ``method`` on feature rows ``x`` (from ``RouterModel.features``) and their backends' scores; ``cost`` is
    each backend's mean cost (an array, as the callers' ``costs.mean(axis=0)``, or a sequence)."""
    s = np.clip(np.asarray(scores, dtype=np.float32), 0.0, 1.0)
    x = np.asarray(x, dtype=np.float32)
    if len(x) != len(s) or s.shape[1] != len(backends) or len(x) == 0:
        raise ConfigError("need one score per backend for every training record", field="outcomes")
    info = {"k": k, "cost": [float(c) for c in (cost if cost is not None else [0.0] * len(backends))],
            "tasks": list(tasks), "task_weight": 1.0, "cost_weight": cost_weight, "n_train": int(len(x)), "seed": int(seed),
            "options": options, "quality": [float(q) for q in s.mean(axis=0)], **(meta or {})}
    mean_cost = np.asarray(info["cost"], dtype=np.float64)
    if options.get("candidates") == "front" or method == "pairwise":
        info["allowed"] = cost_quality_front(s.mean(axis=0), mean_cost)
    if method == "pairwise":
        front = info["allowed"]
        strong = max(front, key=lambda j: (s[:, j].mean(), -mean_cost[j]))
        below = sorted((j for j in front if mean_cost[j] < mean_cost[strong]), key=lambda j: -s[:, j].mean())
        if not below:
            raise ConfigError("pairwise needs a cheaper candidate on the cost-quality front", field="method")
        cheap = below[min(int(options.get("rank", 1)), len(below)) - 1]
        info["pair"] = info["allowed"] = [int(cheap), int(strong)]
        gap = s[:, strong] - s[:, cheap]
        l2, epochs = options.get("l2", 1e-2), options.get("epochs", 300)
        heads = [_fit_logreg(x, s[:, [cheap]], epochs=epochs, lr=0.05, l2=l2),
                 _fit_logreg(x, (gap != 0).astype(np.float32)[:, None], epochs=epochs, lr=0.05, l2=l2)]
        split = gap != 0
        heads.append(_fit_logreg(x[split], (gap[split] > 0).astype(np.float32)[:, None], epochs=epochs, lr=0.05,
                                 l2=l2) if split.any() else {"w": np.zeros((x.shape[1], 1), np.float32),
                                                             "b": np.zeros(1, np.float32)})
        arrays = {"w": np.concatenate([h["w"] for h in heads], axis=1),
                  "b": np.concatenate([h["b"] for h in heads])}
    elif method in ("logreg", "blend"):
        arrays = _fit_logreg(x, s, epochs=options.get("epochs", 300), lr=options.get("lr", 0.05),
                             l2=options.get("l2", 1e-4))
        if method == "blend":
            arrays |= {"x": x, "s": s}
    elif method == "mlp":
        arrays = _fit_mlp(x, s, hidden=options.get("hidden", 128), epochs=options.get("epochs", 40),
                          lr=options.get("lr", 3e-3), l2=options.get("l2", 1e-4), seed=seed)
    elif method == "knn":
        arrays = {"x": x, "s": s}
    else:
        raise ConfigError(f"unknown learned method {method!r} (known: {', '.join(METHODS)})", field="method")
    return RouterModel(method, list(backends), arrays, info)
