"""One rule for a number of an outcome (``genroute.bounds.Number``), in a ``results.jsonl`` row (``load_outcomes``), an
outcome matrix or store file (``read_outcome_records``, ``read_outcome_file``) and ``Router.feedback``
(tests/test_outcomes_feedback.py): a whole float (``12.0``, which pandas writes for an int column holding a NaN) or a
numpy scalar is the number it is; text (``"0.5"``), a bool (numpy's too) and a token count with a fraction are refused,
naming the field. Before, a results row refused ``12.0`` tokens that a matrix took, a matrix named ``12.5`` tokens in
pydantic's words and ``np.True_`` as ``np.True_``, and feedback took ``"0.5"`` and ``np.True_`` (as 1.0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genroute.bench import load_outcomes
from genroute.bench.outcomes import read_outcome_records
from genroute.bounds import as_number
from genroute.errors import UsageError
from genroute.outcomes import read_outcome_file


@pytest.mark.parametrize(("given", "read"), [
    (12.0, 12), (np.float64(12.0), 12), (np.int64(12), 12), (np.float32(0.5), 0.5), (0.5, 0.5), (3, 3),
    (np.True_, True), (True, True), ("0.5", "0.5"), (None, None), (float("nan"), "nan"),
])
def test_as_number_reads_whole_floats_and_numpy_scalars_as_python_numbers(given: Any, read: Any) -> None:
    got = as_number(given)
    assert (str(got) if read == "nan" else got) == read and type(got) is type(read if read != "nan" else 0.0)


def test_a_results_row_with_whole_float_token_counts_is_read(tmp_path: Path) -> None:
    """A results.jsonl row rewritten through pandas (tokens 12.0) was refused: "Input should be a valid integer"."""
    row = {"backend": "b", "record_id": "r1", "ok": True, "scorer": "exact", "score": 1, "latency_s": 2,
           "input_tokens": 12.0, "output_tokens": 3.0, "cost_usd": 0}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    (outcome,) = load_outcomes(tmp_path)
    assert (outcome.input_tokens, outcome.output_tokens, outcome.score, outcome.cost_usd) == (12, 3, 1.0, 0.0)
    assert type(outcome.input_tokens) is int and type(outcome.score) is float
    row["input_tokens"] = 12.5
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UsageError) as refused:
        load_outcomes(tmp_path)
    assert refused.value.message.startswith(f"{tmp_path / 'results.jsonl'}:1: not a results row (input_tokens: ")


def test_an_outcome_matrix_of_numpy_numbers_is_read_as_python_numbers(tmp_path: Path) -> None:
    side = {"score": np.float32(1.0), "cost_usd": np.float64(0.25), "latency_s": np.float16(0.5),
            "input_tokens": np.int64(12), "output_tokens": np.float64(3.0), "agreement": np.int8(1)}
    ((_, record),) = read_outcome_records([{"input": "q", "metadata": {"id": "q1"}, "outcomes": {"b": side}}])
    got = record.outcomes["b"]
    assert (got.score, got.cost_usd, got.latency_s, got.input_tokens, got.output_tokens, got.agreement) == (
        1.0, 0.25, 0.5, 12, 3, 1.0)
    assert json.loads(json.dumps(record.line()))["outcomes"]["b"]["input_tokens"] == 12  # a plain int, JSON-ready


@pytest.mark.parametrize(("side", "says"), [
    ({"score": "0.5"}, 'outcomes.b.score: must be a number between 0 and 1, not "0.5"'),
    ({"score": np.True_}, "outcomes.b.score: must be a number between 0 and 1, not true"),
    ({"score": 1.0, "cost_usd": True}, "outcomes.b.cost_usd: must be a number (USD), not true"),
    ({"score": 1.0, "input_tokens": 12.5}, "outcomes.b.input_tokens: must be a whole number, not 12.5"),
    ({"score": 1.0, "output_tokens": np.float64(2.5)}, "outcomes.b.output_tokens: must be a whole number, not 2.5"),
])
def test_an_outcome_that_is_no_number_is_refused_naming_it(side: dict[str, Any], says: str) -> None:
    """12.5 tokens read "Input should be a valid integer, got a number with a fractional part", np.True_ "not
    np.True_"."""
    with pytest.raises(UsageError) as refused:
        list(read_outcome_records([{"input": "q", "metadata": {"id": "q1"}, "outcomes": {"b": side}}]))
    assert (refused.value.field, refused.value.message) == ("outcomes", f"record 1 (counting from 1): {says}")


def test_an_outcome_file_reads_whole_float_tokens_and_names_fractional_ones(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    good = {"input": "q1", "metadata": {"id": "q1"}, "outcomes": {"b": {"score": 1, "input_tokens": 12.0}}}
    path.write_text(json.dumps(good) + "\n")
    (record,) = read_outcome_file(path)
    assert record.outcomes["b"].input_tokens == 12 and record.outcomes["b"].score == 1.0
    bad = {"input": "q2", "metadata": {"id": "q2"}, "outcomes": {"b": {"score": 1, "input_tokens": 12.5}}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UsageError) as refused:
        read_outcome_file(path)
    assert refused.value.message == "m.jsonl:2: outcomes.b.input_tokens: must be a whole number, not 12.5"


@pytest.mark.parametrize("score", [1.5, -0.25])
def test_a_results_row_scored_outside_0_1_is_refused_as_an_outcome_side_is(tmp_path: Path, score: float) -> None:
    """A results.jsonl row scored 1.5 was read (and averaged into its target's mean and CI), while an outcome matrix
    refuses that score and no scorer gives one (``Scorer.checked`` refuses it)."""
    row = {"backend": "b", "record_id": "r1", "ok": True, "scorer": "exact", "score": score}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UsageError) as refused:
        load_outcomes(tmp_path)
    assert refused.value.message.startswith(f"{tmp_path / 'results.jsonl'}:1: not a results row (score: ")
