"""Scorers as tables: (record, answer) -> score."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pytest

from genroute.bench.datasets import BenchRecord
from genroute.bench.scorers import Scorer, resolve_scorer
from genroute.errors import UsageError
from genroute.types import DecisionRecord, GenerateResult, ToolCall


def rec(output: str = "", label: str | None = None, **metadata: Any) -> BenchRecord:
    return BenchRecord(id="r1", input="question?", output=output, label=label, metadata=metadata)


def res(text: str, tool_calls: tuple[ToolCall, ...] = ()) -> GenerateResult:
    return GenerateResult(text=text, backend="b", model="m", tool_calls=tool_calls,
                          decision=DecisionRecord(policy="override", reason="test"))


def scorer_value(name: str, record: BenchRecord, result: GenerateResult) -> float:
    fn = resolve_scorer(name).fn
    assert fn is not None
    return fn(record, result)


TEXT_CASES = [
    ("exact", rec("Paris"), " Paris\n", 1.0),
    ("exact", rec("Paris"), "paris", 0.0),
    ("normalized_exact", rec("The Eiffel Tower"), "eiffel tower.", 1.0),
    ("normalized_exact", rec("x", answers=[{"text": "Ogród Saski"}, {"text": "Saxon Garden"}]),
     "the Saxon garden", 1.0),
    ("normalized_exact", rec("Paris"), "Paris, France", 0.0),
    ("token_f1", rec("Denver Broncos"), "the Denver Broncos", 1.0),
    ("token_f1", rec("Denver Broncos"), "Broncos", 2 / 3),
    ("token_f1", rec("Denver Broncos"), "Carolina", 0.0),
    ("token_f1", rec("x", answers=[{"text": "Santa Clara"}, {"text": "Levi's Stadium"}]), "levis stadium", 1.0),
    # Gold answers as plain strings count too (they were ignored: scored against output alone).
    ("token_f1", rec("Paris", answers=["Paris", "City of Paris"]), "the city of paris", 1.0),
    ("normalized_exact", rec("", answers=["Paris", "City of Paris"]), "City of Paris.", 1.0),
    ("label_accuracy", rec("positive", "positive"), "Positive.", 1.0),
    ("label_accuracy", rec("positive", "positive"), "Sentiment: positive", 1.0),
    ("label_accuracy", rec("positive", "positive", label_set=["negative", "positive"]),
     "positive or negative", 0.0),
    ("label_accuracy", rec("negative", "negative"), "positive", 0.0),
    ("label_accuracy", rec("card_arrival", "card_arrival"), "card arrival", 1.0),
    ("label_accuracy", rec("card_arrival", "card_arrival"), "card_arrival_date", 0.0),
    # Answer letters are labels, not articles; signs and symbols tell labels apart.
    ("label_accuracy", rec("A", "A", label_set=["A", "B", "C", "D"]), "A", 1.0),
    ("label_accuracy", rec("A", "A", label_set=["A", "B", "C", "D"]), "(A)", 1.0),
    ("label_accuracy", rec("A", "A", label_set=["A", "B", "C", "D"]), "Answer: A", 1.0),
    ("label_accuracy", rec("A", "A", label_set=["A", "B", "C", "D"]), "B", 0.0),
    ("label_accuracy", rec("A", "A"), "It is a hard one: B", 0.0),
    ("label_accuracy", rec("B", "B", label_set=["A", "B", "C", "D"]), "The answer is B.", 1.0),
    ("label_accuracy", rec("+1", "+1", label_set=["+1", "-1"]), "-1", 0.0),
    ("label_accuracy", rec("+1", "+1", label_set=["+1", "-1"]), "+1", 1.0),
    ("label_accuracy", rec("+1", "+1"), "Score: +1.", 1.0),
    ("label_accuracy", rec("C++", "C++", label_set=["C++", "C#"]), "C#", 0.0),
    ("label_accuracy", rec("4.5", "4.5"), "45", 0.0),
    ("label_accuracy", rec("\U0001f44d", "\U0001f44d"), "\U0001f44e", 0.0),
    ("label_accuracy", rec("\U0001f44d", "\U0001f44d"), "I say \U0001f44d", 1.0),
    ("label_accuracy", rec("The Beatles", "The Beatles"), "Beatles", 1.0),
    ("label_accuracy", rec("positive", "positive"), "ＰＯＳＩＴＩＶＥ。", 1.0),   # full-width: one Unicode form
    ("label_accuracy", rec("Straße", "Straße", label_set=["Straße", "Weg"]), "STRASSE", 1.0),
    ("label_accuracy", rec("?", "?", label_set=["?", "!"]), "?", 1.0),
    ("label_accuracy", rec("?", "?", label_set=["?", "!"]), "!", 0.0),
    # Scripts without spaces between words: the label stands among other letters, and is named there.
    ("label_accuracy", rec("正面", "正面"), "这条评论是正面的。", 1.0),
    ("label_accuracy", rec("ポジティブ", "ポジティブ"), "このレビューはポジティブです。", 1.0),
    ("label_accuracy", rec("บวก", "บวก"), "รีวิวนี้เป็นบวกครับ", 1.0),
    ("label_accuracy", rec("正面", "正面", label_set=["正面", "负面"]), "这条评论是负面的", 0.0),
    ("label_accuracy", rec("正面", "正面", label_set=["正面", "负面"]), "正面还是负面", 0.0),  # names both
    ("label_accuracy", rec("positive", "positive"), "这条评论是positive的", 1.0),
    ("label_accuracy", rec("positive", "positive"), "这条评论是unpositive的", 0.0),  # inside a Latin word still not
    # The iteration mark, closing mark and ideographic zero (々 〆 〇) are letters of that script too.
    ("label_accuracy", rec("positive", "positive"), "評価は時々positive", 1.0),
    ("label_accuracy", rec("positive", "positive"), "〇〇positive", 1.0),
    # One label in two Unicode compositions: "ne" + combining acute in the file, "é" in the answer.
    ("label_accuracy", rec("ne\u0301gatif", "ne\u0301gatif", label_set=["ne\u0301gatif", "positif"]), "Négatif.", 1.0),
    ("label_accuracy", rec("négatif", "négatif", label_set=["négatif", "positif"]), "ne\u0301gatif ou positif", 0.0),
    ("json_schema", rec(json_schema={"type": "object", "required": ["a"]}), '```json\n{"a": 1}\n```', 1.0),
    ("json_schema", rec(json_schema={"type": "object", "required": ["a"]}), '{"b": 1}', 0.0),
    ("json_schema", rec(), "not json", 0.0),
    ("json_schema", rec(), 'Here: {"a": [1, 2]} done', 1.0),
    ("regex:^\\d{4}-\\d{2}$", rec(), "2024-05", 1.0),
    ("regex:^\\d{4}-\\d{2}$", rec(), "May 2024", 0.0),
    ("regex", rec(r"\bParis\b"), "It is Paris.", 1.0),
]


@pytest.mark.parametrize(("name", "record", "text", "expected"), TEXT_CASES)
def test_text_scorers(name: str, record: BenchRecord, text: str, expected: float) -> None:
    assert scorer_value(name, record, res(text)) == pytest.approx(expected)


TRIANGLE = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
PARALLEL = [{"em": {"b": [5], "d": [4]}}, {"em": {"b": [5], "d": [10]}}]
NESTED = [{"book": {"where": [{"city": ["Paris", "paris, fr"]}], "when": ["2024-05-01"]}}]


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "arguments": args}


CALL_CASES = [
    (TRIANGLE, json.dumps([call("calculate_triangle_area", base=10, height=5)]), 1.0),  # optional arg left out
    (TRIANGLE, json.dumps([call("calculate_triangle_area", base=10, height=5, unit="units")]), 1.0),
    # No declaration: the type comes from the accepted values, and a float for an int is a type error (BFCL).
    (TRIANGLE, json.dumps([call("calculate_triangle_area", base=10.0, height=5)]), 0.0),
    (TRIANGLE, json.dumps([call("calculate_triangle_area", base=10)]), 0.0),  # required arg missing
    (TRIANGLE, json.dumps([call("calculate_triangle_area", base=10, height=6)]), 0.0),
    (TRIANGLE, json.dumps([call("calculate_triangle_area", base=10, height=5, colour="red")]), 0.0),
    (TRIANGLE, json.dumps([call("area", base=10, height=5)]), 0.0),
    (TRIANGLE, "calculate_triangle_area(base=10, height=5)", 1.0),  # Python call syntax
    (TRIANGLE, json.dumps({"calculate_triangle_area": {"base": 10, "height": 5}}), 1.0),
    (TRIANGLE, "I cannot help", 0.0),
    ([], "I cannot help with that: no tool fits.", 1.0),  # a refusal in prose on an irrelevance record
    (PARALLEL, json.dumps([call("em", b=5, d=10), call("em", b=5, d=4)]), 1.0),  # any order
    (PARALLEL, json.dumps([call("em", b=5, d=10), call("em", b=5, d=10)]), 0.0),  # one gold used twice
    (PARALLEL, json.dumps([call("em", b=5, d=10)]), 0.0),
    (NESTED, json.dumps([call("book", where={"city": "Paris, FR"}, when="2024-05-01")]), 1.0),
    ([], "[]", 1.0),  # irrelevance: no call is right
    ([], "", 1.0),
    ([], json.dumps([call("em", b=1, d=1)]), 0.0),
]


STARS = ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(("label", "text", "label_set", "expected"), [
    # A number label was named by any number that held it once "." and "," read as spaces: a rating of 4.5 or
    # -4 scored as the label 4, 3.14 as 3, 1,000 as 1.
    ("4", "4.5", None, 0.0),
    ("4", "I'd give it 4.5 stars", STARS, 0.0),
    ("3", "3.14", None, 0.0),
    ("5", "-5", None, 0.0),
    ("1", "1,000", None, 0.0),
    ("-1", "1", ["-1", "1"], 0.0),
    # A number that equals the label still names it, in any way of writing it.
    ("4", "Rating: 4.", STARS, 1.0),
    ("4", "4.0", None, 1.0),
    ("4", "４ stars", STARS, 1.0),   # a full-width digit
    ("-1", "the answer is -1", ["-1", "1"], 1.0),
    ("1,000", "about 1000", None, 1.0),
    ("4", "4 or 5", STARS, 0.0),     # two labels named: ambiguous, as for words
    ("4.5", "rated 4.5 stars", None, 1.0),
])
def test_label_accuracy_reads_numbers_whole(label: str, text: str, label_set: list[str] | None,
                                            expected: float) -> None:
    metadata = {"label_set": label_set} if label_set else {}
    assert scorer_value("label_accuracy", rec(label, label, **metadata), res(text)) == expected


@pytest.mark.parametrize(("possible", "text", "expected"), CALL_CASES)
def test_function_call_scorer_uses_possible_answer(possible: list[Any], text: str, expected: float) -> None:
    record = rec("ignored", possible_answer=possible)
    assert scorer_value("function_call", record, res(text)) == expected


def test_function_call_scorer_reads_the_tool_loop_calls_and_dotted_names() -> None:
    record = rec(possible_answer=[{"math.factorial": {"number": [5]}}])
    made = (ToolCall(name="math_factorial", args={"number": 5}),)
    assert scorer_value("function_call", record, res("The answer is 120.", tool_calls=made)) == 1.0
    gold_from_output = rec(json.dumps([call("f", x=1)]))
    assert scorer_value("function_call", gold_from_output, res('[{"name": "f", "args": {"x": 1}}]')) == 1.0


def test_custom_and_unknown_scorers() -> None:
    custom = resolve_scorer("tests.test_bench_scorers:length_scorer")
    assert custom.fn is not None and custom.fn(rec("abc"), res("abc")) == 1.0
    assert resolve_scorer("judge:grader").judge == "grader"
    with pytest.raises(UsageError) as err:
        resolve_scorer("nope")
    assert err.value.field == "scorer"
    with pytest.raises(UsageError):
        resolve_scorer("regex:(")


def test_auto_scorer_follows_the_data() -> None:
    assert resolve_scorer(None, [rec("a", "a")]).name == "label_accuracy"
    assert resolve_scorer("auto", [rec("[]", possible_answer=[])]).name == "function_call"
    assert resolve_scorer(None, [rec("Paris")]).name == "token_f1"
    assert resolve_scorer(None, [rec("Paris"), rec("", "positive")]).name == "label_accuracy"  # any record's label


def length_scorer(record: BenchRecord, result: GenerateResult) -> float:
    """A custom scorer: 1 if the answer is as long as the gold output."""
    return float(len(result.text) == len(record.output))


async def async_length_scorer(record: BenchRecord, result: GenerateResult) -> float:
    """A custom scorer written as ``async def`` (one that asks a service, say)."""
    await asyncio.sleep(0)
    return float(len(result.text) == len(record.output))


def test_an_async_custom_scorer_is_awaited() -> None:
    scorer = resolve_scorer("tests.test_bench_scorers:async_length_scorer")
    assert asyncio.run(scorer.score(rec("abc"), res("xyz"))) == (1.0, 0.0)
    assert asyncio.run(scorer.score(rec("abc"), res("toolong"))) == (0.0, 0.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, 1.5, -0.25, True, "0.5", None])
def test_a_custom_scorer_must_return_a_score_in_0_1(value: Any) -> None:
    # One NaN made a clear difference read "no difference detected"; a bool or 5.0 is no score either.
    scorer = Scorer("myscorers:grade", lambda record, result: value)
    with pytest.raises(UsageError) as err:
        asyncio.run(scorer.score(rec("a"), res("a")))
    assert err.value.field == "scorer"
    assert "'myscorers:grade'" in err.value.message and "'r1'" in err.value.message


@pytest.mark.parametrize("value", [0, 1, 0.25, np.float32(0.5), np.int64(1)])
def test_numbers_in_0_1_are_scores(value: Any) -> None:
    scorer = Scorer("myscorers:grade", lambda record, result: value)
    assert asyncio.run(scorer.score(rec("a"), res("a"))) == (float(value), 0.0)
