"""Files genroute writes that hold user text or what is derived from it record by record (answers, embeddings,
input hashes, training queries, an adapter fitted to the rows) are their owner's only (0600, in directories made
0700), as outcome exports are; files of figures alone (summary.json, charts, policy configs naming a stats file or a
model) keep the umask's mode. Under the usual umask they were all 0644, readable by every local user."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from genroute.bench import compile_outcomes
from genroute.knowledge.embedders import LocalEmbedder

from .test_bench_outcomes import SPECS, synthetic


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file made without a mode of its own is readable by everyone."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(out: Path, names: list[str]) -> dict[str, str]:
    return {name: oct(stat.S_IMODE((out / name).stat().st_mode)) for name in names}


def test_a_compile_writes_what_quotes_or_encodes_its_records_for_their_owner_only(tmp_path: Path,
                                                                                 umask_022: None) -> None:
    # stats.json lists a hash of every training input (a hash confirms a guess), learned-*.npz (kNN) every training
    # input's embedding, semantic.json training queries word for word, report.md/.html and compiled.json quote them,
    # and the embedding cache holds a vector per input: all came out 0644 in a directory made 0755.
    source = tmp_path / "matrix.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in synthetic(30)))
    source.chmod(0o644)  # a file anyone may read: what the compile writes is private all the same
    out = tmp_path / "made" / "out"
    report = compile_outcomes(source, out_dir=out, embedder=LocalEmbedder(), min_n=10, specs=SPECS,
                              cache_dir=tmp_path / "made" / "embeddings")
    private = ["stats.json", "learned-task.npz", "learned-text.npz", "semantic.json", "report.md", "report.html",
               Path(report.files["compiled"]).name]
    assert _modes(out, private) == {name: oct(0o600) for name in private}
    cache = tmp_path / "made" / "embeddings"
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in cache.iterdir()} == {oct(0o600)}
    figures = ["summary.json", "cost_aware.json", "curve.png"]
    assert _modes(out, figures) == {name: oct(0o644) for name in figures}
    assert _modes(tmp_path / "made", ["out", "embeddings"]) == {"out": oct(0o700), "embeddings": oct(0o700)}
    # A rerun keeps the mode the user gave a file (sharing it is their choice), as a config rewritten keeps its own.
    (out / "stats.json").chmod(0o640)
    compile_outcomes(source, out_dir=out, embedder=LocalEmbedder(), min_n=10, specs=SPECS,
                     cache_dir=tmp_path / "made" / "embeddings")
    assert _modes(out, ["stats.json", "semantic.json"]) == {"stats.json": oct(0o640), "semantic.json": oct(0o600)}


def test_a_router_model_saved_alone_is_its_owners_only(tmp_path: Path, umask_022: None) -> None:
    from genroute.policies.router_models import RouterModel, fit
    from genroute.policies.stats import BenchStats

    rng = np.random.default_rng(0)
    model = fit(rng.normal(size=(12, 8)), rng.random((12, 2)), ["a", "b"], method="knn", cost=[1.0, 2.0])
    path = model.save(tmp_path / "models" / "learned.npz")
    stats = BenchStats.model_validate({"version": 1, "tasks": {}, "input_keys": ["k1"]})
    stats.save(tmp_path / "s" / "stats.json")
    assert _modes(tmp_path, ["models", "models/learned.npz", "s", "s/stats.json"]) == {
        "models": oct(0o700), "models/learned.npz": oct(0o600), "s": oct(0o700), "s/stats.json": oct(0o600)}
    assert RouterModel.load(path).backends == ["a", "b"]
    assert BenchStats.load(tmp_path / "s" / "stats.json").input_keys == ("k1",)


def test_a_bench_runs_rows_and_outcome_matrix_are_their_owners_only(tmp_path: Path, umask_022: None) -> None:
    # results.jsonl holds each backend's answer to each record, outcomes.jsonl each record's input and gold output.
    from genroute.bench.datasets import BenchRecord
    from genroute.bench.matrix_export import export_matrix
    from genroute.bench.runner import Outcome, ResultsLog

    out = tmp_path / "bench"
    log = ResultsLog(out)
    outcome = Outcome(backend="b", record_id="r1", ok=True, score=1.0, scorer="exact", answer="your card 4111")
    log.append(outcome)
    log.close()
    export_matrix([outcome], [BenchRecord(id="r1", input="my card is 4111", label="x")], out)
    assert _modes(tmp_path, ["bench", "bench/results.jsonl", "bench/outcomes.jsonl"]) == {
        "bench": oct(0o700), "bench/results.jsonl": oct(0o600), "bench/outcomes.jsonl": oct(0o600)}


def test_a_lora_adapter_is_its_owners_only(tmp_path: Path, umask_022: None) -> None:
    # The adapter is fitted to the training rows, which a model can give back word for word.
    pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")
    from genroute.tuning.gguf_adapter import write_lora_adapter

    rng = np.random.default_rng(0)
    pairs = {"model.layers.0.self_attn.q_proj": (rng.normal(size=(4, 640)), np.zeros((1024, 4)))}
    path = write_lora_adapter(tmp_path / "a.gguf", pairs, alpha=4.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # shared on purpose: a rerun keeps it so
    write_lora_adapter(path, pairs, alpha=4.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
