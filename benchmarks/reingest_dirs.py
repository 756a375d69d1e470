"""Time and memory of re-ingesting one directory of a collection that holds two, after a file was deleted from it.

    PYTHONPATH=. python benchmarks/reingest_dirs.py                          # 20,000 chunks, 10,000 a directory
    PYTHONPATH=. python benchmarks/reingest_dirs.py --chunks 20000 --store /tmp/kb --keep   # keep the store
    PYTHONPATH=. python benchmarks/reingest_dirs.py --store /tmp/kb --reuse  # re-ingest a kept store (a store
                                                                             # kept by an older genroute: its backfill)

Two directories (``small`` and ``big``) of JSONL files, 100 one-chunk documents a file, are ingested into one
embedded Chroma collection. Then one file of ``small`` is deleted and ``small`` is ingested again, twice (another
file deleted before the second): the first run is timed (and its ``withdraw_deleted`` apart), the second runs under
tracemalloc for its peak Python memory (and its ``withdraw_deleted``'s own, above what the run held when it
began). Also printed: how many records the withdrawal's Chroma reads returned and the process's peak RSS. The
embedder is a hashed random vector per text (384 wide, as MiniLM's): nothing here measures embedding. Run it
with ``PYTHONPATH`` at another checkout of genroute to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute.knowledge import aingest
from genroute.knowledge.embedder_base import Embedder
from genroute.knowledge.store import KnowledgeStore, StoreConfig

ingest_module = importlib.import_module("genroute.knowledge.ingest")  # the package's ``ingest`` is the function

PER_FILE = 100


class HashedEmbedder(Embedder):
    """A fixed random vector per text: the shape of MiniLM's output, none of its cost."""

    model = "hashed-384"
    provider = "benchmark"
    dimension = 384

    @staticmethod
    def name() -> str:
        return "hashed"

    async def aembed(self, texts: list[str], *, tracer: Any = None) -> list[list[float]]:
        out = []
        for text in texts:
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            out.append(np.random.default_rng(seed).standard_normal(self.dimension).tolist())
        return out


def write_dir(folder: Path, chunks: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range((chunks + PER_FILE - 1) // PER_FILE):
        with (folder / f"part{f:04d}.jsonl").open("w", encoding="utf-8") as fh:
            for d in range(min(PER_FILE, chunks - f * PER_FILE)):
                fh.write(json.dumps({"text": f"Document {d} of file {f} in {folder.name}: apples are red."}) + "\n")


def counting_reads(store: KnowledgeStore) -> list[int]:
    """How many records each metadata read of the withdrawal returned (wrapping the store's own methods)."""
    counts: list[int] = []
    where_read = store.metadatas_where
    pages_read = getattr(store, "metadata_pages", None)

    async def metadatas_where(name: str, where: Any, **kw: Any) -> Any:
        got = await where_read(name, where, **kw)
        counts.append(len(got))
        return got

    store.metadatas_where = metadatas_where  # type: ignore[method-assign]
    if pages_read is not None:
        async def metadata_pages(name: str, where: Any, **kw: Any) -> Any:
            async for page in pages_read(name, where, **kw):
                counts.append(len(page))
                yield page

        store.metadata_pages = metadata_pages  # type: ignore[method-assign]
    return counts


async def run(args: argparse.Namespace) -> None:
    root = Path(args.store or tempfile.mkdtemp(prefix="reingest-dirs-"))
    small, big = root / "files" / "small", root / "files" / "big"
    store = KnowledgeStore(StoreConfig(path=str(root / "chroma")), embedder=HashedEmbedder())
    if not args.reuse:
        write_dir(small, args.chunks // 2)
        write_dir(big, args.chunks - args.chunks // 2)
        started = time.perf_counter()
        for folder in (small, big):
            await aingest(store, [folder], collection="docs", batch_size=1000)
        print(f"built: {await store.count('docs', kind='documents')} chunks in {time.perf_counter() - started:.1f} s")
    withdraw = ingest_module.withdraw_deleted
    counts = counting_reads(store)
    seen: dict[str, float] = {}

    async def measured_withdraw(*a: Any, **kw: Any) -> int:
        before, t = len(counts), time.perf_counter()
        if tracemalloc.is_tracing():  # the run's peak so far is kept: the reset makes the next one withdraw's own
            held, run_peak = tracemalloc.get_traced_memory()
            seen.update(run_peak_mb=run_peak / 1e6, held_mb=held / 1e6)
            tracemalloc.reset_peak()
        try:
            return await withdraw(*a, **kw)
        finally:
            seen.update(seconds=time.perf_counter() - t, records=sum(counts[before:]), reads=len(counts) - before)
            if tracemalloc.is_tracing():
                seen["peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6 - seen["held_mb"]

    ingest_module.withdraw_deleted = measured_withdraw
    files = sorted(small.glob("*.jsonl"))
    files[0].unlink()
    started = time.perf_counter()
    report = await aingest(store, [small], collection="docs", batch_size=1000)
    print(f"re-ingest of small: {time.perf_counter() - started:.2f} s, removed {report.removed}; its "
          f"withdraw_deleted: {seen['seconds']:.2f} s, {seen['records']:.0f} records returned by "
          f"{seen['reads']:.0f} Chroma reads")
    files[1].unlink()
    tracemalloc.start()
    await aingest(store, [small], collection="docs", batch_size=1000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"second re-ingest (under tracemalloc): peak {max(peak / 1e6, seen['run_peak_mb']):.1f} MB, its "
          f"withdraw_deleted's own peak {seen['peak_mb']:.1f} MB above what the run held before it "
          f"({seen['seconds']:.2f} s, {seen['records']:.0f} records returned); process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")
    if args.store is None or not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=20_000, help="chunks in both directories together")
    parser.add_argument("--store", help="where the files and the Chroma store go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep --store afterwards")
    parser.add_argument("--reuse", action="store_true", help="re-ingest the store kept at --store (nothing built)")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
