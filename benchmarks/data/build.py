"""Rebuild the small benchmark subsets in this directory from the shared public data (seeded, deterministic).

    python benchmarks/data/build.py [--source DIR]

``--source`` defaults to ``$GENROUTE_SHARED_DATA``, else ``../shared/data`` beside the repository (the shared
converted copies).

Each subset is split into an ``*_eval.jsonl`` (what the benchmark scores) and, where few-shot ICL needs a
pool, an ``*_examples.jsonl`` with other records of the same set (never the evaluated ones).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for shared_data

import shared_data  # noqa: E402
BANKING_LABELS = ("card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "cash_withdrawal_charge")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(HERE)}: {len(rows)} rows")


def split(rows: list[dict], n_eval: int, n_pool: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n_eval], rows[n_eval:n_eval + n_pool]


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the benchmark subsets from the shared public data.")
    parser.add_argument("--source", type=Path, default=None, help="shared data directory (default: "
                        "$GENROUTE_SHARED_DATA, else ../shared/data beside the repository)")
    src = shared_data.resolve(parser.parse_args().source, "dynasent_r2.jsonl", "banking77.jsonl", "xquad_en.jsonl",
                              "bfcl_v4.jsonl", "licenses")

    # Sentiment: DynaSent round 2, binary (neutral dropped).
    binary = [{**r, "metadata": {**r["metadata"], "label_set": ["negative", "positive"]}}
              for r in read(src / "dynasent_r2.jsonl") if r["label"] != "neutral"]
    ev, pool = split(binary, 150, 200)
    write(HERE / "sentiment" / "eval.jsonl", ev)
    write(HERE / "sentiment" / "examples.jsonl", pool)

    # Intents: BANKING77 restricted to five distinct intents.
    banking = [{**r, "metadata": {**r["metadata"], "label_set": list(BANKING_LABELS)}}
               for r in read(src / "banking77.jsonl") if r["label"] in BANKING_LABELS]
    ev, pool = split(banking, 75, 80)
    write(HERE / "banking77" / "eval.jsonl", ev)
    write(HERE / "banking77" / "examples.jsonl", pool)

    # Reading comprehension over a corpus: XQuAD English (CC BY-SA 4.0), full corpus.
    xq = read(src / "xquad_en.jsonl")
    ev, pool = split(xq, 120, 60)
    write(HERE / "xquad" / "eval.jsonl", ev)
    write(HERE / "xquad" / "examples.jsonl", pool)
    shutil.copyfile(src / "xquad_en_corpus.jsonl", HERE / "xquad" / "corpus.jsonl")
    shutil.copyfile(src / "licenses" / "xquad-CC-BY-SA-4.0.txt", HERE / "xquad" / "LICENSE")

    # Function calling: BFCL v4 single-call categories plus irrelevance (Apache-2.0).
    bfcl = read(src / "bfcl_v4.jsonl")
    chosen = []
    for category, n in (("simple_python", 40), ("multiple", 20), ("live_simple", 20), ("irrelevance", 20)):
        rows = [r for r in bfcl if r["metadata"]["category"] == category]
        chosen += split(rows, n, 0, seed=1)[0]
    write(HERE / "bfcl" / "eval.jsonl", chosen)
    shutil.copyfile(src / "licenses" / "bfcl-LICENSE", HERE / "bfcl" / "LICENSE")

    shutil.copyfile(src / "licenses" / "banking77-nlupp-LICENSE", HERE / "banking77" / "LICENSE")
    shutil.copyfile(src / "licenses" / "dynasent-README.md", HERE / "sentiment" / "DYNASENT-README.md")
    shutil.copyfile(src / "banking77_labels.json", HERE / "banking77" / "labels.json")


if __name__ == "__main__":
    main()
