"""Decision latency of every routing policy (p50/p95), with the semantic policy at 10,000 utterances.

    python benchmarks/policies.py [--n 2000] [--utterances 10000] [--quality] [--shared-data DIR] [--out DIR]

Embedding the request dominates the semantic and learned policies, so it is measured on its own and the
nearest-route search is measured without it (numpy matrix vs a Chroma HNSW query). The 10k utterances are
the inputs of the public sets in the shared data directory (``--shared-data``, default ../shared/data
beside the repository; each set routed to one backend), padded with prefixed
variants to the requested count; the semantic policy keeps them in a knowledge store (embedded Chroma)
under ``--out`` (default benchmarks/out/): the first run embeds them, later runs (and the timed restart) load them.

The ICL backend reports labeled examples per task (``example_counts``), as the real one does: enough for
``bank``, too few for ``other``, so the ladder's ICL rung and its shortfall reason are both exercised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute.knowledge.store import KnowledgeStore, StoreConfig
from genroute.policies import build_policy
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.policies.learned import train
from genroute.policies.semantic import SemanticConfig, SemanticPolicy, default_embedder
from genroute.policies.stats import BackendStats, BenchStats
from genroute.runtime.resources import Resources
from genroute.types import GenerateRequest

import shared_data

DATA = shared_data.default_dir()  # main() sets it from --shared-data
OUT = Path(__file__).parent / "out"
#: Which backend each public set's utterances route to.
SETS = {"banking77.jsonl": "icl", "nlupp.jsonl": "tuned", "dynasent_r2.jsonl": "prompt",
        "xquad_en.jsonl": "rag", "bfcl_v4.jsonl": "tools"}


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """p50 and p95 in milliseconds over ``n`` calls (after a short warm-up)."""
    for _ in range(min(20, n)):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def timed_interleaved(fns: dict[str, Callable[[], Any]], n: int) -> list[tuple[str, float, float]]:
    """Like ``timed`` for several functions run in turn, so that a noisy machine hits them alike."""
    samples: dict[str, list[float]] = {label: [] for label in fns}
    for i in range(n + 10):
        for label, fn in fns.items():
            start = time.perf_counter_ns()
            fn()
            if i >= 10:
                samples[label].append((time.perf_counter_ns() - start) / 1e6)
    rows = []
    for label, values in samples.items():
        values.sort()
        rows.append((label, statistics.median(values), values[int(0.95 * (len(values) - 1))]))
    return rows


def utterances(count: int) -> list[tuple[str, str]]:
    """``(backend, text)`` pairs: every distinct input of the public sets, padded to ``count`` (0: no padding)."""
    pairs: dict[str, str] = {}  # text -> backend; distinct texts only
    for name, backend in SETS.items():
        for line in (DATA / name).read_text().splitlines():
            text = json.loads(line)["input"]
            pairs.setdefault(text if isinstance(text, str) else json.dumps(text), backend)
    base = list(pairs.items())
    prefixes = ["please help: ", "question: ", "hi, ", "quick one: "]
    i = 0
    while len(pairs) < count:
        text, backend = base[i % len(base)]
        round_ = i // len(base)  # prefixes repeat once they run out: a small data set still reaches ``count``
        pairs.setdefault(prefixes[round_ % len(prefixes)] * (round_ // len(prefixes) + 1) + text, backend)
        i += 1
    items = list(pairs.items())
    return [(b, t) for t, b in (items if count <= 0 else items[:count])]


def main() -> None:
    global DATA  # noqa: PLW0603 - the scripts' functions read the data directory chosen here
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="decisions per cheap policy")
    parser.add_argument("--n-embed", type=int, default=300, help="decisions per embedding policy")
    parser.add_argument("--utterances", type=int, default=10000)
    parser.add_argument("--quality", action="store_true", help="also measure held-out routing accuracy")
    parser.add_argument("--out", type=Path, default=OUT, help="where the semantic routes' store is kept")
    shared_data.add_option(parser)
    args = parser.parse_args()
    DATA = shared_data.resolve(args.shared_data, *SETS)
    rng = random.Random(0)

    catalogue = {
        "prompt": BackendInfo("prompt", "prompt_template"),
        # As IclBackend.facts() reports them: a total and the count per task (the ladder reads the latter).
        "icl": BackendInfo("icl", "icl", frozenset({"examples"}),
                           facts={"example_count": 503, "example_counts": {"bank": 500, "other": 3}}),
        "rag": BackendInfo("rag", "rag", frozenset({"knowledge"}), tasks=("qa",), facts={"collection": "docs"}),
        "tools": BackendInfo("tools", "function_calling", frozenset({"tools"})),
        "tuned": BackendInfo("tuned", "tuned", frozenset({"tuned"}), tasks=("frames",)),
    }
    ctx = PolicyContext(catalogue=catalogue)
    tasks = [None, "bank", "qa", "frames", "other"]
    texts = [t for _, t in utterances(3000)][::7]
    requests = [GenerateRequest(input=rng.choice(texts), task=rng.choice(tasks), key=f"user-{rng.randrange(10**6)}",
                                metadata={"needs_tools": rng.random() < 0.2, "tier": rng.choice(["gold", "free"])})
                for _ in range(512)]
    stats = BenchStats(tasks={t: {b: BackendStats(n=100, quality=rng.uniform(0.4, 0.95), latency_p50_s=0.3,
                                                  latency_p95_s=rng.uniform(0.5, 3.0),
                                                  cost_per_request_usd=rng.uniform(1e-5, 1e-3))
                                  for b in catalogue} for t in ("bank", "qa", "frames", "*")})
    tmp = Path(tempfile.mkdtemp())
    stats_path = str(stats.save(tmp / "stats.json"))

    configs: dict[str, dict[str, Any]] = {
        "static": {"kind": "static", "backend": "prompt"},
        "rules (6 rules)": {"kind": "rules", "default": "prompt", "rules": [
            {"when": {"needs_tools": True}, "backend": "tools"},
            {"when": {"needs_knowledge": True}, "backend": "rag"},
            {"when": {"metadata": {"tier": "vip"}}, "backend": "tuned"},
            {"when": {"task": ["frames"], "metadata_in": {"tier": ["gold"]}}, "backend": "tuned"},
            {"when": {"input_regex": r"(?i)\b(refund|charge)\b"}, "backend": "icl"},
            {"when": {"min_chars": 400}, "backend": "rag"}]},
        "ladder": {"kind": "ladder"},
        "ladder (cascade)": {"kind": "ladder", "cascade": True},
        "cascade": {"kind": "cascade", "rungs": [{"backend": "prompt", "validators": ["json"]}, {"backend": "icl"}],
                    "shadow": ["tuned"], "shadow_rate": 0.1},
        "split (95/5 canary)": {"kind": "split", "arms": [{"backend": "prompt", "weight": 95},
                                                          {"backend": "icl", "weight": 5}]},
        "cost_aware": {"kind": "cost_aware", "stats_path": stats_path, "min_quality": 0.6,
                       "max_p95_latency_s": 2.5, "default": "prompt"},
        "budget(ladder)": {"kind": "budget", "inner": {"kind": "ladder"}, "budget_usd": 1e9,
                           "max_cost_per_request": 0.001, "on_exhausted": "downgrade", "downgrade_to": "prompt"},
    }
    rows: list[tuple[str, float, float]] = []
    for label, raw in configs.items():
        policy = build_policy(raw)
        it = iter(range(10**9))
        rows.append((label, *timed(lambda p=policy, it=it: p.decide(requests[next(it) % 512], ctx), args.n)))
    ladder = build_policy(configs["ladder"])
    ladder_mix = Counter(ladder.decide(r, ctx).rungs[0].backend for r in requests)
    budget = build_policy(configs["budget(ladder)"])
    decision = budget.decide(requests[0], ctx)
    # The budget's admission gate on the in-process store (benchmarks/admission.py compares Redis).
    from opentelemetry import trace

    from genroute.admission import Attempt, Outcome
    from genroute.state.memory import MemoryStateStore

    (gate,) = budget.gates(MemoryStateStore())
    attempt = Attempt(requests[0], decision, "icl", None, trace.INVALID_SPAN)

    async def admit_once() -> None:
        await gate.exit(attempt, await gate.enter(attempt), Outcome(cost_usd=0.0005))

    loop = asyncio.new_event_loop()
    rows.append(("budget gate enter+exit (memory, incl. run_until_complete)",
                 *timed(lambda: loop.run_until_complete(admit_once()), args.n)))
    loop.close()

    embedder = default_embedder()  # the one the policies share
    queries = [f"{t} (asked again)" for t in texts]  # unseen strings
    q_iter = iter(range(10**9))

    pairs = utterances(args.utterances)
    routes_config = SemanticConfig(kind="semantic", routes=_routes(pairs), threshold=0.3, default="prompt",
                                   collection=f"bench-semantic-routes-{args.utterances}")
    starts = []
    for _ in range(2):  # the first start embeds what the store lacks (everything on a first run); a restart nothing
        store = KnowledgeStore(StoreConfig(path=str(args.out / "semantic-routes")))  # a new store: as a new process
        assert store.embedder is embedder
        semantic = SemanticPolicy(routes_config)
        start = time.perf_counter()
        semantic.bind(Resources({}, knowledge=store))
        store.routes.sync()  # what the router does once its policy is bound
        starts.append((time.perf_counter() - start, semantic.last_sync))
    vectors = embedder.embed_array(queries[:200])
    v_iter = iter(range(10**9))
    rows.append((f"semantic search only, numpy ({len(semantic.backends)} utt.)",
                 *timed(lambda: semantic.nearest(vectors[next(v_iter) % 200]), args.n)))
    # The same collection through Chroma's HNSW index, for comparison (the policy does not search this way).
    collection = store.collection_sync(semantic.collection_name, kind="routes")
    rows.append((f"semantic search only, chroma HNSW ({collection.count()} utt.)",
                 *timed(lambda: collection.query(query_embeddings=[vectors[next(v_iter) % 200]], n_results=1),
                        args.n_embed)))

    rows.append(("semantic decide, repeated input (embedding cached)",
                 *timed(lambda: semantic.decide(GenerateRequest(input=queries[next(q_iter) % 50]), ctx), args.n)))

    outcomes = []
    for i, (backend, text) in enumerate(pairs[:1500:3]):  # synthetic: the set's own backend is the right one
        for b in ("prompt", "icl", "tools"):
            outcomes.append({"id": str(i), "input": text, "backend": b, "score": float(b == backend or b == "icl"),
                             "cost_usd": {"prompt": 1e-5, "icl": 4e-4, "tools": 2e-4}[b]})
    report = train(outcomes, tmp / "router.npz", embedder=embedder, method="knn")
    learned = build_policy({"kind": "learned", "model_path": report.model_path, "default": "prompt"})
    rows.append((f"learned kNN model only ({report.n_train} rows)",
                 *timed(lambda: learned.model.predict(vectors[next(v_iter) % 200][None, :]), args.n)))
    def fresh() -> str:  # never seen before, so no embedding cache can answer
        i = next(q_iter)
        return f"{queries[i % len(queries)]} #{i}"

    rows += timed_interleaved({
        "embed one request (MiniLM onnx)": lambda: embedder.embed_array([fresh()]),
        "semantic decide (embed + numpy search)": lambda: semantic.decide(GenerateRequest(input=fresh()), ctx),
        "learned decide (embed + kNN)": lambda: learned.decide(GenerateRequest(input=fresh()), ctx),
    }, args.n_embed)

    quality = routing_quality(semantic, embedder, tmp) if args.quality else []

    print(f"\nladder decisions over {len(requests)} requests: {dict(sorted(ladder_mix.items()))}")
    for label, (seconds, sync) in zip(("first start", "restart"), starts):
        assert sync is not None
        print(f"semantic {label}: {seconds:.1f} s, {sync.added} utterances embedded, {sync.deleted} deleted, "
              f"{sync.loaded} loaded from Chroma collection {sync.collection!r}")
    print(f"learned (synthetic outcomes): held-out routing accuracy {report.routing_accuracy:.3f} "
          f"on {report.n_test} records\n")
    print("| policy | p50 ms | p95 ms |\n|---|---:|---:|")
    for label, p50, p95 in rows:
        print(f"| {label} | {p50:.3f} | {p95:.3f} |")
    if quality:
        print("\nHeld-out routing accuracy (which public set a query comes from -> its backend; 80/20 split, "
              "seed 0):\n\n| router | accuracy | held-out queries |\n|---|---:|---:|")
        for label, accuracy, n in quality:
            print(f"| {label} | {accuracy:.3f} | {n} |")


class _Cached:
    """An embedder answering from vectors already computed (the store's), so accuracy runs embed nothing."""

    def __init__(self, known: dict[str, np.ndarray], embedder: Any) -> None:
        self.known, self.embedder, self.model = known, embedder, embedder.model

    def embed_array(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self.known]
        if missing:
            self.known.update(zip(missing, self.embedder.embed_array(missing)))
        return np.stack([self.known[t] for t in texts])


def routing_quality(semantic: SemanticPolicy, embedder: Any, tmp: Path) -> list[tuple[str, float, int]]:
    """Semantic (top-1, top-5 vote) and learned (kNN, logreg) routers on queries none of them saw."""
    known = dict(zip(semantic.utterances, semantic.matrix))
    base = utterances(0)  # the public sets' own inputs, no padded variants
    order = np.random.default_rng(0).permutation(len(base))
    cut = int(0.8 * len(base))
    fit, held = [base[i] for i in order[:cut]], [base[i] for i in order[cut:]]
    cached = _Cached(known, embedder)
    vectors = cached.embed_array([t for _, t in held])
    results = []
    for k in (1, 5):
        policy = SemanticPolicy(SemanticConfig(kind="semantic", routes=_routes(fit), threshold=-1.0, top_k=k,
                                               default="prompt"), embedder=cached)
        hits = [policy.nearest(v)[0] == b for v, (b, _) in zip(vectors, held)]
        results.append((f"semantic nearest route, top_k={k} ({len(fit)} utterances)", float(np.mean(hits)),
                        len(held)))
    # The learned router's label here is the set's backend (one backend is right, all cost the same).
    outcomes = [{"id": str(i), "input": t, "backend": b2, "score": float(b2 == b), "cost_usd": 0.0}
                for i, (b, t) in enumerate(base) for b2 in sorted(set(SETS.values()))]
    for method in ("knn", "logreg"):
        report = train(outcomes, tmp / f"{method}.npz", embedder=cached, method=method, test_share=0.2)
        results.append((f"learned {method} (train() report)", report.routing_accuracy, report.n_test))
    return results


def _routes(pairs: list[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    routes: dict[str, list[str]] = {}
    for backend, text in pairs:
        routes.setdefault(backend, []).append(text)
    return {b: tuple(dict.fromkeys(ts)) for b, ts in routes.items()}


if __name__ == "__main__":
    main()
