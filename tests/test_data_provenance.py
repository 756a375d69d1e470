"""Every labeled record committed with the repository comes from the shared 70 % share of its public set, and the
file beside it says so: the rest of each set is kept aside for independent evaluation, and a subset, an example pool,
a demo's training set or a per-record result drawn from an item of that held-aside part would have seen it.

The membership is checked against the shared data directory (``../shared/data`` beside the repository, or
``$GENROUTE_SHARED_DATA``) when this checkout has it; the statements are checked everywhere."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from .test_benchmarks_clone import real_shared_data

REPO = Path(__file__).resolve().parents[1]
#: Committed record files → (the shared file they were drawn from, the README or notice that states it).
DRAWN_FROM = {
    **{f"benchmarks/data/{task}/{part}.jsonl": (shared, "benchmarks/data/README.md")
       for task, shared in (("sentiment", "dynasent_r2.jsonl"), ("banking77", "banking77.jsonl"),
                            ("xquad", "xquad_en.jsonl"), ("nlupp", "nlupp.jsonl"))
       for part in ("eval", "examples")},
    "benchmarks/data/bfcl/eval.jsonl": ("bfcl_v4.jsonl", "benchmarks/data/README.md"),
    "genroute/demo/data/review_sentiment.jsonl": ("dynasent_r2.jsonl", "genroute/demo/data/NOTICE.md"),
    **{f"tests/data/shared_sample/{name}": (name, "tests/data/shared_sample/README.md")
       for name in ("banking77.jsonl", "bfcl_v4.jsonl", "dynasent_r2.jsonl", "nlupp.jsonl", "xquad_en.jsonl",
                    "router/dcrouter_train.jsonl")},
}


def rows(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def record_id(row: dict[str, Any]) -> str:
    return str(row.get("id") or row["metadata"]["id"])


def test_each_committed_record_file_says_it_was_drawn_from_the_70_percent_share_only() -> None:
    for name, (_, notes) in DRAWN_FROM.items():
        assert (REPO / name).is_file(), name
        text = " ".join((REPO / notes).read_text(encoding="utf-8").split())
        assert "70 % share" in text and "held aside" in text, f"{notes} does not state {name}'s provenance"


def test_each_committed_record_is_a_record_of_the_shared_70_percent_share() -> None:
    source = real_shared_data()
    if source is None:  # a clone without the shared data: the statements above are what it can check
        return
    assert "70%" in (source / "README.md").read_text(encoding="utf-8").replace(" %", "%")
    cache: dict[str, tuple[set[str], set[str]]] = {}
    for name, (shared, _) in DRAWN_FROM.items():
        if shared not in cache:
            full = rows(source / shared)
            cache[shared] = {record_id(r) for r in full}, {r["input"] for r in full}
        ids, inputs = cache[shared]
        committed = rows(REPO / name)
        strays = [record_id(r) for r in committed if record_id(r) not in ids or r["input"] not in inputs]
        assert not strays, f"{name}: {len(strays)} records not in the shared {shared} (e.g. {strays[:3]})"
    # The per-record results kept for RESULTS.md were measured on the committed eval sets only.
    for results in (REPO / "benchmarks" / "data" / "q340").glob("*/results.jsonl.gz"):
        evaluated = {record_id(r) for r in rows(REPO / "benchmarks" / "data" / results.parent.name / "eval.jsonl")}
        assert {r["record_id"] for r in rows(results)} <= evaluated, results
