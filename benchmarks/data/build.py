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
    """A seeded eval set and a pool of other rows; no pool row repeats an eval input (some sets hold duplicates)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    evaluated = {r["input"] for r in rows[:n_eval]}
    return rows[:n_eval], [r for r in rows[n_eval:] if r["input"] not in evaluated][:n_pool]


#: Evaluation records per task: at least 300, and a 30 % compile hold-out of at least 100 (0.3 x 340 = 102).
N_EVAL = 340
#: BANKING77 intents: the five of the first subsets plus 15 drawn (seeded) from the rest, so that 340 eval records
#: and an example pool of about 11 per intent fit in the ~28 test rows each intent has.
N_INTENTS = 20


def demo_ids() -> set[str]:
    """DynaSent ids in the demo's bundled training set: tuning data, kept out of every evaluation set."""
    bundled = HERE.parents[1] / "genroute" / "demo" / "data" / "review_sentiment.jsonl"
    return {r["metadata"]["id"] for r in read(bundled) if r.get("metadata", {}).get("id")}


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the benchmark subsets from the shared public data.")
    parser.add_argument("--source", type=Path, default=None, help="shared data directory (default: "
                        "$GENROUTE_SHARED_DATA, else ../shared/data beside the repository)")
    src = shared_data.resolve(parser.parse_args().source, "dynasent_r2.jsonl", "banking77.jsonl", "xquad_en.jsonl",
                              "bfcl_v4.jsonl", "nlupp.jsonl", "licenses")

    # Sentiment: DynaSent round 2, binary (neutral dropped); the demo adapter's training rows never evaluated.
    binary = [{**r, "metadata": {**r["metadata"], "label_set": ["negative", "positive"]}}
              for r in read(src / "dynasent_r2.jsonl") if r["label"] != "neutral"]
    tuned_on = demo_ids()
    ev, pool = split([r for r in binary if r["metadata"]["id"] not in tuned_on], N_EVAL, 10_000)
    pool = (pool + [r for r in binary if r["metadata"]["id"] in tuned_on])[:300]
    write(HERE / "sentiment" / "eval.jsonl", ev)
    write(HERE / "sentiment" / "examples.jsonl", pool)

    # Intents: BANKING77 restricted to 20 intents.
    rows = read(src / "banking77.jsonl")
    others = sorted({r["label"] for r in rows} - set(BANKING_LABELS))
    labels = [*BANKING_LABELS, *random.Random(0).sample(others, N_INTENTS - len(BANKING_LABELS))]
    banking = [{**r, "metadata": {**r["metadata"], "label_set": labels}} for r in rows if r["label"] in labels]
    ev, pool = split(banking, N_EVAL, 10_000)
    write(HERE / "banking77" / "eval.jsonl", ev)
    write(HERE / "banking77" / "examples.jsonl", pool)

    # Reading comprehension over a corpus: XQuAD English (CC BY-SA 4.0), split by article (no article's
    # questions on both sides), full corpus.
    xq = read(src / "xquad_en.jsonl")
    articles = sorted({r["metadata"]["passage_id"].rsplit("_", 1)[0] for r in xq})
    random.Random(0).shuffle(articles)
    ev_articles: set[str] = set()
    for article in articles:
        if sum(r["metadata"]["passage_id"].rsplit("_", 1)[0] in ev_articles for r in xq) >= N_EVAL:
            break
        ev_articles.add(article)
    in_eval = [r for r in xq if r["metadata"]["passage_id"].rsplit("_", 1)[0] in ev_articles]
    write(HERE / "xquad" / "eval.jsonl", split(in_eval, N_EVAL, 0)[0])
    write(HERE / "xquad" / "examples.jsonl",
          split([r for r in xq if r["metadata"]["passage_id"].rsplit("_", 1)[0] not in ev_articles], 200, 0)[0])
    shutil.copyfile(src / "xquad_en_corpus.jsonl", HERE / "xquad" / "corpus.jsonl")
    shutil.copyfile(src / "licenses" / "xquad-CC-BY-SA-4.0.txt", HERE / "xquad" / "LICENSE")

    # Function calling: BFCL v4, every category (Apache-2.0).
    bfcl = read(src / "bfcl_v4.jsonl")
    chosen = []
    for category, n in (("simple_python", 90), ("multiple", 50), ("parallel", 40), ("parallel_multiple", 40),
                        ("live_simple", 60), ("irrelevance", 60)):
        chosen += split([r for r in bfcl if r["metadata"]["category"] == category], n, 0, seed=1)[0]
    write(HERE / "bfcl" / "eval.jsonl", chosen)
    shutil.copyfile(src / "licenses" / "bfcl-LICENSE", HERE / "bfcl" / "LICENSE")

    # Structured output: NLU++ (banking and hotels) text -> JSON frame {"intents": [...], "slots": {...}}.
    nlupp = read(src / "nlupp.jsonl")
    ev, pool = split(nlupp, N_EVAL, 300)
    write(HERE / "nlupp" / "eval.jsonl", ev)
    write(HERE / "nlupp" / "examples.jsonl", pool)
    shutil.copyfile(src / "licenses" / "banking77-nlupp-LICENSE", HERE / "nlupp" / "LICENSE")

    shutil.copyfile(src / "licenses" / "banking77-nlupp-LICENSE", HERE / "banking77" / "LICENSE")
    shutil.copyfile(src / "licenses" / "dynasent-README.md", HERE / "sentiment" / "DYNASENT-README.md")
    shutil.copyfile(src / "banking77_labels.json", HERE / "banking77" / "labels.json")


if __name__ == "__main__":
    main()
