"""The bench's record reader and keys it does not know: a dataset's own columns pass with one warning per file; a
misspelt scored key (``lable``, ``ouput``) is refused, naming the file, line and the key meant."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from genroute.bench import load_records
from genroute.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def _datasets() -> list[Path]:
    """The committed sample of the shared data (always here), the benchmark's task sets, and the full shared data
    (``../shared/data``, its README) when this checkout has it; not the passage corpora, which are no datasets."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import shared_data
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    found = [*(REPO / "tests" / "data" / "shared_sample").glob("*.jsonl"),
             *(REPO / "benchmarks" / "data").glob("*/e*.jsonl"), *shared_data.default_dir().glob("*.jsonl")]
    return sorted(path for path in found if not path.stem.endswith("_corpus"))


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(("key", "meant"), [("lable", "label"), ("ouput", "output"), ("Label", "label"),
                                            ("inpt", "input"), ("tsk", "task"), ("metdata", "metadata")])
def test_a_misspelt_key_is_refused_naming_file_line_and_the_key_meant(tmp_path: Path, key: str, meant: str) -> None:
    """Before, "lable" was read past: every record had no label, and the whole set scored against the output."""
    rows = [{"input": "q1", "output": "a", "label": "pos"}, {"input": "q2", "output": "b", "label": "neg"}]
    rows[1] = {**{k: v for k, v in rows[1].items() if k != meant}, key: "x"}
    path = _write(tmp_path / "d.jsonl", rows)
    with pytest.raises(UsageError) as err:
        load_records(path)
    assert err.value.field == "data"
    assert err.value.message.startswith(f"d.jsonl:2: {key}: unknown key, probably {meant!r} misspelt")


def test_extra_columns_load_with_one_warning_naming_the_keys_and_the_first_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"input": "q1", "output": "a"}, {"input": "q2", "output": "b", "source": "web", "idx": 7},
            {"input": "q3", "output": "c", "source": "web", "labels": ["x"], "label": "x"}]
    path = _write(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="genroute.bench.datasets"):
        records = load_records(path)
    assert [r.input for r in records] == ["q1", "q2", "q3"] and records[2].label == "x"
    warned = [r.getMessage() for r in caplog.records if r.name == "genroute.bench.datasets"]
    # "labels" beside a "label" is a column of its own, not a misspelling; "idx" is no scored key.
    assert warned == ["d.jsonl: ignored unknown keys ['idx', 'labels', 'source'] (first: 'idx' at line 2); "
                      "a record is {input, output, label?, task?, id?, metadata?, history?}"]


def test_a_benchmark_file_with_columns_of_its_own_is_no_tuning_file(tmp_path: Path) -> None:
    """As docs/benchmarks.md says: the bench reads past a dataset's own columns; `genroute tune` refuses them by
    line."""
    from genroute.tuning.data import load_examples

    rows = [{"input": "q1", "label": "pos"}, {"input": "q2", "label": "neg", "source": "web"}]
    path = _write(tmp_path / "d.jsonl", rows)
    assert [r.label for r in load_records(path)] == ["pos", "neg"]
    with pytest.raises(UsageError, match=r"unknown keys \['source'\]") as err:
        load_examples(path)
    assert err.value.field == f"{path}:2"
    moved = _write(tmp_path / "m.jsonl", [rows[0], {"input": "q2", "label": "neg", "metadata": {"source": "web"}}])
    assert [e.metadata for e in load_examples(moved)] == [{}, {"source": "web"}]


def test_a_file_of_known_keys_warns_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "d.jsonl", [{"input": "q", "output": "a", "label": "l", "id": "r1", "task": "t",
                                          "metadata": {"k": 1}}])
    with caplog.at_level(logging.WARNING, logger="genroute.bench.datasets"):
        assert [r.id for r in load_records(path)] == ["r1"]
    assert not [r for r in caplog.records if r.name == "genroute.bench.datasets"]


def test_the_shared_and_benchmark_datasets_load_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    datasets = _datasets()
    assert len(datasets) >= 14
    with caplog.at_level(logging.WARNING, logger="genroute.bench.datasets"):
        for path in datasets:
            assert load_records(path), path
    assert not [r.getMessage() for r in caplog.records if r.name == "genroute.bench.datasets"]


@pytest.mark.parametrize(("rows", "unnamed"), [
    ([{"input": "a", "label": "x"}, {"input": "b", "label": "y"}, {"input": "c", "label": "z", "id": "line-2"}], 2),
    ([{"input": "a", "label": "x", "metadata": {"id": "line-2"}}, {"input": "b", "label": "y"}], 2),
])
def test_an_id_clashing_with_a_line_number_says_records_without_an_id_are_numbered(
        tmp_path: Path, rows: list[dict[str, Any]], unnamed: int) -> None:
    # "duplicate record id 'line-2'" named an id the file never wrote twice (one record had none, and is line-2).
    with pytest.raises(UsageError) as err:
        load_records(_write(tmp_path / "d.jsonl", rows))
    message = err.value.message
    assert message.startswith(f"d.jsonl:{len(rows)}: duplicate record id 'line-2' (line ")
    assert f"line-N is the id a record without one is given, here the record on line {unnamed}" in message


def test_an_id_given_twice_names_both_lines(tmp_path: Path) -> None:
    rows = [{"input": "a", "label": "x", "id": "q"}, {"input": "b", "label": "y"},
            {"input": "c", "id": "q", "label": "z"}]
    with pytest.raises(UsageError) as err:
        load_records(_write(tmp_path / "d.jsonl", rows))
    assert err.value.message == "d.jsonl:3: duplicate record id 'q' (line 1 has it too)"


@pytest.mark.parametrize("blank", [" ", "\n\t"])
def test_a_record_with_a_blank_input_is_refused_naming_its_line(tmp_path: Path, blank: str) -> None:
    """A request refuses a blank input: such a record was read, then ended ``genroute bench`` mid-run with an
    exception group's traceback (and a partial results.jsonl), instead of being refused before any call."""
    path = _write(tmp_path / "d.jsonl", [{"input": "q1", "label": "a"}, {"input": blank, "label": "b"}])
    with pytest.raises(UsageError) as err:
        load_records(path)
    assert err.value.field == "data"
    assert err.value.message.startswith("d.jsonl:2: input: must not be blank")


@pytest.mark.parametrize(("extra", "named"), [({"task": "t\ud800"}, "task"),
                                              ({"metadata": {"note": "x\udc00"}}, "metadata"),
                                              ({"output": "half \ud83d"}, "output")])
def test_a_lone_surrogate_outside_the_input_is_refused_naming_line_and_key(
        tmp_path: Path, extra: dict[str, Any], named: str) -> None:
    """JSON's ``\\ud800`` escape reads as a lone surrogate. The input was refused so, but a task or metadata holding
    one was read, then its request refused mid-run (an exception group's traceback), and an output holding one ended
    the run, after every call, with a UnicodeEncodeError writing outcomes.jsonl."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"input": "q1", "label": "a"}) + "\n"
                    + json.dumps({"input": "q2", "label": "b", **extra}) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_records(path)
    assert err.value.field == "data"
    assert err.value.message.startswith(f"d.jsonl:2: {named}: ")
    assert "lone surrogate" in err.value.message


@pytest.mark.parametrize(("metadata", "what"), [({"vals": list(range(100_001))}, "more than 100,000 values"),
                                                ({"deep": json.loads('{"n":' * 70 + "1" + "}" * 70)}, "nested more than")])
def test_metadata_past_a_requests_bounds_is_refused_when_read(tmp_path: Path, metadata: dict[str, Any],
                                                              what: str) -> None:
    """A request's metadata is bounded (100,000 values, 64 levels): a record past that was read, then its request
    refused mid-run, an exception group's traceback ending ``genroute bench``. Its gold answers are not sent, so they
    are not held to it."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"input": "q1", "label": "a", "metadata": metadata}) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_records(path)
    assert err.value.field == "data"
    assert err.value.message.startswith("d.jsonl:1: metadata: too large: ") and what in err.value.message
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"input": "q1", "output": "a", "metadata": {"answers": list(range(100_001))}}) + "\n",
                    encoding="utf-8")
    assert len(load_records(gold)[0].metadata["answers"]) == 100_001


def test_a_blank_input_is_worded_alike_by_the_bench_tuning_and_icl_readers(tmp_path: Path) -> None:
    """It was worded three ways: ``d.jsonl:2: input: must not be blank (...)`` (bench), ``line 2: field 'input' is
    empty`` (``genroute tune``, no file named) and ``FILE:2: field 'input' is empty`` (``genroute ingest``)."""
    from genroute.knowledge.examples import _read_examples
    from genroute.tuning.data import load_examples

    path = _write(tmp_path / "d.jsonl", [{"input": "q1", "label": "a"}, {"input": "  ", "label": "b"}])
    with pytest.raises(UsageError) as bench:
        load_records(path)
    with pytest.raises(UsageError) as tune:
        load_examples(path)
    with pytest.raises(UsageError) as ingest:
        _read_examples(path)
    assert str(bench.value) == "data: d.jsonl:2: input: must not be blank"
    assert str(tune.value) == str(ingest.value) == f"{path}:2: input: must not be blank"


def test_records_given_in_code_are_numbered_from_1_by_compile_outcomes_and_bench_alike(tmp_path: Path) -> None:
    """compile_outcomes named a list's second record "record 2" and the bench's check "record 1"."""
    from genroute.bench import BenchRecord
    from genroute.bench.datasets import check_records
    from genroute.bench.offline import compile_outcomes

    good = {"input": "q", "outcomes": {"a": {"score": 1.0}, "b": {"score": 0.0}}}
    with pytest.raises(UsageError) as compiled:
        compile_outcomes([good, {"input": "q2", "outcomes": {"a": {"score": 2.0}}}], out_dir=tmp_path / "out")
    with pytest.raises(UsageError) as checked:
        check_records([BenchRecord(id="r", input="q"), {"input": "q2"}])
    assert compiled.value.message.startswith("record 2 (counting from 1): outcomes.a.score: ")
    assert checked.value.message == "record 2 (counting from 1) is a dict, not a BenchRecord"
    assert checked.value.field == "data.1"  # a path into the list, 0-based as pydantic's are
    assert not (tmp_path / "out").exists()
