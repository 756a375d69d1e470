"""Time and Chroma writes of re-ingesting a directory in which one file changed, and one in which none did.

    PYTHONPATH=. python benchmarks/reingest_unchanged.py                 # 10,000 chunks: 100 files of 100
    PYTHONPATH=. python benchmarks/reingest_unchanged.py --chunks 2000   # smaller

A directory of JSONL files, 100 one-chunk documents a file, is ingested into an embedded Chroma collection. Then one
record of one file is edited and the directory is ingested again, then again with nothing changed. Each re-ingest
prints its wall time, the records it wrote (upserted, metadata updated, deleted) and in how many Chroma write calls,
and how many texts it embedded. The embedder is a hashed random vector per text (``reingest_dirs.HashedEmbedder``):
nothing here measures embedding. Run it with ``PYTHONPATH`` at another checkout of genroute to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from reingest_dirs import HashedEmbedder, write_dir

from genroute.knowledge import aingest
from genroute.knowledge.store import KnowledgeStore, StoreConfig


def count_writes(store: KnowledgeStore, embedder: HashedEmbedder) -> Counter[str]:
    """Records written per kind of write, write calls (``calls``) and texts embedded (``embedded``), counted by
    wrapping the store's and the embedder's own methods."""
    counts: Counter[str] = Counter()
    for which in ("upsert", "update_metadatas", "delete"):
        def wrap(method: Any, which: str = which) -> Any:
            async def write(name: str, ids: Any, *args: Any, **kw: Any) -> Any:
                if ids:
                    counts[which] += len(ids)
                    counts["calls"] += 1
                return await method(name, ids, *args, **kw)
            return write
        setattr(store, which, wrap(getattr(store, which)))
    embed = embedder.aembed

    async def aembed(texts: list[str], **kw: Any) -> list[list[float]]:
        counts["embedded"] += len(texts)
        return await embed(texts, **kw)

    embedder.aembed = aembed  # type: ignore[method-assign]
    return counts


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="reingest-unchanged-"))
    folder = root / "files" / "corpus"
    write_dir(folder, args.chunks)
    embedder = HashedEmbedder()
    store = KnowledgeStore(StoreConfig(path=str(root / "chroma")), embedder=embedder)
    started = time.perf_counter()
    await aingest(store, [folder], collection="docs", batch_size=1000)
    print(f"built: {await store.count('docs', kind='documents')} chunks in {len(list(folder.glob('*.jsonl')))} "
          f"files, {time.perf_counter() - started:.1f} s")
    counts = count_writes(store, embedder)
    edited = sorted(folder.glob("*.jsonl"))[len(list(folder.glob("*.jsonl"))) // 2]
    lines = edited.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[0] = lines[0].replace("apples are red", "pears are green")
    edited.write_text("".join(lines), encoding="utf-8")
    for label in ("one file changed", "nothing changed"):
        counts.clear()
        started = time.perf_counter()
        report = await aingest(store, [folder], collection="docs", batch_size=1000)
        seconds = time.perf_counter() - started
        print(f"re-ingest, {label}: {seconds:.2f} s; records written: {counts['upsert']} upserted, "
              f"{counts['update_metadatas']} updated, {counts['delete']} deleted, in {counts['calls']} Chroma write "
              f"calls; {counts['embedded']} texts embedded (report: added {report.added}, removed {report.removed})")
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks in the directory")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
