"""Records that repeat one input are one input in every paired comparison: the bench's, the advisor's and the
graduation's shadow comparison."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from genroute.bench.clusters import cluster_means, text_groups
from genroute.bench.datasets import BenchRecord
from genroute.bench.run_report import report_outcomes
from genroute.bench.runner import Outcome
from genroute.bench.stats import compare_paired, paired_bootstrap_ci
from genroute.errors import UsageError
from genroute.graduation import decide_promotion
from genroute.outcomes import OutcomeRecord, Side
from genroute.policies.stats import BenchStats

# The shape a helper found: 33 records, 28 of them one question up to case and spacing, which B answers and A
# does not; of the 5 other questions B answers 3.
TEXTS = ["same text LABEL=x"] * 25 + ["Same  TEXT LABEL=x"] * 3 + [f"other {i} LABEL=y" for i in range(5)]
A = [0.0] * 33
B = [1.0] * 28 + [1.0, 1.0, 1.0, 0.0, 0.0]


def test_repeats_of_one_input_are_one_input_so_a_record_level_win_is_not_resolved() -> None:
    assert compare_paired(A, B, a="cheap", b="smart", min_n=20).decision == "win"  # as the records alone read
    cmp = compare_paired(A, B, a="cheap", b="smart", min_n=20, groups=text_groups(TEXTS))
    assert (cmp.n, cmp.n_records) == (6, 33) and cmp.decision == "no_verdict" and cmp.winner is None
    assert cmp.verdict.startswith("no verdict: n = 6 distinct inputs (33 records) is below the minimum of 20 "
                                  "distinct inputs")
    # Forced, the exact test sees 4 inputs won one way (p = 0.125): not resolved either.
    forced = compare_paired(A, B, a="cheap", b="smart", min_n=20, force=True, groups=text_groups(TEXTS))
    assert forced.decision == "no_difference" and (forced.a_only, forced.b_only) == (0, 4)
    assert forced.mcnemar_p == pytest.approx(0.125) and "n = 6 distinct inputs (33 records)" in forced.verdict
    assert (forced.mean_a, forced.mean_b) == (0.0, pytest.approx(4 / 6))  # each input weighted once


@pytest.mark.parametrize(("a", "b"), [
    ([1, 0] * 30 + [1] * 10, [0, 1] * 30 + [0] * 10),     # 0/1 scores: Newcombe and McNemar
    ([0.5, 0.25, 1.0, 0.75] * 6, [0.25, 0.5, 0.5, 0.0] * 6),  # graded: bootstrap and sign flips
])
def test_without_repeats_the_comparison_is_the_record_level_one(a: list[float], b: list[float]) -> None:
    plain = compare_paired(a, b, a="x", b="y", min_n=20)
    grouped = compare_paired(a, b, a="x", b="y", min_n=20, groups=text_groups([f"q{i}" for i in range(len(a))]))
    assert grouped == plain and grouped.n_records is None


def test_cluster_means_average_each_input_in_first_seen_order() -> None:
    xs, ys = cluster_means([1, 0, 1, 0.5], [0, 0, 1, 1], ["k", "j", "k", "i"])
    assert (xs, ys) == ([1.0, 0, 0.5], [0.5, 0, 1])
    with pytest.raises(UsageError) as err:
        cluster_means([1, 0], [0, 0], ["k"])
    assert err.value.field == "groups"
    # A request whose text was not captured is an input of its own.
    assert len(set(text_groups([None, None, "a", "A "]))) == 3


def test_the_bench_report_and_advisor_count_distinct_inputs(tmp_path: Path) -> None:
    records = [BenchRecord(id=f"r{i:02d}", input=text, output="x") for i, text in enumerate(TEXTS)]
    outcomes = [Outcome(backend=name, record_id=r.id, ok=True, scorer="exact", score=scores[i])
                for name, scores in (("icl", A), ("tuned", B)) for i, r in enumerate(records)]
    report = report_outcomes(outcomes, records, tmp_path, kinds={"icl": "icl", "tuned": "tuned"}, compile=False)
    (cmp,) = report.comparisons
    assert (cmp.n, cmp.n_records, cmp.decision) == (6, 33, "no_verdict")
    assert report.advice is not None and report.advice.verdict == "inconclusive"  # was "graduate" on 33 records
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| icl | tuned | 6 inputs (33 records) |" in text and "count as one input" in text


def test_the_graduation_shadow_comparison_counts_distinct_inputs() -> None:
    def record(i: int, text: str | None) -> OutcomeRecord:
        return OutcomeRecord(input=text, metadata={"id": str(i), "task": "t", "served": "icl"}, outcomes={
            "icl": Side(score=A[i % 33], cost_usd=0.01, role="served"),
            "lora": Side(score=B[i % 33], cost_usd=0.001, role="shadow")})

    repeated = [record(i, TEXTS[i % 33]) for i in range(132)]  # 132 requests, 6 distinct inputs
    decision = decide_promotion(repeated, "t", incumbent="icl", challenger="lora", min_n=100)
    assert (decision.n, decision.comparison.n_records) == (6, 132) and not decision.promote
    assert decision.reasons[0] == "only 6 distinct inputs (132 paired outcomes); the decision needs 100"
    assert "n = 6 distinct inputs (132 paired requests)" in decision.line()
    # Without captured text every request is an input of its own, as before.
    uncaptured = decide_promotion([record(i, None) for i in range(132)], "t", incumbent="icl", challenger="lora",
                                  min_n=100)
    assert uncaptured.n == 132 and uncaptured.comparison.n_records is None and uncaptured.promote


def test_one_group_per_pair_is_required() -> None:
    with pytest.raises(UsageError) as err:
        compare_paired([1, 0], [0, 0], groups=["a", "b", "c"])
    assert err.value.field == "groups"


def test_inputs_in_another_unicode_composition_are_one_input_and_the_report_says_so() -> None:
    # input_key folds Unicode composition (b8dab45); the report's sentence and the README said case and whitespace
    # only, so "café" typed with a combining accent read as another input there.
    from genroute.bench.paired import explain

    groups = text_groups(["Caf\u00e9 open?", "cafe\u0301  open?", "other"])
    assert groups[0] == groups[1] != groups[2]
    assert compare_paired([1, 0, 1], [0, 1, 1], groups=groups).n == 2
    assert "up to case, runs of whitespace and Unicode composition" in explain(20, repeated=True)


def _priced_rows(prefix: str, n: int, copies: int) -> list[dict[str, object]]:
    """``n`` questions, each ``copies`` times in a row: cheap is right on math only, dear on everything; each
    question has costs of its own (the same on its copies)."""
    rng = random.Random(7)
    rows: list[dict[str, object]] = []
    for i in range(n):
        task = "math" if i % 2 else "trivia"
        cheap, dear = rng.uniform(1e-4, 1e-3), rng.uniform(1e-3, 1e-2)
        rows += [{"input": f"{prefix} question {i}?", "metadata": {"task": task, "id": f"{prefix}{i:03d}-{c}"},
                  "outcomes": {"cheap": {"score": float(task == "math"), "cost_usd": cheap},
                               "dear": {"score": 1.0, "cost_usd": dear}}} for c in range(copies)]
    return rows


def test_the_cost_ci_of_a_matrix_comparison_resamples_inputs_not_records(tmp_path: Path) -> None:
    # compile_outcomes' paired cost CI resampled records: 4 copies of each held-out question read as 4 times the
    # evidence, a CI half as wide. Now it resamples inputs, as the quality difference does: the copies add nothing.
    from genroute.bench.offline import compile_outcomes

    train = _priced_rows("train", 40, 1)
    pair = ("cost_aware (task label)", "best single (train)")
    reports = {copies: compile_outcomes(train, eval_source=_priced_rows("eval", 60, copies), learned=False, min_n=10,
                                        out_dir=tmp_path / str(copies)) for copies in (1, 4)}
    once, four = (next(c for c in reports[k].comparisons if (c.router, c.baseline) == pair) for k in (1, 4))
    assert (once.n, once.n_records, four.n, four.n_records) == (60, None, 60, 240)
    # cost_aware sends math to cheap and trivia to dear; the best single is dear.
    rows = _priced_rows("eval", 60, 4)
    router = [r["outcomes"]["cheap" if r["metadata"]["task"] == "math" else "dear"]["cost_usd"] for r in rows]
    single = [r["outcomes"]["dear"]["cost_usd"] for r in rows]
    record_level = paired_bootstrap_ci(router, single)
    assert four.cost_difference_ci == pytest.approx(once.cost_difference_ci)
    width = four.cost_difference_ci[1] - four.cost_difference_ci[0]
    assert width > 1.5 * (record_level[1] - record_level[0]) > 0
    # Without repeats it is the record-level CI, as before.
    assert once.cost_difference_ci == pytest.approx(paired_bootstrap_ci(router[::4], single[::4]))


def test_the_paired_bootstrap_resamples_inputs_given_groups() -> None:
    a, b = [0.5, 0.25, 1.0, 0.75, 0.1] * 6, [0.25, 0.5, 0.5, 0.0, 0.3] * 6
    keys = [f"q{i}" for i in range(30)]
    assert paired_bootstrap_ci(a, b, groups=keys) == paired_bootstrap_ci(a, b)  # no repeat: records are inputs
    copies = [x for x in a for _ in range(5)], [y for y in b for _ in range(5)], [k for k in keys for _ in range(5)]
    grouped = paired_bootstrap_ci(copies[0], copies[1], groups=copies[2])
    assert grouped == pytest.approx(paired_bootstrap_ci(a, b))
    records = paired_bootstrap_ci(copies[0], copies[1])
    assert grouped[1] - grouped[0] > 1.5 * (records[1] - records[0])
    with pytest.raises(UsageError) as err:
        paired_bootstrap_ci(a, b, groups=keys[:3])
    assert err.value.field == "groups"


@pytest.mark.parametrize("texts", [["only one"], ["one text"] * 3], ids=["one record", "one input"])
def test_a_run_with_nothing_to_hold_out_says_so_and_names_an_earlier_policy(tmp_path: Path, texts: list[str]) -> None:
    """A rerun into an earlier run's directory (a smaller --limit) with one record compiled nothing and said
    nothing, and left the earlier run's cost_aware.json and learned files beside a report they do not back without a
    word. They stay (a router may serve them: removing them broke its next start) and the run names them."""
    for name in ("cost_aware.json", "learned.json", "learned.npz"):
        (tmp_path / name).write_text("{}", encoding="utf-8")  # what the earlier, larger run compiled
    records = [BenchRecord(id=f"r{i}", input=text, output="x") for i, text in enumerate(texts)]
    outcomes = [Outcome(backend=name, record_id=r.id, ok=True, scorer="exact", score=1.0)
                for name in ("a", "b") for r in records]
    report = report_outcomes(outcomes, records, tmp_path, kinds={"a": "prompt_template", "b": "prompt_template"})
    assert report.compiled is None
    assert report.compile_note is not None
    assert report.compile_note.startswith("Not compiled: a held-out split needs two records with different inputs")
    assert report.compile_note.endswith(" cost_aware.json, learned.json, learned.npz in the output directory are an "
                                        "earlier run's, left as they were (a router may serve them); they do not "
                                        "describe this run.")
    assert report.compile_note in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert all((tmp_path / name).read_text() == "{}" for name in ("cost_aware.json", "learned.json", "learned.npz"))


@pytest.mark.parametrize(("score", "says"), [(0.0, "scored 0 on every record"), (1.0, "scored 1 on every record")])
def test_a_set_every_backend_scored_alike_on_says_it_tells_them_apart_by_nothing(
        tmp_path: Path, score: float, says: str, caplog: pytest.LogCaptureFixture) -> None:
    # 60 QA records that every backend got wrong (a scorer reading the wrong field): the report read "no difference
    # detected" row by row and compiled a cost_aware policy onto the cheapest backend, without a word that the set
    # had measured nothing.
    records = [BenchRecord(id=f"r{i}", input=f"question {i}", output="x") for i in range(60)]
    outcomes = [Outcome(backend=name, record_id=r.id, ok=True, scorer="exact", score=score, cost_usd=cost)
                for name, cost in (("rag", 0.002), ("chat", 0.001)) for r in records]
    with caplog.at_level("WARNING", logger="genroute"):
        report = report_outcomes(outcomes, records, tmp_path, kinds={"rag": "rag", "chat": "prompt_template"})
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Every record scored alike" in text and f"Every backend (rag, chat) {says}" in text
    assert any(says in r.getMessage() for r in caplog.records)
    assert report.compiled is not None  # the policies are still written: the note says what they rest on


def test_a_set_that_tells_backends_apart_has_no_such_note(tmp_path: Path) -> None:
    records = [BenchRecord(id=f"r{i}", input=f"question {i}", output="x") for i in range(30)]
    outcomes = [Outcome(backend=name, record_id=r.id, ok=True, scorer="exact", score=float(name == "rag" or i % 2))
                for name in ("rag", "chat") for i, r in enumerate(records)]
    report_outcomes(outcomes, records, tmp_path, kinds={"rag": "rag", "chat": "prompt_template"}, compile=False)
    assert "scored alike" not in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_one_backend_compiles_nothing_and_says_so_in_one_line(tmp_path: Path) -> None:
    """A run of one backend (and its @policy row) compiled policies whose held-out rows compared that backend with
    itself ("compiled cost_aware" vs it, "best single", "random": all the same scores). An earlier run's policy in
    the directory is kept, and named."""
    (tmp_path / "cost_aware.json").write_text("{}", encoding="utf-8")  # an earlier run's, of two backends
    records = [BenchRecord(id=f"r{i}", input=f"question {i}", output="x") for i in range(30)]
    outcomes = [Outcome(backend=name, record_id=r.id, ok=True, scorer="exact", score=float(i % 3 != 0))
                for name in ("only", "@policy") for i, r in enumerate(records)]
    report = report_outcomes(outcomes, records, tmp_path, kinds={"only": "prompt_template"})
    assert report.compiled is None and report.compiled_comparisons == ()
    assert report.compile_note == ("Not compiled: only is the only backend with a scored row, and a routing policy "
                                   "chooses between two or more. cost_aware.json in the output directory is an earlier "
                                   "run's, left as it was (a router may serve it); it does not describe this run.")
    assert report.compile_note in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert (tmp_path / "cost_aware.json").read_text() == "{}"  # kept: a router may serve it
    assert [(c.a, c.b) for c in report.comparisons] == [("only", "@policy")]  # that one still compares
    # stats.json is written as a run of two backends writes it: the one backend's figures (no @policy row).
    stats = BenchStats.load(tmp_path / "stats.json")
    assert report.files["stats"] == str(tmp_path / "stats.json") and list(stats.tasks["*"]) == ["only"]
    only = stats.tasks["*"]["only"]
    summary = next(s for s in report.summaries if s.backend == "only")
    assert (only.n, only.quality) == (30, pytest.approx(20 / 30)) and only.quality_ci == summary.quality_ci
    assert stats.input_keys is not None and len(stats.input_keys) == 30
