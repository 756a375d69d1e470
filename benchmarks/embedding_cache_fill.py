"""Time to fill the benchmark's embedding cache (``genroute.bench.embedding_cache``), the embedder's own time apart.

    python benchmarks/embedding_cache_fill.py --texts 20000          # 384-wide vectors (MiniLM's), chunks of 2,048

The embedder returns a fixed vector per text at no cost, so the figure is the cache's: the writes of every chunk
(and an fsync each) and reading the file back in a new process's ``CachedEmbedder``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute.bench.embedding_cache import CachedEmbedder


class Free:
    """A 384-wide vector per text, made at no cost."""

    model = "free-384"

    def embed_array(self, texts: list[str]) -> NDArray[Any]:
        return np.ones((len(texts), 384), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    texts = [f"question {i}" for i in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        CachedEmbedder(Free(), tmp, chunk=args.chunk).embed_array(texts)
        fill = time.perf_counter() - start
        start = time.perf_counter()
        CachedEmbedder(Free(), tmp, chunk=args.chunk).embed_array(texts)
        warm = time.perf_counter() - start
    print(f"{args.texts:,} texts in chunks of {args.chunk:,}: fill {fill:.2f} s, read back (warm) {warm:.2f} s")


if __name__ == "__main__":
    main()
