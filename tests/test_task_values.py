"""One rule for a task value (``genroute.jsonl.whole_text``) in every reader: a whole number (``"task": 3``) is its
digits, ``3.0`` or ``true`` is no task. The bench's dataset reader and tuning files read it so (tests/test_bench.py,
tests/test_local_tuning.py); an outcome matrix read ``3.0`` as task "3.0" (``str()``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genroute.bench.datasets import load_records
from genroute.bench.outcomes import read_outcome_records
from genroute.errors import UsageError
from genroute.outcomes import OutcomeRecord, read_outcome_file


def _write(path: Path, *rows: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("where", ["top", "metadata"])
def test_an_outcome_matrix_reads_a_whole_number_task_as_the_bench_does(tmp_path: Path, where: str) -> None:
    def row(task: Any) -> dict[str, Any]:
        given = {"task": task} if where == "top" else {"metadata": {"task": task}}
        return {"input": "q", "id": "q1", **given, "outcomes": {"b": {"score": 1}}}

    (bench,) = load_records(_write(tmp_path / "d.jsonl", {"input": "q", "output": "a", "task": 3}))
    (record,) = read_outcome_file(_write(tmp_path / "m.jsonl", row(3)))
    assert record.task == bench.task == "3" and record.metadata["task"] == "3"
    key = "task" if where == "top" else "metadata.task"
    for task, shown in ((3.0, "float (3.0)"), (True, "bool (true)")):
        with pytest.raises(UsageError, match="task"):  # as the bench refuses it
            load_records(_write(tmp_path / "d.jsonl", {"input": "q", "output": "a", "task": task}))
        with pytest.raises(UsageError) as refused:
            read_outcome_file(_write(tmp_path / "m.jsonl", row(task)))
        assert refused.value.message == (f"m.jsonl:1: not an outcome record ({key}: must be a string or a whole "
                                          f"number, got {shown})")
        with pytest.raises(UsageError) as refused:
            list(read_outcome_records([row(task)]))
        assert refused.value.message == (f"record 1 (counting from 1): {key}: must be a string or a whole number, "
                                         f"got {shown}")
    with pytest.raises(UsageError):
        OutcomeRecord.model_validate({"metadata": {"task": 3.0}})


def test_an_icl_backend_counts_a_stored_task_tag_by_the_same_rule() -> None:
    """ICL counted each stored example under ``str(tag)``: an example stored tagged 3.0 or true (before example files
    were checked) taught a task "3.0" or "True" that no request can name, as no other reader reads one."""
    from genroute.backends.icl import example_task, task_counts

    stored = [{"metadata": json.dumps({"task": tag})} for tag in (3, "3", 3.0, True)] + [{}]
    assert task_counts([example_task(meta) for meta in stored], ("faq",)) == {"faq": 1, "3": 2}
