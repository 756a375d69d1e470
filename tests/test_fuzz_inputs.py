"""What a user passes in: typed errors naming the field (and the file's line), and nothing written on refusal.

Hypothesis sends ``generate`` odd inputs (lone surrogates, control characters, huge strings), variables and metadata
of odd shapes and every kind of ``timeout_s``; gives ``router.feedback`` random results, scores, labels and inputs;
and writes bench datasets and outcome matrices as JSONL files of random keys, types, encodings, byte-order marks
and blank lines for ``load_records``, ``load_matrix``, ``read_outcome_file`` and ``compile_outcomes`` (what
``genroute bench``/``compile`` read). Whatever it finds, the caller gets an answer or a ``UsageError`` whose
``field`` leads its message; a refused feedback leaves the outcome store as it was, a refused compile writes no
file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from genroute import (BackendUnavailable, DeadlineExceeded, GenerateResult, Router, StreamInterrupted,
                      UsageError)
from genroute.bench import compile_outcomes, load_matrix, load_records
from genroute.outcomes import OutcomeStore, read_outcome_file
from genroute.testing import GeminiTestServer

from .conftest import gemini_config
from .test_fuzz_config import ANY_TEXT, JUNK, MODES, SETTINGS, Caller, _check_error, _check_run_failure, _valid_unicode

# Modest and repeatable in CI (SETTINGS: derandomized, no deadline); GENROUTE_FUZZ_EXAMPLES explores further.
EXAMPLES = int(os.environ.get("GENROUTE_FUZZ_EXAMPLES", "80"))

TIMEOUTS = (st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**12) | st.booleans()
            | st.sampled_from(["5", "", "1e3", b"5", [5], {"s": 5}, complex(1, 0), 1e-300, 2**70]))
TEXTS = (ANY_TEXT | st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp"]), max_size=10)
         | st.sampled_from(["x" * 300_000, "\x00", "a\ud800b", "\ufeffhello", "\r\n" * 50, ""]) | JUNK)


def test_generate_arguments_of_any_kind_are_answered_or_refused_by_name(gemini_server: GeminiTestServer) -> None:
    config = gemini_config(gemini_server, template="{{ input }} ({{ tone }})",
                           variables={"tone": {"type": "str", "required": False, "default": "dry"}})
    caller = Caller(config)
    seen = {"answered": 0, "refused": 0, "timed out": 0}
    unsettled = False

    @settings(SETTINGS, max_examples=EXAMPLES)
    @given(text=TEXTS, timeout_s=TIMEOUTS, variables=st.none() | JUNK | st.dictionaries(
        st.sampled_from(["tone", "input", ""]) | ANY_TEXT, JUNK, max_size=2),
           metadata=st.none() | JUNK | st.dictionaries(ANY_TEXT | st.sampled_from(["id", "task"]), JUNK, max_size=3),
           mode=st.sampled_from(MODES))
    @example(text="hello", timeout_s=float("nan"), variables=None, metadata=None, mode="generate")
    @example(text="hello", timeout_s=True, variables=None, metadata=None, mode="astream")
    @example(text="hello", timeout_s=1.7976931348623157e308, variables=None, metadata=None, mode="agenerate")
    @example(text="x" * 300_000, timeout_s=None, variables={"tone": "\x00\x1b"}, metadata={"k": [None]},
             mode="stream")
    def check(text: Any, timeout_s: Any, variables: Any, metadata: Any, mode: str) -> None:
        nonlocal unsettled
        kwargs: dict[str, Any] = {"timeout_s": timeout_s}
        if variables is not None:
            kwargs["variables"] = variables
        if metadata is not None:
            kwargs["metadata"] = metadata
        sent = len(gemini_server.requests)
        what = f"{mode}({text!r:.80}, **{kwargs!r:.300})"
        try:
            result = caller(mode, text, kwargs)
        except UsageError as exc:
            _check_error(exc)
            # A request an earlier example's deadline cut may reach the server late, until one is answered.
            assert len(gemini_server.requests) == sent or unsettled, f"{what}: refused only after sending it"
            seen["refused"] += 1
            return
        except Exception as exc:  # noqa: BLE001 - the point: anything untyped fails the test
            _check_run_failure(exc, what)
            # The loopback answers every valid request: only a deadline too short for it can fail one.
            # (a stream's deadline may pass after its first chunk: timers fire within RESOLUTION_S)
            assert isinstance(exc, DeadlineExceeded | BackendUnavailable | StreamInterrupted) and timeout_s is not None, \
                f"{what}: {exc!r}"
            seen["timed out"] += 1
            unsettled = True
            return
        assert isinstance(result, GenerateResult) and result.text, what
        assert isinstance(timeout_s, int | float) and not isinstance(timeout_s, bool) or timeout_s is None, what
        assert timeout_s is None or (math.isfinite(timeout_s) and timeout_s > 0), f"{what}: a timeout_s taken"
        for request in gemini_server.requests[sent:]:
            _valid_unicode(request.body, what)
        seen["answered"] += 1
        unsettled = False

    try:
        check()
    finally:
        caller.close()
    assert seen["answered"] and seen["refused"], seen


def _refused(call: Any, what: str) -> UsageError | None:
    """Run ``call``: the ``UsageError`` it was refused with (its field leading its message), None if it went
    through; anything else fails the test."""
    try:
        call()
    except UsageError as exc:
        _check_error(exc)
        return exc
    except Exception as exc:  # noqa: BLE001 - the point: anything untyped fails the test
        raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc
    return None


SCORES = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 2) | st.booleans() | JUNK


def test_feedback_of_any_kind_is_recorded_or_refused_by_name_leaving_the_store_as_it_was(
        gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    config = gemini_config(gemini_server)
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy", "capture": True}
    store = OutcomeStore(tmp_path / "outcomes.db")
    seen = {"recorded": 0, "refused": 0}
    with Router.from_config(config) as router:
        served = router.generate("positive or negative: great film")

        @settings(SETTINGS, max_examples=EXAMPLES)
        @given(result=st.just(served) | st.just(served.outcome_id) | JUNK | ANY_TEXT, score=SCORES,
               label=st.none() | st.sampled_from(["positive", ""]) | ANY_TEXT | JUNK,
               input=st.none() | st.just("again") | ANY_TEXT | JUNK)
        @example(result=served, score=float("nan"), label=None, input=None)
        @example(result=served, score=None, label="pos\ud800", input=None)
        @example(result=served, score=1, label=None, input=None)
        def check(result: Any, score: Any, label: Any, input: Any) -> None:  # noqa: A002 - feedback's own name
            before = [r.model_dump() for r in store.records_sync()]
            what = f"feedback({result!r:.80}, score={score!r}, label={label!r}, input={input!r})"
            if _refused(lambda: router.feedback(result, score=score, label=label, input=input), what) is None:
                seen["recorded"] += 1
                return
            assert [r.model_dump() for r in store.records_sync()] == before, f"{what}: written, then refused"
            seen["refused"] += 1

        check()
    assert seen["recorded"] and seen["refused"], seen


KEYS = st.sampled_from(["input", "output", "label", "task", "id", "metadata", "outcomes", "lable", "x", ""])
SIDE = st.fixed_dictionaries({}, optional={
    "score": SCORES, "cost_usd": SCORES, "latency_s": SCORES, "input_tokens": SCORES, "output_tokens": SCORES,
    "ok": JUNK, "quality": JUNK})
PLAUSIBLE = st.fixed_dictionaries(
    {"input": st.text(min_size=1, max_size=12) | JUNK},
    optional={"output": st.text(max_size=8) | JUNK, "label": st.sampled_from(["a", "b"]) | JUNK,
              "task": st.sampled_from(["t", ""]) | JUNK,
              "metadata": st.fixed_dictionaries({}, optional={"id": st.integers(0, 3) | JUNK, "task": JUNK,
                                                              "label_set": JUNK}) | JUNK,
              "outcomes": st.dictionaries(st.sampled_from(["a", "b", ""]), SIDE | JUNK, max_size=2) | JUNK})
LINE = (PLAUSIBLE.map(json.dumps) | st.dictionaries(KEYS, JUNK, max_size=4).map(json.dumps)
        | st.sampled_from(["", "   ", "{", "[1]", "null", "\ufeff{}", '{"input": NaN}', '{"input": "a", "input": 1}'])
        | st.text(max_size=12))
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "utf-8 surrogates"])


def _write(path: Path, lines: list[str], encoding: str, newline: str) -> None:
    text = newline.join(lines) + newline
    if encoding == "utf-8 surrogates":
        data = text.encode("utf-8", "surrogatepass")
    else:
        data = text.encode(encoding, "replace" if encoding == "latin-1" else "surrogatepass")
    path.write_bytes(data)


def _first_not_an_object(lines: list[str]) -> int | None:
    """The number of the first non-blank line, if it is not a JSON object (nor valid UTF-8) whatever follows."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            line.encode("utf-8")
            value = json.loads(line.removeprefix("\ufeff") if number == 1 else line)
        except ValueError:
            return number
        return None if isinstance(value, dict) else number
    return None


def test_jsonl_files_of_any_shape_are_read_or_refused_naming_the_field_and_line() -> None:
    root = Path(tempfile.mkdtemp(prefix="genroute-fuzz-jsonl-"))
    seen = {"read": 0, "refused": 0}
    readers = {
        "dataset": (lambda p: load_records(p), "data"),
        "matrix": (lambda p: load_matrix(p), "outcomes"),
        "outcome file": (lambda p: read_outcome_file(p), "outcomes"),
    }

    @settings(SETTINGS, max_examples=EXAMPLES)
    @given(lines=st.lists(LINE, min_size=0, max_size=5), encoding=ENCODINGS, newline=st.sampled_from(["\n", "\r\n"]),
           reader=st.sampled_from(sorted(readers)), gz=st.booleans())
    @example(lines=['{"input": "a", "label": "x"}', ""], encoding="utf-8-sig", newline="\r\n", reader="dataset",
             gz=False)
    def check(lines: list[str], encoding: str, newline: str, reader: str, gz: bool) -> None:
        path = root / ("data.jsonl.gz" if gz else "data.jsonl")
        _write(path, lines, encoding, newline)
        if gz:
            import gzip
            path.write_bytes(gzip.compress(path.read_bytes()))
        read, field = readers[reader]
        what = f"{reader} of {lines!r} in {encoding}"
        exc = _refused(lambda: read(path), what)
        if exc is None:
            seen["read"] += 1
            return
        assert exc.field == field, f"{what}: {exc.field!r} named instead of {field!r}: {exc}"
        lines = (newline.join(lines) + newline).split("\n")  # as the reader splits them
        named = re.match(rf"{re.escape(path.name)}:(\d+): ", exc.message)
        assert named is None or 1 <= int(named[1]) <= max(1, len(lines)), f"{what}: no such line: {exc}"
        first = _first_not_an_object(lines) if encoding in ("utf-8", "utf-8-sig") else None
        if first is not None:  # the first line that cannot be a record is the one refused, by its number
            assert exc.message.startswith(f"{path.name}:{first}: "), f"{what}: line {first} not named: {exc}"
        seen["refused"] += 1

    check()
    assert seen["read"] and seen["refused"], seen


def _matrix_line(i: int, a: Any, b: Any) -> str:
    return json.dumps({"input": f"question {i}", "metadata": {"id": f"q{i}", "task": "t"},
                       "outcomes": {"a": a, "b": b}})


def test_a_refused_compile_writes_nothing() -> None:
    root = Path(tempfile.mkdtemp(prefix="genroute-fuzz-compile-"))
    good = {"score": 1.0, "cost_usd": 0.001}
    seen = {"compiled": 0, "refused": 0}

    @settings(SETTINGS, max_examples=EXAMPLES)
    @given(bad=st.lists(st.tuples(st.integers(0, 29), LINE | SIDE.map(lambda s: _matrix_line(99, good, s))),
                        max_size=2), encoding=ENCODINGS)
    @example(bad=[], encoding="utf-8")
    def check(bad: list[tuple[int, str]], encoding: str) -> None:
        lines = [_matrix_line(i, good, {"score": float(i % 2), "cost_usd": 0.0001}) for i in range(30)]
        for index, line in bad:
            lines[index] = line
        source = root / "matrix.jsonl"
        _write(source, lines, encoding, "\n")
        out = root / f"out-{seen['compiled'] + seen['refused']}"
        what = f"compile of {bad!r} in {encoding}"
        exc = _refused(lambda: compile_outcomes(source, out_dir=out, learned=False, min_n=1, holdout=0.3), what)
        if exc is None:
            seen["compiled"] += 1
            return
        assert exc.field in ("outcomes", "candidates"), f"{what}: {exc.field!r} named: {exc}"
        assert not out.exists() or not os.listdir(out), f"{what}: refused after writing {os.listdir(out)}"
        seen["refused"] += 1

    check()
    assert seen["compiled"] and seen["refused"], seen
