"""Every public entry point given what a client we do not see might pass: wrong types, out-of-range values,
paths that do not exist or are directories. Each is a typed genroute error whose ``field`` names the argument
(``_check_error``: the field leads the message), raised before anything is written; never a bare
``TypeError``/``AttributeError`` from deep inside. (Hypothesis fuzzes ``generate``, ``feedback``, the JSONL
readers and ``compile`` in test_fuzz_inputs.py; these are the plain cases of the rest.)
"""

from __future__ import annotations

import json
import os
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
    from genroute.bench import load_pricing

    _refused(lambda: load_pricing(path), "prices")


@pytest.mark.parametrize("limit", ["2", 0, -1, 1.5, True])
def test_a_dataset_limit_that_is_not_a_whole_number_is_named(dataset: Path, limit: Any) -> None:
    # "2" was a TypeError ('>=' not supported), 1.5 sampled, True read as 1.
    _refused(lambda: load_records(dataset, limit=limit), "limit")


@pytest.mark.parametrize("candidates", [5, "ab", [1, 2]])
def test_matrix_candidates_that_are_not_names_are_named(candidates: Any) -> None:
    rows = [{"input": f"q{i}", "outcomes": {"a": {"score": 1.0}, "b": {"score": 0.0}}} for i in range(3)]
    _refused(lambda: load_matrix(rows, candidates=candidates), "candidates")


# -- compile_outcomes: every argument checked before the embeddings are cached or a report file is written ----


def _matrix(n: int = 30) -> list[dict[str, Any]]:
    return [{"input": f"question {i}", "metadata": {"id": f"q{i}"},
             "outcomes": {"a": {"score": 1.0, "cost_usd": 0.01}, "b": {"score": float(i % 2), "cost_usd": 0.001}}}
            for i in range(n)]


@pytest.mark.parametrize(("options", "field"), [
    ({"title": 5}, "title"),                          # an AttributeError after stats.json, report.md... were written
    ({"pricing": {"a": 1.0}}, "pricing"),              # an AttributeError ('dict' has no attribute 'prices')
    ({"specs": [{}]}, "specs.0.method"),               # a KeyError after the embeddings were cached in out_dir
    ({"specs": [{"method": "knnn"}]}, "specs.0.method"),  # refused only after embedding, as "no estimator applies"
    ({"specs": []}, "specs"),
    ({"cache_dir": "FILE"}, "cache_dir"),              # a FileExistsError once out_dir was made
    ({"out_dir": None}, "out_dir"),                    # a TypeError from pathlib
])
def test_compile_outcomes_refuses_a_bad_argument_by_name_and_writes_nothing(tmp_path: Path, options: dict[str, Any],
                                                                            field: str) -> None:
    from genroute.bench import compile_outcomes

    (tmp_path / "file").write_text("x")
    options = {k: str(tmp_path / "file") if v == "FILE" else v for k, v in options.items()}
    out = tmp_path / "out"
    kwargs: dict[str, Any] = {"out_dir": out, "min_n": 1, "embedder": _NoEmbedder(), **options}
    _refused(lambda: compile_outcomes(_matrix(), **kwargs), field)
    assert not out.exists()


class _NoEmbedder:
    """An embedder a refused compile must never reach."""

    model = "none"
    dimension = 4

    def embed(self, texts: Any) -> Any:
        raise AssertionError("embedded before the arguments were checked")


def test_write_report_names_an_out_dir_that_is_a_file(tmp_path: Path) -> None:
    from genroute.bench import write_report

    (tmp_path / "report").write_text("x")
    _refused(lambda: write_report(tmp_path / "report", []), "out_dir")  # was a FileExistsError


# -- the outcome store ------------------------------------------------------------------------------------------


def test_the_outcome_store_names_what_is_not_a_record_or_a_path(tmp_path: Path) -> None:
    from genroute.outcomes import OutcomeRecord, OutcomeStore

    for path in (None, 5):
        _refused(lambda: OutcomeStore(path), "outcomes.path")  # was a TypeError from pathlib
    store = OutcomeStore(tmp_path / "outcomes.db")
    record = OutcomeRecord.model_validate({"input": "q", "metadata": {"id": "r1"}, "outcomes": {"a": {"score": 1.0}}})
    # Each was an AttributeError ('dict' object has no attribute 'id'), or a TypeError.
    for wrong in (5, {"input": "q", "metadata": {"id": "r2"}}, "r2"):
        _refused(lambda: store.upsert_sync(wrong), "record")
    _refused(lambda: store.upsert_many_sync(5), "records")
    _refused(lambda: store.upsert_many_sync([record, {"metadata": {"id": "r3"}}]), "records.1")
    assert store.records_sync() == []  # the good record before the bad one was not written either
    store.upsert_sync(record)
    (tmp_path / "file").write_text("x")
    for target in (tmp_path, tmp_path / "file" / "out.jsonl", None):  # IsADirectoryError, NotADirectoryError...
        _refused(lambda: store.export_jsonl(target), "path")
    assert store.export_jsonl(tmp_path / "out" / "outcomes.jsonl") == 1


# -- ingestion --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "field"), [
    ({"on_batch": 5}, "on_batch"),            # a TypeError ('int' object is not callable) after the first batch
    ({"chunk_tokens": "200"}, "chunk_tokens"),  # a TypeError ('>' not supported)
    ({"overlap": 4.5}, "overlap"),
    ({"text_field": 5}, "text_field"),
    ({"paths": [None]}, "paths"),              # a TypeError from pathlib
    ({"paths": ["DOC", 5]}, "paths"),
    ({"paths": 5}, "paths"),                   # a TypeError ('int' object is not iterable)
    ({"collection": ["docs"]}, "collection"),  # a TypeError (unhashable type: 'list')
    ({"store": None}, "store"),                # an AttributeError ('NoneType' has no attribute 'check_writable')
    ({"store": "chroma"}, "store"),
])
def test_ingest_refuses_a_bad_argument_by_name_and_makes_no_collection(tmp_path: Path, options: dict[str, Any],
                                                                       field: str) -> None:
    import asyncio

    from genroute.knowledge import aingest, build_store, ingest

    doc = tmp_path / "doc.md"
    doc.write_text("# Routing\n\n" + "Each request goes to the technique that should answer it. " * 20)
    store = build_store({"path": str(tmp_path / "chroma")}, engines={})
    kwargs: dict[str, Any] = {"store": store, "paths": [doc], "collection": "docs", **options}
    if isinstance(kwargs["paths"], list):
        kwargs["paths"] = [doc if p == "DOC" else p for p in kwargs["paths"]]
    sync = _refused(lambda: ingest(**kwargs), field)
    async_ = _refused(lambda: asyncio.run(aingest(**kwargs)), field)
    assert (type(sync), sync.message) == (type(async_), async_.message)
    assert asyncio.run(store.collections()) == []


def test_load_examples_and_ingest_paths_name_a_bad_store_callback_or_kind(tmp_path: Path) -> None:
    import asyncio

    from genroute.knowledge import aload_examples, build_store, ingest_paths

    examples = tmp_path / "examples.jsonl"
    examples.write_text(json.dumps({"input": "great film", "output": "positive"}) + "\n")
    store = build_store({"path": str(tmp_path / "chroma")}, engines={})
    _refused(lambda: asyncio.run(aload_examples(None, [examples], collection="examples")), "store")
    _refused(lambda: asyncio.run(aload_examples(store, [examples], collection="examples", on_batch="print")),
             "on_batch")
    # A collection that is not a name was a TypeError (unhashable type: 'list'), a number of paths another.
    _refused(lambda: asyncio.run(aload_examples(store, [examples], collection=["examples"])), "collection")
    _refused(lambda: asyncio.run(aload_examples(store, 5, collection="examples")), "paths")
    _refused(lambda: ingest_paths(5, "examples", store_config={"path": str(tmp_path / "chroma")}, kind="examples",
                                  progress=False), "paths")
    # kind="example" (or any other word) was ingested as documents.
    _refused(lambda: ingest_paths([str(examples)], "examples", store_config={"path": str(tmp_path / "chroma")},
                                  kind="example", progress=False), "kind")
    assert asyncio.run(store.collections()) == []


def test_a_knowledge_store_names_a_bad_k_filter_or_batch(tmp_path: Path) -> None:
    import asyncio

    from genroute.knowledge import build_store

    store, M = build_store({"path": str(tmp_path / "chroma")}, engines={}), {"source": "test"}
    asyncio.run(store.upsert("docs", ["a", "b"], ["routing requests", "baking bread"], [M, M], kind="documents"))
    for k in (0, -1, "3", 2.0, True):  # 0 and -1 were Chroma's errors naming no field; "3" named `where`
        _refused(lambda: asyncio.run(store.query("docs", "bread", kind="documents", k=k)), "k")
    _refused(lambda: asyncio.run(store.query("docs", "bread", kind="documents", k=1, where=5)), "where")  # TypeError
    # A TypeError for ids=5; unequal lengths were Chroma's error naming no field.
    for args, field in [((5, ["t"], [M]), "ids"), ((["c"], ["t", "u"], [M]), "texts"),
                        ((["c"], ["t"], [M, M]), "metadatas"), (([3], ["t"], [M]), "ids"),
                        ((["c"], [None], [M]), "texts")]:
        _refused(lambda: asyncio.run(store.upsert("docs", *args, kind="documents")), field)
    _refused(lambda: asyncio.run(store.delete("docs", 5, kind="documents")), "ids")
    # A kind that is none was written into a new collection's metadata, marking it as holding that kind.
    _refused(lambda: asyncio.run(store.upsert("notes", ["n"], ["t"], [M], kind="document")), "kind")
    assert asyncio.run(store.collections()) == ["docs"]
    import numpy as np

    vectors = np.asarray(store.embedder.embed(["sourdough"]))  # an array of embeddings is taken as a list is
    asyncio.run(store.upsert("docs", ["c"], ["sourdough"], [M], kind="documents", embeddings=vectors))
    assert [h.id for h in asyncio.run(store.query("docs", "bread", kind="documents", k=3))][-1] == "a"


# -- bench --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "field"), [
    ({"backends": None}, "backends"),          # a TypeError ('NoneType' object is not iterable)
    ({"policy": "false"}, "policy"),           # a pydantic ValidationError from the run manifest
    ({"compile": "no"}, "compile"),            # read as true: policies compiled
    ({"stream": "false"}, "stream"),
    ({"retry_failed": 1}, "retry_failed"),
    ({"force_verdict": "yes"}, "force_verdict"),
    ({"scorer": 5}, "scorer"),                 # an AttributeError ('int' object has no attribute 'startswith')
    ({"command": ["genroute", "bench"]}, "command"),  # a pydantic ValidationError once out_dir was made
    ({"advisor": {"monthly_requests": 10}}, "advisor"),
    ({"task": 5}, "task"),                     # named as line 1's error, under `data`
])
def test_bench_refuses_a_bad_option_by_name_before_anything_is_sent_or_written(gemini_server: Any, tmp_path: Path,
                                                                              options: dict[str, Any],
                                                                              field: str) -> None:
    import asyncio

    from genroute import Router
    from genroute.bench import abench, bench

    from .conftest import gemini_config

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "r1", "input": "hi", "output": "echo: hi"}) + "\n")
    kwargs: dict[str, Any] = {"backends": ["chat"], "progress": False, "out_dir": tmp_path / "out", **options}
    with Router.from_config(gemini_config(gemini_server)) as router:
        sync = _refused(lambda: bench(router, data, **kwargs), field)
        async_ = _refused(lambda: asyncio.run(abench(router, data, **kwargs)), field)
    assert sync.message == async_.message
    assert not gemini_server.requests and not (tmp_path / "out").exists()


def test_run_bench_names_a_scorer_given_by_name(gemini_server: Any, tmp_path: Path) -> None:
    # It was refused naming "scorer.0", a list index in an argument that is no list.
    import asyncio

    from genroute import Router
    from genroute.bench import arun_bench
    from genroute.bench.datasets import BenchRecord

    from .conftest import gemini_config

    with Router.from_config(gemini_config(gemini_server)) as router:
        error = _refused(lambda: asyncio.run(arun_bench(router, [BenchRecord(id="r1", input="hi", output="hi")],
                                                        ["chat"], "exact")), "scorer")  # type: ignore[arg-type]
    assert "resolve_scorer" in error.message and not gemini_server.requests


def test_bench_refuses_a_backend_named_twice(gemini_server: Any, tmp_path: Path, capsys: Any) -> None:
    # `--backends chat,chat` ran every record twice and reported chat twice, as two rows of one backend.
    import yaml

    from genroute.cli import main

    from .conftest import gemini_config

    config, data = tmp_path / "app.yaml", tmp_path / "data.jsonl"
    config.write_text(yaml.safe_dump(gemini_config(gemini_server)))
    data.write_text(json.dumps({"id": "r1", "input": "hi", "output": "echo: hi"}) + "\n")
    out = tmp_path / "out"
    assert main(["bench", str(data), "--config", str(config), "--backends", "chat,chat", "--out", str(out)]) == 2
    assert "backends: names a backend twice (chat)" in capsys.readouterr().err
    assert not gemini_server.requests and not out.exists()


def test_bench_names_a_router_that_is_not_one(tmp_path: Path) -> None:
    import asyncio

    from genroute.bench import abench, bench

    for router in (None, "genroute.yaml"):  # an AttributeError ('NoneType' object has no attribute '_portal')
        _refused(lambda: bench(router, [], backends=["chat"], out_dir=tmp_path / "out"), "router")
        _refused(lambda: asyncio.run(abench(router, [], backends=["chat"], out_dir=tmp_path / "out")), "router")
    assert not (tmp_path / "out").exists()


# -- graduation ---------------------------------------------------------------------------------------------


def _captured(n: int = 30) -> list[Any]:
    from genroute.outcomes import OutcomeRecord

    return [OutcomeRecord.model_validate({"input": f"q{i}", "output": "a", "task": "t", "metadata": {"id": f"r{i}"},
                                          "outcomes": {"a": {"score": 1.0}, "b": {"score": 0.0}}}) for i in range(n)]


@pytest.mark.parametrize(("call", "field"), [
    (lambda r: {"records": 5}, "records"),                    # a TypeError ('int' object is not iterable)
    (lambda r: {"records": [*r, {"input": "q"}]}, "records.30"),  # an AttributeError ('dict' has no 'task')
    (lambda r: {"task": 5}, "task"),                          # a pydantic ValidationError from the Promotion
    (lambda r: {"incumbent": None}, "incumbent"),
])
def test_decide_promotion_names_what_is_not_records_or_names(call: Any, field: str) -> None:
    from genroute.graduation import decide_promotion

    records = _captured()
    kwargs: dict[str, Any] = {"records": records, "task": "t", "incumbent": "b", "challenger": "a", **call(records)}
    _refused(lambda: decide_promotion(kwargs.pop("records"), kwargs.pop("task"), **kwargs), field)


@pytest.mark.parametrize(("options", "field"), [
    ({"records": [{"input": "q"}]}, "records.0"),  # an AttributeError
    ({"task": None}, "task"),
    ({"eval_share": "0.2"}, "eval_share"),         # a TypeError ('<=' not supported)
    ({"max_chars": 0}, "max_chars"),               # every example dropped, blamed on the task
    ({"out_dir": "FILE"}, "out_dir"),              # a FileExistsError once every record was read
    ({"out_dir": None}, "out_dir"),                # a TypeError from pathlib
])
def test_export_tuning_set_names_a_bad_argument_and_writes_nothing(tmp_path: Path, options: dict[str, Any],
                                                                  field: str) -> None:
    from genroute.graduation import export_tuning_set

    (tmp_path / "file").write_text("x")
    kwargs: dict[str, Any] = {"records": _captured(), "task": "t", "out_dir": tmp_path / "set", "min_examples": 1,
                              **options}
    if kwargs["out_dir"] == "FILE":
        kwargs["out_dir"] = tmp_path / "file"
    _refused(lambda: export_tuning_set(kwargs.pop("records"), kwargs.pop("task"), kwargs.pop("out_dir"), **kwargs),
             field)
    assert not (tmp_path / "set").exists()


def test_the_graduation_steps_name_a_router_that_is_not_one(tmp_path: Path) -> None:
    import asyncio

    from genroute.graduation import adecide, agraduate, register_local

    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"gguf")
    for router in (None, "genroute.yaml"):  # each an AttributeError from deep inside
        _refused(lambda: register_local(router, "tuned", adapter, task="t", mode="shadow", share=1.0), "router")
        _refused(lambda: asyncio.run(adecide(router, "t", challenger="tuned")), "router")
        _refused(lambda: asyncio.run(agraduate(router, "t", out_dir=tmp_path / "out")), "router")
    assert not (tmp_path / "out").exists()


# -- the tools decorator ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", [5, None, "lookup", len])
def test_side_effect_free_names_what_it_cannot_mark(wrong: Any) -> None:
    from genroute import side_effect_free

    _refused(lambda: side_effect_free(wrong), "tool")  # each an AttributeError (len: no attribute may be set)


# -- statistics -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scores", [["0.8"], 5, "0110", [1.0, None]])
def test_statistics_name_scores_that_are_not_numbers(scores: Any) -> None:
    from genroute.bench import bootstrap_ci, compare_paired, mcnemar_exact, paired_bootstrap_ci, quality_ci

    # ["0.8"] was a ValueError from numpy, 5 a TypeError (len), "0110" a ValueError, None a TypeError.
    for call in (lambda: bootstrap_ci(scores), lambda: quality_ci(scores),
                 lambda: paired_bootstrap_ci(scores, [1.0]), lambda: compare_paired([1.0], scores),
                 lambda: mcnemar_exact(scores, [1.0])):
        _refused(call, "scores")


@pytest.mark.parametrize("ids", [5, "abc", [1, 2], None])
def test_split_ids_names_ids_that_are_not_a_list_of_ids(ids: Any) -> None:
    from genroute.bench import split_ids

    _refused(lambda: split_ids(ids), "ids")  # 5 was a TypeError; "abc" was split into letters


def test_pricing_and_redact_secrets_name_what_is_of_the_wrong_kind() -> None:
    from genroute import ConfigError, Pricing
    from genroute.outcomes import redact_secrets

    with pytest.raises(ConfigError) as err:  # an AttributeError ('int' object has no attribute 'items')
        Pricing(5)  # type: ignore[arg-type]
    assert err.value.field == "pricing"
    for text in (5, None, b"key"):  # a TypeError from the regular expressions
        _refused(lambda: redact_secrets(text), "text")
    for extra in (5, "sk-secret"):  # 5 a TypeError; a string was read letter by letter, each letter redacted
        assert "sk-secret" not in str(_refused(lambda: redact_secrets("my key is sk-secret", extra), "extra"))
    assert "sk-secret" not in redact_secrets("my key is sk-secret", ("sk-secret",))


# -- any value for an option: answered, or refused naming it ----------------------------------------------------


def test_options_of_any_kind_are_taken_or_refused_by_name(tmp_path: Path) -> None:
    """Hypothesis gives each option of the cheap entry points (no model calls) any value: each call is answered or
    refused with a genroute error naming that option; nothing else escapes, and a refused export writes nothing."""
    import asyncio

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from genroute.bench import bootstrap_ci, split_ids
    from genroute.graduation import decide_promotion, export_tuning_set
    from genroute.knowledge import build_store
    from genroute.outcomes import OutcomeStore

    from .test_fuzz_config import JUNK, SETTINGS

    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"r{i}", "input": f"q{i}", "output": "a"}) + "\n" for i in range(3)))
    records, store = _captured(), OutcomeStore(tmp_path / "o.db")
    knowledge = build_store({"path": str(tmp_path / "chroma")}, engines={})
    asyncio.run(knowledge.upsert("docs", ["a"], ["routing"], [{"source": "t"}], kind="documents"))
    calls: dict[str, Any] = {
        "limit": lambda v: load_records(dataset, limit=v), "seed": lambda v: load_records(dataset, seed=v),
        "task": lambda v: load_records(dataset, task=v), "holdout": lambda v: split_ids(["a", "b"], holdout=v),
        "n_boot": lambda v: bootstrap_ci([1.0, 0.0], n_boot=v), "level": lambda v: bootstrap_ci([1.0, 0.0], level=v),
        "captured": lambda v: store.records_sync(captured=v), "since": lambda v: store.records_sync(since=v),
        "k": lambda v: asyncio.run(knowledge.query("docs", "x", kind="documents", k=v)),
        "where": lambda v: asyncio.run(knowledge.query("docs", "x", kind="documents", k=1, where=v)),
        "margin": lambda v: decide_promotion(records, "t", incumbent="b", challenger="a", margin=v),
        "min_n": lambda v: decide_promotion(records, "t", incumbent="b", challenger="a", min_n=v),
        "mode": lambda v: decide_promotion(records, "t", incumbent="b", challenger="a", mode=v),
        "eval_share": lambda v: export_tuning_set(records, "t", tmp_path / "set", eval_share=v, min_examples=1),
        "min_examples": lambda v: export_tuning_set(records, "t", tmp_path / "set", min_examples=v),
        "max_chars": lambda v: export_tuning_set(records, "t", tmp_path / "set", max_chars=v, min_examples=1),
    }
    # Refusals the data explain, not the option's kind: more examples asked for, or kept short enough, than there are.
    because_of_data = {"min_examples": "task", "max_chars": "task"}
    seen = {"taken": 0, "refused": 0}

    @settings(SETTINGS, max_examples=int(os.environ.get("GENROUTE_FUZZ_EXAMPLES", "200")))
    @given(option=st.sampled_from(sorted(calls)), value=JUNK)
    def check(option: str, value: Any) -> None:
        try:
            calls[option](value)
        except GenrouteError as exc:
            if isinstance(exc, UsageError):
                _check_error(exc)
            named = getattr(exc, "field", "") or ""
            assert named in (option, because_of_data.get(option)) or named.endswith(f".{option}"), \
                f"{option}={value!r}: {exc!r} names {named!r}"
            assert option not in ("eval_share", "min_examples", "max_chars") or not (tmp_path / "set").exists()
            seen["refused"] += 1
            return
        seen["taken"] += 1
        if (tmp_path / "set").exists():
            import shutil

            shutil.rmtree(tmp_path / "set")

    check()
    assert seen["taken"] and seen["refused"], seen


# -- genroute.testing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "field"), [
    ({"port": -1}, "port"),              # an OverflowError from bind()
    ({"port": "8080"}, "port"),          # a TypeError
    ({"host": 5}, "host"),
    ({"embedding_dim": 0}, "embedding_dim"),  # every embedding answered with an empty vector
    ({"api_key": 5}, "api_key"),
])
def test_the_test_server_names_a_bad_setting(options: dict[str, Any], field: str) -> None:
    from genroute.testing import GeminiTestServer, OtlpReceiver

    _refused(lambda: GeminiTestServer(**options), field)
    if field in ("host", "port"):
        _refused(lambda: OtlpReceiver(**options), field)


def test_the_test_server_refuses_a_bad_reply_or_fault_when_it_is_queued(gemini_server: Any) -> None:
    from genroute.testing import Fault, Reply

    # Each was queued, then failed inside the server's thread: a 500 or a dropped connection the client got.
    for queue, field in [(lambda: gemini_server.reply_text(5), "text"),
                         (lambda: gemini_server.reply_text("hi", usage=(5,)), "usage"),
                         (lambda: gemini_server.reply_text("hi", usage=(-1, 2)), "usage"),
                         (lambda: gemini_server.reply_text("hi", chunks=0), "chunks"),
                         (lambda: gemini_server.reply_text("hi", times=0), "times"),
                         (lambda: gemini_server.reply("hi"), "reply"),
                         (lambda: gemini_server.fault(429), "fault"),
                         (lambda: gemini_server.reply_json({}, path="/x", status=99), "status"),
                         (lambda: gemini_server.reply_json({}, status=503), "status"),  # dropped: sent as a 200
                         (lambda: gemini_server.reply_json({}, path="(", times=1), "path"),
                         (lambda: gemini_server.route("GET", "/x", None), "handler"),
                         (lambda: Fault.status(99), "code"), (lambda: Fault.delay(-1.0), "seconds"),
                         (lambda: Fault.delay(float("nan")), "seconds"),
                         (lambda: Fault.status(429, retry_after=-1), "retry_after"),
                         (lambda: Fault.cut_stream(after_chunks=-1), "after_chunks"),
                         (lambda: Reply(parts=("hi",)), "parts")]:
        _refused(queue, field)
    assert gemini_server.next_reply  # still serving: the default reply answers


def test_register_tuned_backend_names_a_config_path_that_is_not_one(tmp_path: Path) -> None:
    from genroute.tuning.config_file import register_tuned_backend
    from genroute.tuning.local_lora import register_tuned_backend as register_local_adapter

    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"gguf")
    for path in (None, 5):  # a TypeError from pathlib
        _refused(lambda: register_tuned_backend(path, "tuned", engine="gemini", model="m",
                                                base_model="gemini-2.5-flash"), "config")
        _refused(lambda: register_local_adapter(path, "tuned", adapter), "config")


def test_the_bench_reporting_steps_name_what_is_not_outcomes_records_or_summaries(tmp_path: Path) -> None:
    import asyncio

    from genroute.bench import (advise, arun_bench, compile_policy, load_outcomes, markdown_table, report_outcomes,
                                resolve_scorer, stats_from, summarize)

    # Each was a TypeError ('int' object is not iterable) or an AttributeError ('dict' has no attribute 'backend').
    for wrong in (5, [{"backend": "chat", "record_id": "r1", "ok": True, "scorer": "exact"}]):
        field = "outcomes" if wrong == 5 else "outcomes.0"
        _refused(lambda: summarize(wrong), field)
        _refused(lambda: stats_from(wrong), field)
        _refused(lambda: compile_policy(wrong, [], tmp_path / "compiled"), field)
        _refused(lambda: report_outcomes(wrong, [], tmp_path / "report", kinds={}), field)
        _refused(lambda: advise([], outcomes=wrong), field)
    _refused(lambda: markdown_table([{"backend": "chat"}]), "summaries.0")
    _refused(lambda: advise(5), "summaries")
    _refused(lambda: compile_policy([], ["r1"], tmp_path / "compiled"), "records.0")
    _refused(lambda: load_outcomes(None), "out")
    _refused(lambda: asyncio.run(arun_bench(None, [], ["chat"], resolve_scorer("exact"))), "router")
    assert not (tmp_path / "compiled").exists() and not (tmp_path / "report").exists()


def test_example_selection_and_the_local_embedder_name_a_bad_argument(tmp_path: Path) -> None:
    import asyncio

    from genroute.knowledge import ExampleStore, aload_examples, build_store
    from genroute.knowledge.embedders import LocalEmbedder

    store = build_store({"path": str(tmp_path / "chroma")}, engines={})
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"input": f"question {i}", "output": "a"}) + "\n" for i in range(5)))
    asyncio.run(aload_examples(store, [examples], collection="examples"))
    pool = ExampleStore(store, "examples")
    for kwargs, field in [({"strategy": "knn", "k": "2"}, "k"),      # a TypeError ('<=' not supported)
                          ({"strategy": "fixed", "k": 2.5}, "k"),     # a TypeError (slice indices)
                          ({"strategy": "mmr", "k": 2, "mmr_lambda": 5}, "mmr_lambda"),  # taken
                          ({"strategy": "mmr", "k": 2, "mmr_lambda": float("nan")}, "mmr_lambda")]:
        _refused(lambda: asyncio.run(pool.select("question 1", **kwargs)), field)
    _refused(lambda: asyncio.run(pool.select(5, strategy="knn", k=1)), "text")  # an AttributeError (casefold)
    _refused(lambda: ExampleStore(None, "examples"), "store")  # an AttributeError at the first read
    assert len(asyncio.run(pool.select("question 1", strategy="knn", k=2))) == 2
    from genroute import ConfigError

    with pytest.raises(ConfigError) as err:  # "2" was a TypeError
        LocalEmbedder("2")  # type: ignore[arg-type]
    assert err.value.field == "embedder.intra_op_threads"


def test_a_gemini_embedder_names_an_engine_or_dimension_of_the_wrong_kind(gemini_server: Any) -> None:
    from genroute import Router
    from genroute.knowledge.embedders import GeminiEmbedder

    from .conftest import gemini_config

    _refused(lambda: GeminiEmbedder("gemini"), "engine")  # an AttributeError (no `provider`)
    with Router.from_config(gemini_config(gemini_server)) as router:
        engine = router.resources.engines["gemini"]
        for dimension in (0, "768"):  # each was taken, to fail (or be sent) at the first embedding
            _refused(lambda: GeminiEmbedder(engine, dimension=dimension), "dimension")
    assert not gemini_server.requests


def test_an_engine_built_in_code_names_a_config_that_is_not_a_mapping() -> None:
    from genroute import ConfigError
    from genroute.engines import GeminiEngine
    from genroute.engines.local import LocalEngine

    for build, name in ((GeminiEngine, "g"), (LocalEngine, "l")):
        for config in (5, "gemini-2.5-flash", ["api_key"]):  # a TypeError from dict()
            with pytest.raises(ConfigError) as err:
                build(name, config)
            assert err.value.field == f"engines.{name}", err.value


def test_router_options_of_any_kind_are_taken_or_refused_by_name(gemini_server: Any, tmp_path: Path) -> None:
    """Hypothesis gives each option of ``Router.from_config`` any value: the router is built, or refused with a
    genroute error naming that option (or a field under it), before any request is sent."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from genroute import Router

    from .conftest import gemini_config
    from .test_fuzz_config import JUNK, SETTINGS

    options = ["timeout_s", "capture_content", "capture_max_chars", "stats", "outcomes", "rate_limits", "breakers",
               "state", "validators", "tools", "engine_options", "scrub", "tracer_provider", "meter_provider"]
    config = gemini_config(gemini_server)
    seen = {"built": 0, "refused": 0}

    @settings(SETTINGS, max_examples=int(os.environ.get("GENROUTE_FUZZ_EXAMPLES", "150")))
    @given(option=st.sampled_from(options), value=JUNK)
    def check(option: str, value: Any) -> None:
        if option == "outcomes" and isinstance(value, dict):
            value = {**value, "path": str(tmp_path / "outcomes.db")}  # never the working directory
        try:
            router = Router.from_config(config, **{option: value})
        except GenrouteError as exc:
            named = getattr(exc, "field", None) or ""
            assert named == option or named.startswith(f"{option}."), f"{option}={value!r}: {exc!r}"
            seen["refused"] += 1
            return
        router.close()
        seen["built"] += 1

    check()
    assert seen["built"] and seen["refused"], seen
    assert not gemini_server.requests


def test_any_iterable_of_the_right_items_is_still_taken() -> None:
    """The checks refuse what is of the wrong kind, not a tuple, set or view where a list was written: each of these
    was taken before the checks and is taken now."""
    from genroute.admission.build import gate_configs
    from genroute.bench import split_ids
    from genroute.bench.runner import target_names
    from genroute.outcomes import redact_secrets

    assert "sk-abcdefgh" not in redact_secrets("my key: sk-abcdefgh", {"sk-abcdefgh"})
    assert sorted(sum(split_ids({"a": 1, "b": 2}.keys()), [])) == ["a", "b"]
    assert target_names(("chat", "pro")) == ["chat", "pro"]
    assert len(gate_configs(({"backend": "chat", "rpm": 5},), None)[0]) == 1
    rows = [{"input": f"q{i}", "outcomes": {"a": {"score": 1.0}, "b": {"score": 0.0}}} for i in range(3)]
    assert load_matrix(rows, candidates=("a", "b")).candidates == ("a", "b")


# -- paths with a NUL character ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "field"), [
    ({"knowledge": {"path": "chroma\x00"}}, "knowledge.path"),
    ({"outcomes": {"path": "outcomes\x00.db"}}, "outcomes.path"),  # a bare ValueError from os.open
    ({"engines": {"l": {"kind": "local", "model_path": "gemma\x00.gguf"}}}, "engines.l.model_path"),
    ({"validators": {"shape": {"kind": "json_schema", "path": "schema\x00.json"}}}, "validators.shape.path"),
    ({"policy": {"kind": "rules", "default": "chat", "rules": [
        {"when": {"task": "t"}, "backend": "chat", "validators": ["json_schema:schema\x00.json"]}]}},
     "policy.rules.0.validators"),
    ({"policy": {"kind": "semantic", "default": "chat", "routes_file": "routes\x00.jsonl"}}, "policy.routes_file"),
])
def test_a_path_with_a_nul_character_is_a_config_error_naming_it(gemini_server: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  section: dict[str, Any], field: str) -> None:
    """No file system takes a NUL in a path: such a setting was a bare ``ValueError: embedded null byte`` from
    ``open`` when the router was built (outcomes, validators, routes), or was taken and failed later; now it is a
    ``ConfigError`` naming the setting, and nothing is written."""
    from genroute import ConfigError, Router

    from .conftest import gemini_config

    monkeypatch.chdir(tmp_path)
    config = gemini_config(gemini_server)
    engines = {**config["engines"], **section.pop("engines", {})}
    error = _refused(lambda: Router.from_config({**config, **section, "engines": engines}), field)
    assert isinstance(error, ConfigError) and "NUL" in error.message
    assert list(tmp_path.iterdir()) == [] and not gemini_server.requests


def test_a_config_file_path_with_a_nul_character_is_a_config_error(tmp_path: Path) -> None:
    """It was a bare ``ValueError`` from locating the error's line in the file that could not be read."""
    from genroute import ConfigError, Router

    error = _refused(lambda: Router.from_config(str(tmp_path / "genroute\x00.yaml")), "path")
    assert isinstance(error, ConfigError) and "NUL" in error.message


def test_the_outcome_store_an_output_directory_and_test_credentials_name_a_path_with_a_nul_character(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each was a bare ``ValueError: embedded null byte`` (from ``os.open``, the first ``stat`` or ``write_text``)."""
    from genroute import OutcomeRecord
    from genroute.graduation import export_tuning_set
    from genroute.outcomes import OutcomeStore
    from genroute.testing.credentials import write_credentials

    monkeypatch.chdir(tmp_path)
    _refused(lambda: OutcomeStore("outcomes\x00.db"), "outcomes.path")
    records = [OutcomeRecord(input=f"q{i}", output="a", metadata={"task": "t", "id": str(i)}) for i in range(3)]
    _refused(lambda: export_tuning_set(records, "t", "tuning\x00set", min_examples=1), "out_dir")
    _refused(lambda: write_credentials("adc\x00.json"), "path")
    assert list(tmp_path.iterdir()) == []


def test_a_router_built_in_code_names_a_backend_or_engine_name_that_is_not_text(gemini_server: Any) -> None:
    """``Router({5: backend})`` was a ConfigError naming ``backend`` (the default static policy's field, with pydantic's
    'Input should be a valid string'), ``Router({"": backend})`` likewise; an engine keyed by a number was taken."""
    from genroute import Router
    from genroute.runtime.resources import Resources

    from .conftest import gemini_config

    with Router.from_config(gemini_config(gemini_server)) as router:
        chat, engine = router.backends["chat"], router.resources.engines["gemini"]
        for name in (5, "", None):
            _refused(lambda: Router({name: chat}, resources=router.resources), "backends")
            _refused(lambda: router.replacing({name: chat}), "backends")
            _refused(lambda: Resources({name: engine}), "engines")
    assert not gemini_server.requests
