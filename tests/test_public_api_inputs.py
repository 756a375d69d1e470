"""Every public entry point given what a client we do not see might pass: wrong types, out-of-range values,
paths that do not exist or are directories. Each is a typed genroute error whose ``field`` names the argument
(``_check_error``: the field leads the message), raised before anything is written; never a bare
``TypeError``/``AttributeError`` from deep inside. (Hypothesis fuzzes ``generate``, ``feedback``, the JSONL
readers and ``compile`` in test_fuzz_inputs.py; these are the plain cases of the rest.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genroute import GenrouteError, UsageError
from genroute.bench import load_matrix, load_records
from genroute.outcomes import read_outcome_file

from .test_fuzz_config import _check_error


def _refused(call: Any, field: str) -> GenrouteError:
    """Run ``call``: it must raise a genroute error naming ``field``."""
    with pytest.raises(GenrouteError) as err:
        call()
    if isinstance(err.value, UsageError):
        _check_error(err.value)
    assert getattr(err.value, "field", None) == field, f"{err.value!r} named {err.value.field!r}, not {field!r}"
    return err.value


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "input": f"q{i}", "output": "a"}) + "\n" for i in range(3)))
    return path


# -- readers: paths and sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, 5, b"data.jsonl", "."])
def test_a_reader_names_a_path_that_is_not_a_file(path: Any) -> None:
    # None and 5 were TypeErrors from pathlib; a directory was said not to exist.
    for read, field in [(load_records, "data"), (load_matrix, "outcomes"), (read_outcome_file, "outcomes")]:
        error = _refused(lambda: read(path), field)
        if path == ".":
            assert "is a directory" in error.message


@pytest.mark.parametrize("limit", ["2", 0, -1, 1.5, True])
def test_a_dataset_limit_that_is_not_a_whole_number_is_named(dataset: Path, limit: Any) -> None:
    # "2" was a TypeError ('>=' not supported), 1.5 sampled, True read as 1.
    _refused(lambda: load_records(dataset, limit=limit), "limit")


@pytest.mark.parametrize("candidates", [5, "ab", [1, 2]])
def test_matrix_candidates_that_are_not_names_are_named(candidates: Any) -> None:
    rows = [{"input": f"q{i}", "outcomes": {"a": {"score": 1.0}, "b": {"score": 0.0}}} for i in range(3)]
    _refused(lambda: load_matrix(rows, candidates=candidates), "candidates")
