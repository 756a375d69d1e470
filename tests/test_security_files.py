"""Files genroute writes: captured text stays its owner's, and a link planted where a file is about to be written
(a shared output directory) makes genroute overwrite nothing else."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from genroute.graduation import export_tuning_set
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side
from genroute.tuning.vertex import write_jsonl as write_tuning_rows


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file made without a mode of its own is readable by everyone."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _records(n: int = 12) -> list[OutcomeRecord]:
    return [OutcomeRecord(input=f"customer {i} wrote: my card number is 4111-{i:04d}", output="positive",
                          metadata={"id": f"r{i}", "task": "t"}, outcomes={"icl": Side(score=1.0)})
            for i in range(n)]


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def test_exports_of_captured_text_are_readable_by_their_owner_only(tmp_path: Path, umask_022: None) -> None:
    # The store is 0600 because it holds what users typed; its exports were 0644, readable by every local user.
    store = OutcomeStore(tmp_path / "store" / "outcomes.db")
    store.upsert_many_sync(_records())
    assert _mode(tmp_path / "store" / "outcomes.db") == 0o600
    assert store.export_jsonl(tmp_path / "out" / "outcomes.jsonl") == 12
    tuning = export_tuning_set(_records(), "t", tmp_path / "tuning", min_examples=5)
    rows = write_tuning_rows([{"contents": [{"role": "user", "parts": [{"text": "my card number"}]}]}],
                             tmp_path / "tune" / "rows.jsonl")
    for path in (tmp_path / "out" / "outcomes.jsonl", tuning.train_path, tuning.eval_path, rows):
        assert _mode(path) == 0o600, path
    store.close()


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    # The temporary file beside an export had a guessable name (.NAME.PID.tmp) and was opened following links: anyone
    # able to write in the output directory could point it at another of the user's files, which the export replaced.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("outcomes.jsonl", "rows.jsonl", "train.jsonl", "eval.jsonl"):
        (shared / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    store = OutcomeStore(tmp_path / "outcomes.db")
    store.upsert_many_sync(_records())
    store.export_jsonl(shared / "outcomes.jsonl")
    write_tuning_rows([{"contents": []}], shared / "rows.jsonl")
    export_tuning_set(_records(), "t", shared, min_examples=5)
    store.close()
    assert victim.read_text() == "precious\n"
    lines = (shared / "outcomes.jsonl").read_text().splitlines()
    assert [json.loads(line)["metadata"]["id"] for line in lines] == [f"r{i}" for i in range(12)]
    assert not (shared / "rows.jsonl").is_symlink() and (shared / "rows.jsonl").read_text() == '{"contents": []}\n'


def test_a_learned_router_model_is_saved_past_a_planted_link(tmp_path: Path) -> None:
    import numpy as np

    from genroute.policies.router_models import RouterModel, fit

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / f".m.npz.{os.getpid()}.tmp").symlink_to(victim)
    x = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4, dtype=np.float32)
    scores = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    path = fit(x, scores, ["a", "b"], method="knn", k=2, cost=[0.01, 0.001]).save(tmp_path / "m.npz")
    assert victim.read_text() == "precious\n"
    assert RouterModel.load(path).backends == ["a", "b"]


def test_a_bench_rewriting_its_results_follows_no_planted_link(tmp_path: Path, umask_022: None) -> None:
    # A retried failure makes the results file be rewritten through results.jsonl.tmp, a fixed name: a link planted
    # there in a shared output directory made the rewrite land in another of the user's files.
    from genroute.bench.runner import Outcome, ResultsLog

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.jsonl.tmp").symlink_to(victim)
    log = ResultsLog(out)
    log.append(Outcome(backend="b", record_id="r1", ok=False, error_type="BackendRejected", scorer="exact"))
    log.append(Outcome(backend="b", record_id="r1", ok=True, score=1.0, scorer="exact"), replace=True)
    log.close()
    assert victim.read_text() == "precious\n"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["record_id"], r["ok"]) for r in rows] == [("r1", True)]
    assert _mode(out / "results.jsonl") == 0o644  # the mode it had (the umask's), not the temporary file's 0600
