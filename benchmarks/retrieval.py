"""Retrieval, ingestion and ICL-selection latency of genroute's knowledge layer (embedded Chroma).

    python benchmarks/retrieval.py                       # 10k and 100k chunks, 200 queries
    python benchmarks/retrieval.py --sizes 10000 --queries 100 --json out.json
    python benchmarks/retrieval.py --host 127.0.0.1 --port 8123 --sizes 10000 --skip ingest,icl  # server mode

What is measured (wall clock, this machine, nothing mocked):

- ingest: ``aingest`` of the XQuAD passage corpus (chunking + local MiniLM embedding + upsert), chunks/s;
- retrieval at N chunks: ``KnowledgeStore.query`` = query embedding (local MiniLM on onnxruntime) plus the
  Chroma HNSW query, p50/p95 over held-out questions; the embedding and the Chroma part are also
  reported apart. The first 10k chunks are real texts (shared datasets) embedded by the real model;
  beyond that, vectors are real embeddings plus Gaussian noise (re-normalised) so that 100k chunks fit
  in the time budget — the Chroma query cost depends on the index size and dimension, not on where
  the vectors came from;
- ICL selection: ``ExampleStore.select`` over BANKING77 (2,147 examples) per selector, p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import shared_data

DATA = shared_data.default_dir()  # main() sets it from --shared-data


def pct(values: list[float], q: float) -> float:
    """The q-th percentile in milliseconds."""
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 50), 2), "p95_ms": round(pct(values, 95), 2),
            "mean_ms": round(statistics.fmean(values) * 1000, 2), "n": len(values)}


def corpus_texts() -> list[str]:
    """Real short texts from the shared datasets (inputs of every task set)."""
    texts: list[str] = []
    for name in ("banking77", "nlupp", "dynasent_r2", "bfcl_v4"):
        with (DATA / f"{name}.jsonl").open(encoding="utf-8") as fh:
            texts.extend(json.loads(line)["input"][:1000] for line in fh if line.strip())
    with (DATA / "xquad_en_corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            words = json.loads(line)["text"].split()
            texts.extend(" ".join(words[i:i + 60]) for i in range(0, len(words), 50))
    return texts


async def bench_ingest(store: Any, results: dict[str, Any]) -> None:
    from genroute.knowledge import aingest

    report = await aingest(store, [DATA / "xquad_en_corpus.jsonl"], collection="ingest-bench",
                           chunk_tokens=200, overlap=40)
    again = await aingest(store, [DATA / "xquad_en_corpus.jsonl"], collection="ingest-bench",
                          chunk_tokens=200, overlap=40)
    results["ingest"] = {"chunks": report.chunks, "seconds": round(report.seconds, 2),
                         "chunks_per_s": round(report.chunks_per_s, 1),
                         "reingest_seconds": round(again.seconds, 3), "reingest_added": again.added}
    print(f"ingest: {report.chunks} chunks of <=200 tokens in {report.seconds:.1f} s "
          f"= {report.chunks_per_s:.1f} chunks/s; re-ingest {again.seconds:.2f} s, {again.added} added")


async def bench_recall(store: Any, results: dict[str, Any], k: int = 4) -> None:
    """Does retrieval find the passage a question was written from? (XQuAD, all 762 questions)."""
    with (DATA / "xquad_en.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    at1 = atk = within = 0
    for row in rows:
        hits = await store.query("ingest-bench", row["input"], kind="documents", k=k)
        gold = [h for h in hits if h.metadata.get("doc_id") == row["metadata"]["passage_id"]]
        at1 += bool(hits) and hits[0].metadata.get("doc_id") == row["metadata"]["passage_id"]
        atk += bool(gold)
        within += bool(gold) and gold[0].distance <= 0.7
    n = len(rows)
    results["recall"] = {"questions": n, "recall_at_1": round(at1 / n, 3), f"recall_at_{k}": round(atk / n, 3),
                         "gold_within_0.7": round(within / n, 3)}
    print(f"recall on XQuAD ({n} questions, 200-token chunks): @1 {at1 / n:.3f}, @{k} {atk / n:.3f}; "
          f"gold chunk in top-{k} and within the default max_distance 0.7: {within / n:.3f}")


async def fill(store: Any, collection: str, size: int, texts: list[str], base: np.ndarray,
               results: dict[str, Any]) -> None:
    """Grow ``collection`` to ``size`` records: real texts/vectors first, then noisy copies."""
    col = await store.collection(collection, kind="documents", create=True)
    have = await asyncio.to_thread(col.count)
    rng = np.random.default_rng(size)
    batch = await asyncio.to_thread(store.max_batch_size)
    started = time.perf_counter()
    for start in range(have, size, batch):
        stop = min(size, start + batch)
        idx = np.arange(start, stop) % len(base)
        vectors = base[idx]
        noisy = np.arange(start, stop) >= len(base)
        if noisy.any():
            vectors = vectors.copy()
            vectors[noisy] += rng.normal(0, 0.35 / np.sqrt(vectors.shape[1]), (int(noisy.sum()), vectors.shape[1]))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"c{i}" for i in range(start, stop)]
        docs = [texts[i % len(texts)] for i in range(start, stop)]
        await store.upsert(collection, ids, docs, [{"source": "bench", "n": i} for i in range(start, stop)],
                           kind="documents", embeddings=vectors.tolist())
    elapsed = time.perf_counter() - started
    if size > have:
        results.setdefault("upsert", {})[str(size)] = round((size - have) / elapsed, 1)
        print(f"  upsert (vectors given) {size - have} records: {(size - have) / elapsed:.0f} records/s")


async def bench_retrieval(store: Any, sizes: list[int], queries: list[str], results: dict[str, Any]) -> None:
    texts = corpus_texts()[: max(sizes)]
    cached = Path(tempfile.gettempdir()) / f"genroute-bench-vectors-{len(texts[:10_000])}.npy"
    if cached.exists():
        base = np.load(cached)
    else:
        t0 = time.perf_counter()
        base = np.asarray(await store.embedder.aembed(texts[:10_000]), dtype=np.float32)
        rate = len(base) / (time.perf_counter() - t0)
        np.save(cached, base)
        results["embed_texts_per_s"] = round(rate, 1)
        print(f"embedded {len(base)} real texts at {rate:.0f} texts/s (MiniLM, onnxruntime, 2 threads)")
    for size in sizes:
        name = f"retrieval-{size}"
        await fill(store, name, size, texts, base, results)
        for q in queries[:5]:  # warm up
            await store.query(name, q, kind="documents", k=4)
        total, embed, chroma = [], [], []
        for q in queries:
            t = time.perf_counter()
            vector = (await store.embedder.aembed([q]))[0]
            t1 = time.perf_counter()
            await store.query_vector(name, vector, kind="documents", k=4)
            t2 = time.perf_counter()
            await store.query(name, q, kind="documents", k=4)
            t3 = time.perf_counter()
            embed.append(t1 - t)
            chroma.append(t2 - t1)
            total.append(t3 - t2)
        results.setdefault("retrieval", {})[str(size)] = {
            "query_incl_embedding": summary(total), "embedding_only": summary(embed), "chroma_only": summary(chroma)}
        print(f"retrieval @ {size} chunks, k=4: query incl. embedding p50 {pct(total, 50):.1f} ms "
              f"p95 {pct(total, 95):.1f} ms | embedding p50 {pct(embed, 50):.1f} ms | "
              f"chroma p50 {pct(chroma, 50):.2f} ms p95 {pct(chroma, 95):.2f} ms")


async def bench_icl(store: Any, queries: list[str], results: dict[str, Any]) -> None:
    from genroute.knowledge import ExampleStore, aload_examples

    report = await aload_examples(store, [DATA / "banking77.jsonl"], collection="icl-bench")
    print(f"icl: loaded {report.chunks} examples in {report.seconds:.1f} s")
    examples = ExampleStore(store, "icl-bench")
    await examples.pool()
    results["icl"] = {}
    for strategy in ("fixed", "random", "knn", "mmr", "balanced"):
        times = []
        for q in queries:
            t = time.perf_counter()
            await examples.select(q, strategy=strategy, k=8)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t)
        results["icl"][strategy] = summary(times)
        print(f"  select {strategy:8s} k=8 over {report.chunks}: p50 {pct(times, 50):.2f} ms "
              f"p95 {pct(times, 95):.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--path", default=None, help="Chroma dir (default: a temp dir)")
    parser.add_argument("--host", default=None, help="use a `chroma run` server at this host instead")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--skip", default="", help="comma list of ingest,retrieval,icl to skip")
    shared_data.add_option(parser)
    args = parser.parse_args()
    global DATA  # noqa: PLW0603 - the scripts' functions read the data directory chosen here
    DATA = shared_data.resolve(args.shared_data, "xquad_en.jsonl", "xquad_en_corpus.jsonl", "banking77.jsonl",
                               "nlupp.jsonl", "dynasent_r2.jsonl", "bfcl_v4.jsonl")
    from genroute.knowledge import build_store

    path = args.path or tempfile.mkdtemp(prefix="genroute-bench-")
    store = build_store({"host": args.host, "port": args.port} if args.host else {"path": path}, engines={})
    with (DATA / "xquad_en.jsonl").open(encoding="utf-8") as fh:
        questions = [json.loads(line)["input"] for line in fh if line.strip()][: args.queries]
    results: dict[str, Any] = {"chroma": store.location, "queries": len(questions)}
    skip = set(filter(None, args.skip.split(",")))
    if "ingest" not in skip:
        await bench_ingest(store, results)
        await bench_recall(store, results)
    if "retrieval" not in skip:
        await bench_retrieval(store, [int(s) for s in args.sizes.split(",")], questions, results)
    if "icl" not in skip:
        await bench_icl(store, questions, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
