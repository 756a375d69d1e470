"""The compiled cost weight's selection rule: tables of constructed out-of-fold outcomes whose answer is known,
the option's validation, and compiling a learned policy from benchmark outcomes where a dearer backend's edge is
noise (the rule must not pay for it) or real (it must)."""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genroute.bench.cli import bench_main
from genroute.bench.compile import compile_policy
from genroute.bench.datasets import BenchRecord
from genroute.bench.runner import Outcome
from genroute.errors import ConfigError, UsageError
from genroute.policies.cost_weight import CostWeightRule, as_rule, choose, cross_validate, fold_of
from genroute.policies.learned import train

WEIGHTS = (0.0, 1e6)  # column 0: a dear setting, column 1: always the cheap backend


def _columns(n: int, extra_right: int) -> tuple[np.ndarray, np.ndarray]:
    """The cheap setting right on the first half; the dear one on the same records plus ``extra_right`` more."""
    cheap = np.zeros(n)
    cheap[: n // 2] = 1
    dear = cheap.copy()
    dear[n // 2: n // 2 + extra_right] = 1
    costs = np.column_stack([np.full(n, 3.0), np.full(n, 1.0)])
    return np.column_stack([dear, cheap]), costs


def _se(n: int, k: int) -> float:
    """Paired standard error of a difference that is 1 on k of n records and 0 elsewhere."""
    p = k / n
    return math.sqrt(p * (1 - p) * n / (n - 1) / n)


@pytest.mark.parametrize(("extra", "rule", "weight"), [
    # 3 of 100 extra: +0.03, 1.75 paired SEs — beyond one SE, inside the 95 % interval (1.96 SEs).
    (3, "best", 0.0), (3, "one_se", 0.0), (3, "resolved", 1e6),
    # 10 of 100 extra: +0.10, 3.3 SEs — resolved: every rule pays for it.
    (10, "best", 0.0), (10, "one_se", 0.0), (10, "resolved", 0.0),
    # 0 extra: a tie, and the cheaper setting wins every rule.
    (0, "best", 1e6), (0, "one_se", 1e6), (0, "resolved", 1e6),
])
def test_rule_picks_the_known_weight(extra: int, rule: str, weight: float) -> None:
    scores, costs = _columns(100, extra)
    choice = choose(scores, costs, WEIGHTS, CostWeightRule(rule=rule), folds=5)  # type: ignore[arg-type]
    assert choice.weight == weight
    assert choice.best_quality == pytest.approx(0.5 + extra / 100) and choice.n == 100
    if weight == 1e6 and extra:
        assert choice.standard_error == pytest.approx(_se(100, extra))
        assert choice.quality == 0.5 and choice.cost_usd == 1.0 and "not worth its cost" in choice.summary()


def test_too_few_records_to_cross_validate_are_not_reported_as_cross_validated() -> None:
    """Below four records the summary read "0-fold cross-validation ... out-of-fold quality ... (the best
    out-of-fold quality)": nothing was routed out of fold."""
    from genroute.policies.cost_weight import cross_validate

    scores, costs = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), np.array([[3.0, 1.0]] * 3)
    choice = cross_validate(scores, costs, CostWeightRule(), seed=0, fit_fold=lambda _tr, _te: lambda _w: None)
    assert choice.folds == 0 and choice.weight == max(WEIGHTS) and choice.quality == pytest.approx(1 / 3)
    text = choice.summary()
    assert "too few to cross-validate" in text and "out-of-fold" not in text and "0-fold" not in text


def test_one_se_is_one_standard_error_and_resolved_follows_the_confidence() -> None:
    scores, costs = _columns(100, 3)  # 1.75 SEs apart
    assert choose(scores, costs, WEIGHTS, CostWeightRule(rule="resolved", confidence=0.9), folds=5).weight == 0.0
    assert choose(scores, costs, WEIGHTS, CostWeightRule(rule="resolved", confidence=0.95), folds=5).weight == 1e6
    assert CostWeightRule(rule="one_se").margin == 1.0
    assert CostWeightRule().rule == "resolved" and CostWeightRule().margin == pytest.approx(1.959964, abs=1e-6)


def test_the_cheapest_eligible_weight_is_chosen_by_cost_not_by_position() -> None:
    # Three settings within noise of each other; the middle one is the cheapest.
    scores = np.column_stack([np.r_[np.ones(50), np.zeros(50)]] * 3)
    costs = np.column_stack([np.full(100, 2.0), np.full(100, 0.5), np.full(100, 1.0)])
    assert choose(scores, costs, (0.0, 0.3, 1e6), CostWeightRule(), folds=5).weight == 0.3


@pytest.mark.parametrize(("value", "field"), [
    ("cheapest", "cost_weight_rule.rule"),
    ({"rule": "one_se", "confidence": 1.5}, "cost_weight_rule.confidence"),
    ({"folds": 1}, "cost_weight_rule.folds"),
    ({"rule": "best", "margin": 2}, "cost_weight_rule.margin"),
])
def test_bad_rule_is_a_typed_error_naming_the_field(value: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        as_rule(value)  # type: ignore[arg-type]
    assert info.value.field == field and isinstance(info.value, UsageError)


def test_rule_values_accepted() -> None:
    assert as_rule(None) is None
    assert as_rule("one_se") == CostWeightRule(rule="one_se")
    assert as_rule({"rule": "best", "folds": 3}) == CostWeightRule(rule="best", folds=3)


def test_cross_validate_routes_each_record_by_a_model_that_did_not_see_it() -> None:
    scores, costs = _columns(40, 0)
    seen: list[tuple[int, int]] = []

    def fit_fold(train_mask: np.ndarray, test_mask: np.ndarray):  # type: ignore[no-untyped-def]
        assert not (train_mask & test_mask).any() and (train_mask | test_mask).all()
        seen.append((int(train_mask.sum()), int(test_mask.sum())))
        return lambda w: np.full(int(test_mask.sum()), 0 if w < 1 else 1)

    choice = cross_validate(scores, costs, CostWeightRule(folds=4), seed=0, fit_fold=fit_fold, weights=WEIGHTS)
    assert seen == [(30, 10)] * 4 and choice.folds == 4 and choice.weight == 1e6  # a tie: the cheap one
    # Too few records for two folds of two: no cross-validation, the largest weight.
    tiny = cross_validate(scores[:3], costs[:3], CostWeightRule(), seed=0, fit_fold=fit_fold, weights=WEIGHTS)
    assert tiny.folds == 0 and tiny.weight == 1e6 and len(seen) == 4


class _WordsEmbedder:
    """Hashed bag of words: inputs that share words are near each other."""

    model = "words-test"

    def embed_array(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 32] += 1.0
        return out


def _bench(n: int, *, dear_edge: str) -> tuple[list[Outcome], list[BenchRecord]]:
    """Two backends on ``n`` records. ``dear_edge="noise"``: the dear one is right where the cheap one is, plus
    on 2 scattered records; ``"real"``: the cheap one fails every "hard" record, the dear one none."""
    rng = random.Random(1)
    records, outcomes = [], []
    for i in range(n):
        hard = i % 2 == 1
        text = (f"hard riddle number {rng.randint(0, 9999)} about knots" if hard else
                f"easy sum {rng.randint(0, 99)} plus {rng.randint(0, 99)}")
        records.append(BenchRecord(id=f"r{i}", input=text, output="x", task="t"))
        if dear_edge == "real":
            cheap, dear = (0.0 if hard else 1.0), 1.0
        else:
            cheap = float(rng.random() < 0.5)
            dear = 1.0 if i in (7, 61) else cheap
        for backend, score, cost in (("cheap", cheap, 0.0001), ("dear", dear, 0.0003)):
            outcomes.append(Outcome(backend=backend, record_id=f"r{i}", task="t", ok=True, score=score,
                                    scorer="exact", cost_usd=cost, latency_s=0.1))
    return outcomes, records


def test_compile_does_not_pay_for_noise(tmp_path: Path) -> None:
    outcomes, records = _bench(200, dear_edge="noise")
    report = compile_policy(outcomes, records, tmp_path, embedder=_WordsEmbedder(), learned=True)
    rows = {r.name: r for r in report.rows}
    held = report.n_held_out
    # The dear backend's edge is 2 records in 200: never resolved, so the compiled weight is "always cheap".
    assert report.learned_cost_weight == 1e6 and report.learned_cost_weight_choice is not None
    assert report.learned_cost_weight_choice["rule"] == "resolved"
    assert rows["compiled learned"].picks == {"cheap": held}
    learned = rows["compiled learned"]
    assert set(learned.costs) == set(learned.scores) and len(learned.costs) == held
    assert "by rule `resolved`" in (report.learned_note or "")
    # The file the compile ships carries the same kind of choice (made on every record).
    from genroute.policies.router_models import RouterModel

    assert RouterModel.load(report.learned_model_path).meta["cost_weight"] == 1e6  # type: ignore[arg-type]
    # Without a rule: the fixed 0.1 of before.
    fixed = compile_policy(outcomes, records, tmp_path / "fixed", embedder=_WordsEmbedder(), cost_weight_rule=None)
    assert fixed.learned_cost_weight == 0.1 and fixed.learned_cost_weight_choice is None


def test_compile_pays_for_a_resolved_gain(tmp_path: Path) -> None:
    outcomes, records = _bench(200, dear_edge="real")
    report = compile_policy(outcomes, records, tmp_path, embedder=_WordsEmbedder())
    rows = {r.name: r for r in report.rows}
    assert report.learned_cost_weight is not None and report.learned_cost_weight < 1e6
    learned = rows["compiled learned"]
    assert learned.quality == 1.0 and set(learned.picks) == {"cheap", "dear"}  # hard -> dear, easy -> cheap
    assert learned.cost_per_request_usd < rows["dear"].cost_per_request_usd


def test_train_reports_the_rule_and_refuses_a_bad_one(tmp_path: Path) -> None:
    outcomes, records = _bench(60, dear_edge="real")
    inputs = {r.id: r.input for r in records}
    rows = [{"input": inputs[o.record_id], "backend": o.backend, "score": o.score, "cost_usd": o.cost_usd,
             "record_id": o.record_id} for o in outcomes]
    report = train(rows, tmp_path / "m.npz", embedder=_WordsEmbedder(), cost_weight_rule="one_se")
    assert report.cost_weight_choice is not None and report.cost_weight_choice.rule == "one_se"
    assert report.cost_weight == report.cost_weight_choice.weight
    with pytest.raises(ConfigError) as info:
        train(rows, tmp_path / "bad.npz", embedder=_WordsEmbedder(), cost_weight_rule={"rule": "one_se", "folds": 0})
    assert info.value.field == "cost_weight_rule.folds" and not (tmp_path / "bad.npz").exists()


def _memorised(questions: int, copies: int) -> list[dict[str, object]]:
    """Each question asked ``copies`` times; a coin says which of two equally priced backends is right on it: the
    text says nothing about the answer, so no router can beat a coin on a question it has not seen."""
    rng = random.Random(3)
    words = [f"w{i}" for i in range(300)]
    rows: list[dict[str, object]] = []
    for q in range(questions):
        text = " ".join(rng.sample(words, 6))
        a_right = rng.random() < 0.5
        for c in range(copies):
            rows += [{"input": text, "backend": b, "score": float(right), "cost_usd": 0.001, "record_id": f"q{q}-{c}"}
                     for b, right in (("a", a_right), ("b", not a_right))]
    return rows


def test_folds_keep_copies_of_an_input_together() -> None:
    from genroute.policies.cost_weight import fold_of

    groups = [i // 3 for i in range(30)]  # ten inputs, three copies each
    fold = fold_of(30, 5, seed=0, groups=groups)
    assert all(len({int(fold[i]) for i in range(30) if groups[i] == g}) == 1 for g in range(10))
    assert np.array_equal(fold_of(30, 5, seed=0, groups=list(range(30))), fold_of(30, 5, seed=0))  # no copies


def test_copies_of_an_input_are_one_piece_of_evidence_for_the_rule() -> None:
    # The dear setting is right on 3 more of 40 inputs than the cheap one: +0.075, paired standard error 0.042, not
    # resolved at 95 %. Every input asked ten times, counted as 400 records, shrank the error to 0.013 and the
    # resolved rule paid for the dear setting.
    scores, costs = _columns(40, 3)
    assert choose(scores, costs, WEIGHTS, CostWeightRule(), folds=5).weight == 1e6
    copies = np.repeat(np.arange(40), 10)
    counted = choose(scores[copies], costs[copies], WEIGHTS, CostWeightRule(), folds=5)
    assert counted.weight == 0.0  # what records counted one by one said
    grouped = choose(scores[copies], costs[copies], WEIGHTS, CostWeightRule(), folds=5, groups=copies.tolist())
    assert grouped.weight == 1e6 and (grouped.n, grouped.n_records) == (40, 400)
    assert grouped.standard_error == pytest.approx(_se(40, 3))
    assert "40 distinct training inputs (400 records)" in grouped.summary()
    plain = choose(scores, costs, WEIGHTS, CostWeightRule(), folds=5, groups=list(range(40)))
    assert plain == choose(scores, costs, WEIGHTS, CostWeightRule(), folds=5)  # no copies: unchanged


def test_train_never_validates_or_tests_a_copy_of_a_training_input(tmp_path: Path) -> None:
    # A copy of a question in another fold, or on the held-out side, was found by kNN at similarity 1: out-of-fold and
    # held-out quality came out near 1 on outcomes no router can predict (a coin per question), not near 0.5.
    report = train(_memorised(80, 3), tmp_path / "m.npz", embedder=_WordsEmbedder(), method="knn", k=1,
                   test_share=0.3, cost_weight_rule="best")
    assert report.cost_weight_choice is not None and report.cost_weight_choice.best_quality < 0.75
    assert report.success_rate < 0.8 and report.n_test % 3 == 0  # whole questions held out


def test_cli_refuses_a_bad_rule_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    matrix = tmp_path / "m.jsonl"
    matrix.write_text('{"input": "q", "metadata": {"id": "a"}, "outcomes": {"x": {"score": 1}}}\n')
    code = bench_main(["--outcomes", str(matrix), "--out", str(tmp_path / "out"), "--cost-weight-rule", "cheapest"])
    assert code == 2 and "cost_weight_rule.rule" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_genroute_compile_refuses_a_bad_rule_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genroute.cli import main as cli

    matrix = tmp_path / "m.jsonl"
    matrix.write_text('{"input": "q", "metadata": {"id": "a", "task": "t"}, "outcomes": {"x": {"score": 1}}}\n')
    assert cli(["compile", "--outcomes", str(matrix), "--out", str(tmp_path / "out"),
                "--cost-weight-rule", "cheapest"]) == 2
    assert "--cost-weight-rule.rule" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cross_validation_deals_folds_over_distinct_inputs() -> None:
    # Folds were counted from records and copies moved to their first copy's fold: two inputs of five copies each
    # made five "folds", some seeds fitting a fold on no training row at all.
    calls: list[tuple[int, int]] = []

    def fit_fold(train_rows: np.ndarray, test_rows: np.ndarray) -> Any:
        calls.append((int(train_rows.sum()), int(test_rows.sum())))
        return lambda w: np.zeros(int(test_rows.sum()), dtype=int)

    scores, costs = np.random.default_rng(0).random((20, 2)), np.ones((20, 2))
    for seed in range(10):
        calls.clear()
        two = cross_validate(scores[:10], costs[:10], CostWeightRule(), seed=seed, fit_fold=fit_fold,
                             groups=["a"] * 5 + ["b"] * 5)
        assert two.folds == 0 and not calls  # two inputs: no two folds of two inputs each
        groups = [g for g in "abcd" for _ in range(5)]
        four = cross_validate(scores, costs, CostWeightRule(), seed=seed, fit_fold=fit_fold, groups=groups)
        assert four.folds == 2 and len(calls) == 2 and all(tr >= 10 and te >= 10 for tr, te in calls)
    # Without copies the folds are as before: a seeded permutation of the records, dealt round-robin.
    assert (fold_of(10, 3, 4, [str(i) for i in range(10)]) == np.random.default_rng(5).permutation(10) % 3).all()


def test_a_learned_fit_always_holds_out_a_test_set_and_keeps_copies_together(tmp_path: Path) -> None:
    # The held-out record could be a later copy of an input whose first copy was in training: its group went
    # with the first copy, and the test set ended empty (n_test 0, routing accuracy nan).
    rows = []
    for i, text in enumerate(["q1", "q1", "q2", "q3", "q4"]):
        for backend, score, cost in (("big", 1.0, 2.0), ("small", float(i % 2), 1.0)):
            rows.append({"record_id": f"r{i}", "backend": backend, "input": text, "score": score, "cost_usd": cost})
    for seed in range(12):
        report = train(rows, tmp_path / f"m{seed}.npz", embedder=_WordsEmbedder(), seed=seed)
        assert report.n_test >= 1 and report.routing_accuracy == report.routing_accuracy  # not nan


@pytest.mark.parametrize(("inputs", "copies"), [(5, 20), (10, 10), (100, 1)])
def test_the_held_out_share_is_a_share_of_the_distinct_inputs(tmp_path: Path, inputs: int, copies: int) -> None:
    # A group was held out when any of its records was drawn (341f71d): a 20 % draw of records hit most inputs
    # asked ten times (train on 20 records, test on 80) and every input asked twenty times, refused as if every
    # record had the same input.
    rows = []
    for q in range(inputs):
        for c in range(copies):
            rows += [{"input": f"question {q} " + "about this " * (q % 7), "backend": b, "score": float(right),
                      "cost_usd": cost, "record_id": f"q{q}-{c}"}
                     for b, right, cost in (("a", q % 2, 0.001), ("b", 1, 0.01))]
    report = train(rows, tmp_path / "m.npz", embedder=_WordsEmbedder(), test_share=0.2)
    assert (report.n_train, report.n_test) == (80, 20) and report.n_test % copies == 0


def test_held_out_inputs_are_the_first_drawn_and_without_copies_the_records_drawn(tmp_path: Path) -> None:
    from genroute.policies.cost_weight import held_out

    order = np.random.default_rng(0).permutation(30)
    assert np.array_equal(held_out(order, 0.2, list(range(30))), np.argsort(order) < 6)  # no copies: as before
    groups = [i // 3 for i in range(30)]
    held = held_out(order, 0.2, groups)
    first = list(dict.fromkeys(groups[i] for i in order))[:2]  # the two inputs whose records come first
    assert sorted({groups[i] for i in np.flatnonzero(held)}) == sorted(first) and held.sum() == 6
    with pytest.raises(ConfigError) as err:  # one input: nothing left to train on
        train([{"input": "q", "backend": b, "score": 1.0, "record_id": f"r{i}"} for i in range(4) for b in "ab"],
              tmp_path / "m.npz", embedder=_WordsEmbedder())
    assert err.value.field == "outcomes" and "1 distinct input(s) of the 4 records" in err.value.message


def test_a_learned_fit_with_no_held_out_share_trains_on_every_record(tmp_path: Path) -> None:
    # test_share=0 (LearnedPolicy.refreshed, the shipped learned.npz) still kept one record back: N-1 trained, and
    # a routing accuracy "held out" on that one record.
    rows = [{"record_id": f"r{i}", "backend": b, "input": f"question {i}", "score": float(b == "big" or i % 2),
             "cost_usd": c} for i in range(6) for b, c in (("big", 2.0), ("small", 1.0))]
    report = train(rows, tmp_path / "m.npz", embedder=_WordsEmbedder(), test_share=0.0, cost_weight_rule=None)
    assert (report.n_train, report.n_test) == (6, 0) and report.single_backend == {}
    assert report.routing_accuracy is None and report.success_rate is None and report.mean_cost_usd is None


def test_a_matrix_learned_fit_reports_the_folds_it_used() -> None:
    # Copies of an input share a fold, so four inputs make four folds of the five asked: the choice said 5.
    from genroute.bench.matrix_routers import learned_fit
    from genroute.bench.outcomes import load_matrix

    matrix = load_matrix([{"input": f"question {i % 4}", "metadata": {"id": f"r{i}"}, "outcomes": {
        "a": {"score": float(i % 2), "cost_usd": 0.001}, "b": {"score": 1.0, "cost_usd": 0.01}}} for i in range(20)])
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    fitted = learned_fit(matrix, matrix, x, x, use_task=False, specs=[{"method": "knn", "k": 3}], folds=5)
    assert {rule: c.folds for rule, c in fitted.cost_weight_choices.items()} == {
        "best": 4, "one_se": 4, "resolved": 4}
    assert "(4-fold cross-validation" in fitted.cost_weight_choices["resolved"].summary()
    # A rule's folds were not passed on: compile_outcomes(cost_weight_rule={"folds": 3}) cross-validated 5-fold.
    fitted = learned_fit(matrix, matrix, x, x, use_task=False, specs=[{"method": "knn", "k": 3}],
                         rule=CostWeightRule(folds=3))
    assert {c.folds for c in fitted.cost_weight_choices.values()} == {3}


def test_a_weight_that_always_routes_to_the_cheapest_says_so_and_routes_as_before(tmp_path: Path) -> None:
    """On 24 records nothing is resolved, so the compiled weight is the largest swept: the model file held
    `"cost_weight": 1000000.0` and the report and each decision `cost weight 1e+06`, which told a reader nothing.
    The file now says what it means beside the number; the number, and so every decision, is unchanged, and a file
    written before (no `cost_weight_means`) loads and routes alike."""
    import json

    from genroute.policies.base import PolicyContext
    from genroute.policies.learned import LearnedConfig, LearnedPolicy
    from genroute.policies.router_models import CHEAPEST_WEIGHT, RouterModel
    from genroute.types import GenerateRequest

    outcomes, records = _bench(24, dear_edge="noise")
    report = compile_policy(outcomes, records, tmp_path / "out", embedder=_WordsEmbedder(), learned=True)
    assert report.learned_cost_weight == CHEAPEST_WEIGHT == 1e6
    assert "cost weight 1e+06 (always the cheapest backend) by rule `resolved`" in (report.learned_note or "")
    path = Path(report.learned_model_path or "")
    meta = RouterModel.load(path).meta
    assert meta["cost_weight"] == 1e6
    assert meta["cost_weight_means"] == ("always the cheapest backend: cost outweighs any difference in predicted "
                                         "quality")
    with np.load(path) as data:  # the same file as an older genroute wrote it
        arrays = {k: data[k] for k in data.files}
    old_meta = json.loads(str(arrays.pop("meta")))
    del old_meta["cost_weight_means"]
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps(old_meta)), **arrays)
    policies = [LearnedPolicy(LearnedConfig(model_path=str(p), default="dear"), embedder=_WordsEmbedder())
                for p in (path, old)]
    for record in records:
        request = GenerateRequest(input=record.input, task="t")
        new_decision, old_decision = (p.decide(request, PolicyContext(catalogue={})) for p in policies)
        assert new_decision.rungs == old_decision.rungs and new_decision.rungs[0].backend == "cheap"
        assert new_decision.reason == old_decision.reason
        assert "cost weight 1e+06 (always the cheapest backend)" in new_decision.reason
