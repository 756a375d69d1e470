"""Re-ingesting a corpus in which nothing changed, and one in which one file changed, before and after a change to
genroute, side by side: wall time, chunks cut and texts embedded.

    PYTHONPATH=. python benchmarks/reingest_digests.py --before /tmp/main-copy            # 10,000 chunks, 100 files
    PYTHONPATH=. python benchmarks/reingest_digests.py --before /tmp/main-copy --chunks 2000

``--before`` is another checkout of genroute (e.g. ``git archive main | tar -x -C /tmp/main-copy``); "after" is the
genroute this script runs with. Each runs in a process of its own: a directory of JSONL files, 100 one-chunk documents
a file, is ingested into an embedded Chroma collection, then re-ingested ``--rounds`` times as it is, and
``--rounds`` times with one record of a different file edited each time. The figures are medians. The embedder is a
hashed random vector per text (``reingest_dirs.HashedEmbedder``): embedding time is left out, the texts embedded are
counted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

HERE = Path(__file__).resolve().parent


async def scenario(chunks: int, rounds: int) -> dict[str, Any]:
    """What re-ingesting costs here (the genroute on ``sys.path``): medians per kind of re-ingest."""
    from reingest_dirs import HashedEmbedder, write_dir

    from genroute.knowledge import aingest
    from genroute.knowledge.store import KnowledgeStore, StoreConfig

    ingest = importlib.import_module("genroute.knowledge.ingest")
    cut = [0]
    chunk_documents = ingest.chunk_documents

    def counted(*args: Any, **kwargs: Any) -> Any:
        for item in chunk_documents(*args, **kwargs):
            cut[0] += 1
            yield item

    ingest.chunk_documents = counted
    root = Path(tempfile.mkdtemp(prefix="reingest-digests-"))
    folder = root / "files" / "corpus"
    write_dir(folder, chunks)
    embedder = HashedEmbedder()
    embedded = [0]
    embed = embedder.aembed

    async def aembed(texts: list[str], **kw: Any) -> list[list[float]]:
        embedded[0] += len(texts)
        return await embed(texts, **kw)

    embedder.aembed = aembed  # type: ignore[method-assign]
    store = KnowledgeStore(StoreConfig(path=str(root / "chroma")), embedder=embedder)
    await aingest(store, [folder], collection="docs", batch_size=1000)
    files = sorted(folder.glob("*.jsonl"))
    results: dict[str, Any] = {}
    for label in ("nothing changed", "one file changed"):
        runs = []
        for n in range(rounds):
            if label == "one file changed":
                edited = files[(n * 7 + len(files) // 2) % len(files)]
                lines = edited.read_text(encoding="utf-8").splitlines(keepends=True)
                lines[0] = lines[0].replace("apples are red", f"pears are green ({n})")
                edited.write_text("".join(lines), encoding="utf-8")
            cut[0] = embedded[0] = 0
            started = time.perf_counter()
            report = await aingest(store, [folder], collection="docs", batch_size=1000)
            runs.append((time.perf_counter() - started, cut[0], embedded[0], report.added, report.removed))
        results[label] = {"seconds": statistics.median(r[0] for r in runs), "cut": max(r[1] for r in runs),
                          "embedded": max(r[2] for r in runs), "added": max(r[3] for r in runs),
                          "removed": max(r[4] for r in runs), "all_seconds": [round(r[0], 3) for r in runs]}
    shutil.rmtree(root, ignore_errors=True)
    return results


def measure(checkout: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``scenario`` in a process running the genroute of ``checkout``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), str(HERE)])}
    run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--chunks", str(args.chunks),
                          "--rounds", str(args.rounds)], env=env, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"{checkout}: {run.stderr}")
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout of genroute to compare with")
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks in the corpus (100 a file)")
    parser.add_argument("--rounds", type=int, default=3, help="re-ingests of each kind (medians reported)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(scenario(args.chunks, args.rounds))))
        return
    import genroute

    after_root = Path(genroute.__file__).resolve().parent.parent
    columns = {"after": measure(after_root, args)}
    if args.before is not None:
        columns = {"before": measure(args.before.resolve(), args), **columns}
    print(f"{args.chunks} one-chunk documents in {(args.chunks + 99) // 100} files; medians of {args.rounds} "
          f"re-ingests; load {os.getloadavg()[0]:.1f}")
    print(f"| re-ingest | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for label in ("nothing changed", "one file changed"):
        cells = [f"{c[label]['seconds']:.2f} s; {c[label]['cut']:,} chunks cut, {c[label]['embedded']:,} embedded "
                 f"(+{c[label]['added']} -{c[label]['removed']})" for c in columns.values()]
        print(f"| {label} | {' | '.join(cells)} |")
    for name, column in columns.items():
        print(f"{name}: each run's seconds: " + "; ".join(f"{k}: {v['all_seconds']}" for k, v in column.items()))


if __name__ == "__main__":
    main()
