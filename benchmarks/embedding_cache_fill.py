"""Time to fill the benchmark's embedding cache (``genroute.bench.embedding_cache``), the embedder's own time apart.

    python benchmarks/embedding_cache_fill.py --texts 20000 [--reads 5] [--before DIR]   # 384 wide, chunks of 2,048

The embedder returns a fixed vector per text at no cost, so the figure is the cache's: the writes of every chunk
(and an fsync each) and reading the file back in a new ``CachedEmbedder`` (``--reads`` times, the median kept), wall
and CPU time (the CPU time is the figure to compare on a loaded machine). ``--before DIR`` (e.g. a ``git archive`` of
main) reads the same file with that checkout's reader too, in turn with this one's.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path
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


def reader(checkout: str | None) -> Any:
    """``CachedEmbedder`` of this checkout, or of the one at ``checkout`` (its module loaded under another name)."""
    if checkout is None:
        return CachedEmbedder
    path = Path(checkout) / "genroute" / "bench" / "embedding_cache.py"
    spec = importlib.util.spec_from_file_location("before_embedding_cache", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CachedEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--reads", type=int, default=1, help="warm reads, each by a new CachedEmbedder")
    parser.add_argument("--before", help="another checkout: its reader reads the same file, in turn with this one's")
    args = parser.parse_args()
    texts = [f"question {i}" for i in range(args.texts)]
    readers = {"this checkout": reader(None)} | ({"--before": reader(args.before)} if args.before else {})
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        CachedEmbedder(Free(), tmp, chunk=args.chunk).embed_array(texts)
        print(f"{args.texts:,} texts in chunks of {args.chunk:,}: fill {time.perf_counter() - start:.2f} s "
              f"({time.process_time() - cpu:.2f} s CPU)")
        warm: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
        for _ in range(args.reads):
            for name, cls in readers.items():
                start, cpu = time.perf_counter(), time.process_time()
                cls(Free(), tmp, chunk=args.chunk).embed_array(texts)
                warm[name].append((time.perf_counter() - start, time.process_time() - cpu))
    for name, runs in warm.items():
        walls, cpus = sorted(r[0] for r in runs), sorted(r[1] for r in runs)
        print(f"read back (warm), {name}: median of {args.reads} {walls[len(runs) // 2]:.2f} s, "
              f"{cpus[len(runs) // 2]:.2f} s CPU (CPU {cpus[0]:.2f}-{cpus[-1]:.2f} s)")


if __name__ == "__main__":
    main()
