"""Sentences/s of the offline MiniLM embedder (onnxruntime) at batch 1 and batch 32.

Usage::

    python benchmarks/embedder.py --sentences 256 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import time

from genroute.knowledge.embedders import LocalEmbedder

WORDS = ("the router picks a technique per request and records why it chose it in a trace "
         "retrieval grounds answers in documents while tools act on external systems").split()


def sentences(n: int) -> list[str]:
    """``n`` distinct sentences of 8-24 words (typical short passages and queries)."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 17)) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args()

    start = time.perf_counter()
    embedder = LocalEmbedder(intra_op_threads=args.threads)
    embedder.embed(["warm up"])  # builds (first run) or loads the cached ONNX graph
    print(f"first load incl. graph build/cache read: {time.perf_counter() - start:.2f}s")
    texts = sentences(args.sentences)
    for batch in (1, 32):
        embedder.batch_size = batch
        best = 0.0
        for _ in range(args.rounds):
            start = time.perf_counter()
            if batch == 1:
                for text in texts:
                    embedder.embed([text])
            else:
                embedder.embed(texts)
            best = max(best, len(texts) / (time.perf_counter() - start))
        print(f"batch {batch:2d}: {best:7.1f} sentences/s ({1000 / best:.2f} ms/sentence), "
              f"threads={args.threads}, best of {args.rounds} x {len(texts)}")


if __name__ == "__main__":
    main()
