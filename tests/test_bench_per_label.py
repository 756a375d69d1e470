"""Recall per gold label on the loopback Gemini server: a backend that always answers the majority label of an
imbalanced set shows it (recall 1 on that label, 0 on the others, macro recall below the majority baseline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genroute.bench import BenchRecord
from genroute.bench.harness import abench
from genroute.bench.per_label import label_golds
from genroute.router.router import Router
from genroute.testing import GeminiTestServer, Reply
from genroute.testing.replies import field_of, texts_in

from .conftest import TEST_KEY
from .test_bench_html import dump_dom, parse

#: 10 positive, 3 negative, 2 neutral reviews: the majority label is 10 of 15 records.
WORDS = {"positive": ("great", "love", "wonderful", "superb", "fine", "lovely", "nice", "perfect", "brilliant",
                      "excellent"),
         "negative": ("awful", "hate", "rude"), "neutral": ("okay", "average")}


def reviews() -> list[BenchRecord]:
    return [BenchRecord(id=f"{label}-{i}", input=f"The service was {word}.", output=label, label=label,
                        task="sentiment", metadata={"label_set": sorted(WORDS)})
            for label, words in WORDS.items() for i, word in enumerate(words)]


def serve(server: GeminiTestServer) -> None:
    """flash-lite always answers "positive"; flash answers by keyword (right on every record)."""

    def answer(request: Any) -> Reply:
        if "lite" in (request.model or ""):
            return Reply(parts=({"text": "Positive."},))
        text = " ".join(texts_in(field_of(request.body, "contents") or []))
        return Reply(parts=({"text": next(label for label, words in WORDS.items()
                                          if any(f" {w}." in text for w in words))},))

    server.default_reply = answer


def config(server: GeminiTestServer) -> dict[str, Any]:
    return {"engines": {"gemini": {"kind": "gemini", "base_url": server.base_url, "api_key": TEST_KEY,
                                   "retry": {"attempts": 1}}},
            "backends": {"lazy": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite"},
                         "smart": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
            "policy": {"kind": "static", "backend": "lazy"}}


async def test_a_backend_that_always_answers_the_majority_label_shows_it_per_label(
        gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    serve(gemini_server)
    async with Router.from_config(config(gemini_server)) as router:
        report = await abench(router, reviews(), backends=["lazy", "smart"], out_dir=tmp_path / "out",
                              progress=False, compile=False)
    by = {s.backend: s for s in report.summaries}
    assert by["lazy"].quality == 10 / 15  # the summary table alone: a fair-looking 0.667
    lazy = by["lazy"].labels
    assert lazy is not None
    recall = {r.label: r for r in lazy.labels}
    assert [r.label for r in lazy.labels] == ["positive", "negative", "neutral"]  # most frequent first
    assert recall["positive"].recall == 1.0 and recall["positive"].recall_ci[1] == 1.0
    assert recall["positive"].recall_ci[0] < 1.0  # exact CI: 10 of 10 does not prove recall 1
    assert recall["negative"].recall == recall["neutral"].recall == 0.0
    assert (recall["negative"].instead, recall["negative"].instead_n) == ("positive", 3)
    assert lazy.baseline_accuracy == 10 / 15 and lazy.majority_answers == 1.0
    assert lazy.macro_recall == 1 / 3 < lazy.baseline_accuracy
    smart = by["smart"].labels
    assert smart is not None and smart.macro_recall == 1.0 and smart.majority_answers == 10 / 15
    # summary.json carries it; report.md shows the overview and each backend's table.
    saved = {s["backend"]: s for s in json.loads((tmp_path / "out" / "summary.json").read_text())}
    assert saved["lazy"]["labels"]["macro_recall"] == 1 / 3
    assert saved["lazy"]["labels"]["labels"][1]["instead"] == "positive"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Recall per gold label" in md
    assert "| lazy | 15 | 0.667 | 0.333 | 2 of 3 | 100.0% |" in md
    assert ("always answering `positive`, the most common gold label (10 of the run's 15 labelled records) scores "
            "accuracy 0.667") in md
    assert "| negative | 3 | 0.000 [0.000, 0.708] | positive (3 of 3) |" in md
    assert "| lazy | 15 | 0.667 | 0.333 | 2 of 3 | 100.0% |" in report.markdown()  # what the command prints
    # The HTML page renders the tables as tables.
    dom = parse(dump_dom(tmp_path / "out" / "report.html", tmp_path))
    tables = [rows for rows in dom.tables.values() if rows]
    overview = next(rows for rows in tables if rows[0][1][:4] == ["backend", "n", "accuracy", "macro recall"])
    assert [cells for _, cells in overview[1:]] == [["lazy", "15", "0.667", "0.333", "2 of 3", "100.0%"],
                                                    ["smart", "15", "1.000", "1.000", "0 of 3", "66.7%"]]
    per_label = [rows for rows in tables if rows[0][1][0] == "label" and rows[0][1][1] == "gold n"]
    assert len(per_label) == 2
    assert per_label[0][3][1] == ["neutral", "2", "0.000 [0.000, 0.842]", "positive (2 of 2)"]


async def test_many_labels_show_the_most_frequent_and_summarise_the_rest(gemini_server: GeminiTestServer,
                                                                         tmp_path: Path) -> None:
    """14 intents scored by exact match, the majority one on half the records, each other one on 2: the lazy
    backend's table shows 10 labels and one row for the other 4, all at recall 0."""
    intents = [f"intent_{i:02d}" for i in range(14)]
    golds = [intents[0]] * 26 + intents[1:] * 2
    records = [BenchRecord(id=f"r{i}", input=f"Request {i}: about {gold}.", output=gold)
               for i, gold in enumerate(golds)]

    def answer(request: Any) -> Reply:
        if "lite" in (request.model or ""):
            return Reply(parts=({"text": "intent_00"},))
        text = " ".join(texts_in(field_of(request.body, "contents") or []))
        return Reply(parts=({"text": text.split("about ")[1].split(".")[0]},))

    gemini_server.default_reply = answer
    async with Router.from_config(config(gemini_server)) as router:
        report = await abench(router, records, backends=["lazy", "smart"], scorer="exact",
                              out_dir=tmp_path / "out", progress=False, compile=False)
    lazy = {s.backend: s for s in report.summaries}["lazy"].labels
    assert lazy is not None and len(lazy.labels) == 14 and lazy.labels[0].label == "intent_00"
    assert lazy.baseline_accuracy == 0.5 and lazy.macro_recall == 1 / 14
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("| (4 more labels, pooled) | 8 | 0.000 [0.000, 0.369] | 4 of them at recall 0 (summary.json lists every "
            "label) |") in md
    assert sum(line.startswith("| intent_") for line in md.splitlines()) == 2 * 10  # ten labels a backend


def test_exact_match_golds_are_labels_only_when_they_form_a_small_repeated_set() -> None:
    def rows(golds: list[str], **meta: Any) -> list[BenchRecord]:
        return [BenchRecord(id=str(i), input=f"q{i}", output=g, metadata=meta) for i, g in enumerate(golds)]

    assert label_golds("exact", rows(["yes", "no", "yes", "no"])) is not None
    # normalized_exact compares "Yes." and "yes" as one gold: one label, shown as first written.
    found = label_golds("normalized_exact", rows(["Yes.", "yes", "no", "No"]))
    assert found is not None and sorted(set(found.values())) == [(None, "Yes."), (None, "no")]
    assert label_golds("exact", rows(["Paris", "Rome", "Oslo", "Paris"])) is None  # 3 golds in 4 records: answers
    assert label_golds("exact", rows(["yes", "yes", "yes"])) is None  # one gold: nothing to tell apart
    assert label_golds("normalized_exact", rows(["a", "b", "a", "b"], answers=["a", "the a"])) is None
    assert label_golds("token_f1", rows(["yes", "no", "yes", "no"])) is None
    # label_accuracy reads "Positive" and "positive " as the one label they name.
    labelled = [BenchRecord(id=str(i), input=f"q{i}", label=g) for i, g in enumerate(["Positive", "positive ", "no"])]
    assert sorted(set((label_golds("label_accuracy", labelled) or {}).values())) == [(None, "Positive"), (None, "no")]


def test_on_a_tie_the_majority_label_counted_is_the_one_the_baseline_sentence_names() -> None:
    """2 "positive" and 2 "negative" golds, "positive" seen first: the overview names one label as the one the
    baseline always answers (the first in the table's order), and "answered the majority label" counts that one,
    not another label of the tie."""
    from genroute.bench.per_label import breakdowns, per_label_overview
    from genroute.bench.runner import Outcome

    golds = ["positive", "negative", "positive", "negative"]
    records = [BenchRecord(id=str(i), input=f"q{i}", output=g, label=g) for i, g in enumerate(golds)]
    outcomes = [Outcome(backend="neg", record_id=str(i), ok=True, score=float(g == "negative"),
                        scorer="label_accuracy", answer="negative") for i, g in enumerate(golds)]
    found = breakdowns(outcomes, records)
    named = found["neg"].labels[0].label
    assert f"always answering `{named}`" in per_label_overview(found)
    assert found["neg"].majority_answers == (1.0 if named == "negative" else 0.0)


def _rows(target: str, records: list[BenchRecord], answer: Any, scorer: str = "exact") -> list[Any]:
    """``target``'s scored rows on ``records``, answering ``answer(record)`` (scored as ``exact`` compares)."""
    from genroute.bench.runner import Outcome

    return [Outcome(backend=target, record_id=r.id, task=r.task, ok=True, scorer=scorer, answer=answer(r),
                    score=float(answer(r).strip() == r.output.strip())) for r in records]


def test_an_empty_gold_leaves_its_record_out_and_the_rest_is_still_reported() -> None:
    """An exact-match run with one record whose gold output is empty had no section at all: that record has no
    label, so it is left out (and named), and the other records' recall per label is reported."""
    from genroute.bench.per_label import breakdowns, per_label_markdown

    golds = ["yes", "no", "yes", "yes", "", "no"]
    records = [BenchRecord(id=f"r{i}", input=f"q{i}", output=g) for i, g in enumerate(golds)]
    found = breakdowns(_rows("b", records, lambda r: "yes"), records)["b"]
    assert found.unlabeled == ("r4",) and found.records == found.n == 5
    assert [(r.label, r.gold, r.correct) for r in found.labels] == [("yes", 3, 3), ("no", 2, 0)]
    assert found.baseline_accuracy == 3 / 5 and found.accuracy == 3 / 5
    md = per_label_markdown({"b": found})
    assert "1 record(s) have an empty gold, so no label, and are left out of this section" in md and "`r4`" in md


def test_the_label_cap_is_a_tasks_not_the_runs() -> None:
    """Three tasks of 40 labels each (120 task/label pairs) are three small label sets: the cap of 100 was
    counted over the pairs of every task, which turned the section off; one task of 101 labels is still no label
    set."""
    from genroute.bench.per_label import MAX_LABELS, label_golds

    records = [BenchRecord(id=f"{t}-{i}-{k}", input=f"{t} {i} {k}", output=f"label{i}", task=t)
               for t in ("a", "b", "c") for i in range(40) for k in range(2)]
    found = label_golds("exact", records)
    assert found is not None and len(set(found.values())) == 120 > MAX_LABELS
    one_task = [BenchRecord(id=f"{i}-{k}", input=f"{i} {k}", output=f"label{i}")
                for i in range(MAX_LABELS + 1) for k in range(2)]
    assert label_golds("exact", one_task) is None


def test_the_baseline_counts_the_runs_records_not_the_first_backends() -> None:
    """The first backend ran on 3 of the 10 records (all "no"): the overview said the majority label was "no",
    "(3 of 3 records)", from that backend's rows; it names the run's majority label and counts, and each
    backend's n."""
    from genroute.bench.per_label import breakdowns, per_label_overview

    golds = ["yes"] * 7 + ["no"] * 3
    records = [BenchRecord(id=f"r{i}", input=f"q{i}", output=g) for i, g in enumerate(golds)]
    outcomes = _rows("partial", records[7:], lambda r: "no") + _rows("whole", records, lambda r: "yes")
    found = breakdowns(outcomes, records)
    text = per_label_overview(found)
    assert "always answering `yes`, the most common gold label (7 of the run's 10 labelled records)" in text
    assert "| partial | 3 | 1.000 | 1.000 | 0 of 1 | 0.0% |" in text
    assert "| whole | 10 | 0.700 | 0.500 | 1 of 2 | 100.0% |" in text


def test_summary_json_lists_at_most_100_unlabeled_ids_and_counts_them_all() -> None:
    """``labels.unlabeled`` listed every unlabeled id, so a set of 20,000 generation records with a few labelled
    ones put 20,000 ids into each backend's summary.json entry: it lists the first 100, ``unlabeled_count`` counts
    them all, and the overview names that count."""
    from genroute.bench.per_label import MAX_UNLABELED_IDS, breakdowns, per_label_markdown

    golds = ["yes", "no", "yes", "no"] + [""] * 250
    records = [BenchRecord(id=f"r{i}", input=f"q{i}", output=g) for i, g in enumerate(golds)]
    found = breakdowns(_rows("b", records, lambda r: "yes"), records)["b"]
    assert MAX_UNLABELED_IDS == 100
    assert found.unlabeled == tuple(f"r{i}" for i in range(4, 104)) and found.unlabeled_count == 250
    assert "250 record(s) have an empty gold" in per_label_markdown({"b": found})
    dumped = found.model_dump(mode="json")
    assert len(dumped["unlabeled"]) == 100 and dumped["unlabeled_count"] == 250
