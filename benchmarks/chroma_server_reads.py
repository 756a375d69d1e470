"""What an ICL refresh could read of a Chroma server to tell whether its examples changed, and what each read costs.

    python benchmarks/chroma_server_reads.py [--n 2000] [--repeats 20]

Starts ``chroma run`` (this venv's CLI) on a free port with its data in a temporary directory, fills a collection with
``--n`` examples shaped as genroute stores them (a ~300-character document, its metadata, a 384-dimension embedding),
then checks which of the server's cheap answers change when a record is added, updated (metadata only), upserted
and deleted (the count, the ids, the collection's ``version``, ``log_position``, metadata and configuration), and
times each read (median of ``--repeats``): the count, the ids only (``get(include=[])``), every metadata (what a
``knn``/``mmr``/``balanced`` refresh reads for its facts) and documents with metadata (a ``fixed``/``random`` pool).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(data: Path, port: int) -> subprocess.Popen[bytes]:
    cli = Path(sys.executable).with_name("chroma")
    process = subprocess.Popen([str(cli), "run", "--path", str(data), "--port", str(port), "--host", "127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("chroma run did not answer in 60 s")


def mark(col: Any, client: Any) -> dict[str, Any]:
    model = client.get_collection(col.name)._model
    return {"count": col.count(), "ids": tuple(sorted(col.get(include=[])["ids"])), "version": model.version,
            "log_position": model.log_position, "metadata": json.dumps(model.metadata, sort_keys=True),
            "configuration": json.dumps(model.configuration_json, sort_keys=True, default=str)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import chromadb

    os.environ.setdefault("NO_PROXY", "127.0.0.1")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as data:
        port = free_port()
        server = start(Path(data), port)
        try:
            client = chromadb.HttpClient(host="127.0.0.1", port=port)
            col = client.create_collection("examples", metadata={"genroute:kind": "examples"})
            ids = [f"ex{i}" for i in range(args.n)]
            docs = [" ".join(rng.choice("card late refund pin cash fee rate top up".split()) for _ in range(60))[:300]
                    for _ in ids]
            metas = [{"ord": i, "input_key": f"k{i}", "output": "card_arrival", "extra": json.dumps({"task": "t"})}
                     for i in range(args.n)]
            for start_at in range(0, args.n, 500):
                stop = start_at + 500
                col.add(ids=ids[start_at:stop], documents=docs[start_at:stop], metadatas=metas[start_at:stop],
                        embeddings=[[rng.random() for _ in range(384)] for _ in ids[start_at:stop]])
            print(f"chromadb {chromadb.__version__}, {args.n:,} examples, median of {args.repeats}")
            print("| write | count | ids | version | log_position | metadata | configuration |")
            print("|---|---|---|---|---|---|---|")
            before = mark(col, client)
            vector = [[rng.random() for _ in range(384)]]
            writes = {"add one": lambda: col.add(ids=["new"], documents=["d"], metadatas=[{"ord": -1}],
                                                 embeddings=vector),
                      "update one's metadata": lambda: col.update(ids=["ex0"], metadatas=[{**metas[0], "output": "x"}]),
                      "upsert one (same id)": lambda: col.upsert(ids=["ex1"], documents=["other"], embeddings=vector),
                      "delete one": lambda: col.delete(ids=["new"])}
            for name, write in writes.items():
                write()
                after = mark(col, client)
                changed = ("changed" if after[key] != before[key] else "same" for key in before)
                print(f"| {name} | " + " | ".join(changed) + " |")
                before = after
            reads = {"count": col.count, "ids only (get include=[])": lambda: col.get(include=[]),
                     "every metadata (knn facts)": lambda: col.get(include=["metadatas"]),
                     "documents + metadata (fixed pool)": lambda: col.get(include=["documents", "metadatas"])}
            print("\n| read | median ms |\n|---|---:|")
            for name, read in reads.items():
                read()
                times = []
                for _ in range(args.repeats):
                    began = time.perf_counter()
                    read()
                    times.append((time.perf_counter() - began) * 1e3)
                print(f"| {name} | {statistics.median(times):.1f} |")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
