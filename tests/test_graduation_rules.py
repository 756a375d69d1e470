"""Graduation's rules: the margin and min_n it takes, split mode decided on the two arms unpaired, and challenger
registration that checks its arguments and leaves nothing half made."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from genroute import Router, UsageError
from genroute.bench.stats import compare_unpaired
from genroute.graduation import adecide, decide_promotion, register_local
from genroute.graduation.run import agraduate
from genroute.outcomes import OutcomeRecord, Side

from .conftest import gemini_config
from .redis_fixtures import redis_server, redis_session  # noqa: F401


def paired(n, *, challenger_score, incumbent_score=1.0):
    return [OutcomeRecord(metadata={"id": str(i), "task": "t", "served": "icl"}, outcomes={
        "icl": Side(score=incumbent_score, cost_usd=0.01, role="served"),
        "lora": Side(score=challenger_score, cost_usd=0.001, role="shadow")}) for i in range(n)]


@pytest.mark.parametrize("margin", [math.nan, math.inf, -0.1, "0.05"])
def test_a_margin_that_is_not_a_finite_number_ge_0_is_refused(margin):
    always_wrong = paired(200, challenger_score=0.0)
    with pytest.raises(UsageError) as exc:
        decide_promotion(always_wrong, "t", incumbent="icl", challenger="lora", margin=margin, min_n=100)
    assert exc.value.field == "margin"


@pytest.mark.parametrize("min_n", [0, -3, 2.5, True])
def test_min_n_below_1_is_refused(min_n):
    with pytest.raises(UsageError) as exc:
        decide_promotion(paired(10, challenger_score=1.0), "t", incumbent="icl", challenger="lora", min_n=min_n)
    assert exc.value.field == "min_n"


def arm(i, arm_name, served, score, cost):
    return OutcomeRecord(metadata={"id": f"s{i}", "task": "t", "served": served, "arm": arm_name},
                         outcomes={served: Side(score=score, cost_usd=cost, role="served")})


def test_split_arms_are_compared_unpaired_counting_fallbacks_for_their_arm():
    # 400 requests an arm, all right: the anytime-valid sequence of the difference is about +-0.022.
    records = [arm(i, "lora", "lora", 1.0, 0.001) for i in range(400)]
    records += [arm(1000 + i, "icl", "icl", 1.0, 0.01) for i in range(400)]
    decision = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=50, mode="split")
    assert decision.design == "unpaired" and decision.promote and decision.n == 400
    assert "unpaired" in decision.line() and "anytime-valid 95% CS" in decision.line()
    assert decision.challenger_cost_usd == pytest.approx(0.001) and decision.incumbent_cost_usd == pytest.approx(0.01)
    # Requests routed to the challenger that fell back to the incumbent (every fifth of its arm), answered wrong:
    # they count for the challenger's arm (what its users got), and now a loss beyond the margin is not ruled out.
    records = [arm(2000 + i, "lora", "icl", 0.0, 0.011) if i % 5 == 4 else arm(i, "lora", "lora", 1.0, 0.001)
               for i in range(500)] + records[400:]
    decision = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=50, mode="split")
    assert decision.comparison.n_a == 500 and decision.comparison.mean_a == pytest.approx(0.8)
    assert not decision.promote and "unpaired" in decision.reasons[0]
    few = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=450, mode="split")
    assert not few.promote and "500 (lora) and 400 (icl)" in few.reasons[0]


@pytest.mark.parametrize(("n", "promote"), [(30, False), (60, False), (90, False), (95, True)])
def test_arms_right_on_every_request_promote_only_once_a_loss_beyond_the_margin_is_ruled_out(n, promote):
    """Both arms right every time: the bootstrap CI was [0, 0], so 30 requests an arm promoted, though a challenger
    right 90 % of the time is right on all 30 a twentieth of the time; Newcombe's interval (continuity-corrected)
    reaches below -0.05 until each arm has 92 requests (73 uncorrected; the fixed-horizon rule; the anytime-valid
    one is tested beside it)."""
    records = [arm(i, "lora", "lora", 1.0, 0.001) for i in range(n)]
    records += [arm(1000 + i, "icl", "icl", 1.0, 0.01) for i in range(n)]
    decision = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=30, mode="split",
                                sequential=False)
    assert decision.comparison.ci[0] < 0 < decision.comparison.ci[1]
    assert decision.promote is promote and (promote or "not ruled out" in decision.reasons[0])


@pytest.mark.parametrize(("n", "promote"), [(30, False), (80, True)])
def test_shadow_pairs_that_all_agree_promote_only_once_a_loss_beyond_the_margin_is_ruled_out(n, promote):
    decision = decide_promotion(paired(n, challenger_score=1.0), "t", incumbent="icl", challenger="lora", min_n=30,
                                sequential=False)   # Newcombe's interval, at one look
    assert decision.comparison.ci[0] < 0 < decision.comparison.ci[1]  # no discordant pair: the bootstrap's [0, 0]
    assert decision.promote is promote


def simulated(rng, n, diff):
    """``n`` shadow records of 0/1 scores: the incumbent right 80 % of the time, the two disagreeing on 20 % of
    requests, the challenger ``diff`` better."""
    cells = rng.choice(4, size=n, p=[0.8 - (0.2 - diff) / 2, (0.2 + diff) / 2, (0.2 - diff) / 2, 0.1 - diff / 2])
    return [OutcomeRecord(metadata={"id": str(i), "task": "t", "served": "icl"}, outcomes={
        "icl": Side(score=float(cell in (0, 2)), cost_usd=0.01, role="served"),
        "lora": Side(score=float(cell in (0, 1)), cost_usd=0.001, role="shadow")}) for i, cell in enumerate(cells)]


def test_deciding_at_every_look_promotes_a_challenger_worse_by_the_margin_at_most_5_percent_of_the_time():
    """A team decides after every 100 requests, up to 1,000, until told "promote". The challenger is 0.05 worse: the
    rule's null hypothesis. With the fixed-horizon CI (2.5 % one-sided at one look) some look promoted it in 11 of
    100 runs; the anytime-valid sequence, which holds at every look at once (2.5 % one-sided), in 1
    (benchmarks/promotion_peeking.py measures it at 20 looks)."""
    rng = np.random.default_rng(5)
    promoted = {False: 0, True: 0}
    for _ in range(100):
        records = simulated(rng, 1000, -0.05)
        for sequential in (False, True):
            promoted[sequential] += any(
                decide_promotion(records[:n], "t", incumbent="icl", challenger="lora", min_n=100,
                                 sequential=sequential).promote for n in range(100, 1001, 100))
    assert promoted[False] > 5 and promoted[True] <= 5


def test_the_report_names_the_rule_that_decided():
    records = paired(400, challenger_score=1.0)   # no discordant pair: the sequence is about +-0.018 at 400 (+-0.070 at 100)
    anytime = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=30)
    assert anytime.rule == "anytime-valid" and anytime.promote and -0.05 < anytime.confidence_sequence[0] < 0
    assert "anytime-valid 95% CS [-0.0" in anytime.line() and "(fixed-horizon 95% CI [" in anytime.line()
    fixed = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=30, sequential=False)
    assert fixed.rule == "fixed-horizon" and fixed.confidence_sequence is None and fixed.promote
    assert "fixed-horizon 95% CI [-0.0" in fixed.line() and ", valid for one look (margin 0.05)" in fixed.line()
    few = decide_promotion(records[:100], "t", incumbent="icl", challenger="lora", min_n=30)
    assert not few.promote and few.reasons[0].startswith("a quality loss larger than the margin is not ruled out "
                                                         "(anytime-valid 95% CS lower bound -0.")
    split = [arm(i, "lora", "lora", 1.0, 0.001) for i in range(100)] + \
        [arm(1000 + i, "icl", "icl", 1.0, 0.01) for i in range(100)]
    unpaired = decide_promotion(split, "t", incumbent="icl", challenger="lora", min_n=30, mode="split")
    assert unpaired.reasons[0].startswith("a quality loss larger than the margin is not ruled out (unpaired (split "
                                          "arms) anytime-valid 95% CS lower bound")
    # A split's sequence: the k-th request of each arm matched (the default), or the union of the two arms'.
    assert unpaired.rule == "anytime-valid matched arms" and "(the k-th request of each arm matched; fixed-horizon" \
        in unpaired.line()
    union = decide_promotion(split, "t", incumbent="icl", challenger="lora", min_n=30, mode="split",
                             split_sequence="union")
    assert union.rule == "anytime-valid union of arms" and "(union of the two arms' 97.5% sequences; " in union.line()
    assert union.confidence_sequence[0] < unpaired.confidence_sequence[0] < 0   # -0.082 and -0.070
    with pytest.raises(UsageError) as exc:
        decide_promotion(split, "t", incumbent="icl", challenger="lora", mode="split", split_sequence="narrower")
    assert exc.value.field == "split_sequence"


def test_a_repeated_input_enters_the_sequence_once_with_its_first_record():
    from genroute.bench.sequential import paired_difference_cs

    def record(i, text, lora):
        return OutcomeRecord(input=text, metadata={"id": str(i), "task": "t", "served": "icl"}, outcomes={
            "icl": Side(score=1.0, cost_usd=0.01, role="served"), "lora": Side(score=lora, cost_usd=0.001,
                                                                               role="shadow")})

    # 200 inputs; the challenger wrong on the first 10; each later repeated, the copies answered as the first was
    # except input 0's copy, answered right (a value the sequence looked at is not revised).
    records = [record(i, f"question {i}", float(i >= 10)) for i in range(200)]
    records += [record(1000 + i, f"QUESTION  {i}", float(i >= 10 or i == 0)) for i in range(200)]
    decision = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=30)
    assert decision.n == 200 and decision.comparison.n_records == 400
    expected = paired_difference_cs([float(i >= 10) for i in range(200)], [1.0] * 200)
    assert decision.confidence_sequence == pytest.approx(expected)


def test_scores_outside_0_1_are_refused_by_the_anytime_valid_rule_and_sequential_must_be_a_bool():
    records = paired(100, challenger_score=5.0)   # a scorer on a 0-10 scale
    with pytest.raises(UsageError, match=r"in \[0, 1\]") as exc:
        decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=30)
    assert exc.value.field == "scores"
    assert decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=30, sequential=False).n == 100
    with pytest.raises(UsageError) as exc:
        decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=30, sequential="yes")
    assert exc.value.field == "sequential"


def test_the_unpaired_interval_covers_the_difference_of_means():
    comparison = compare_unpaired([1.0] * 70 + [0.0] * 30, [1.0] * 50 + [0.0] * 50, a="a", b="b")
    assert comparison.difference == pytest.approx(0.2)
    low, high = comparison.ci
    assert 0.05 < low < 0.2 < high < 0.35   # SE of the difference ~0.068: about +-0.13
    assert compare_unpaired([], [1.0]).ci == (0.0, 0.0)


def test_a_split_challenger_is_decided_end_to_end(gemini_server, tmp_path):
    cfg = gemini_config(gemini_server)
    cfg["backends"]["lite"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    cfg["policy"] = {"kind": "challenger", "task": "t", "backend": "lite", "mode": "split", "share": 0.5,
                     "policy": {"kind": "static", "backend": "chat"}}
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy"}
    with Router.from_config(cfg) as router:
        served = []
        for i in range(40):
            result = router.generate(f"question {i}", task="t")
            served.append(result.backend)
            router.feedback(result, label=result.text)   # every answer right
        # A few dozen requests cannot rule out a loss of 0.05 (14 right of 14 leaves it at about -0.2): a wide margin.
        report = router._portal.call(adecide(router, "t", challenger="lite", incumbent="chat", min_n=5, margin=0.5))
    promotion = report.promotion
    assert promotion.design == "unpaired" and promotion.n == min(served.count("lite"), served.count("chat")) >= 5
    assert 0 < promotion.challenger_cost_usd < promotion.incumbent_cost_usd
    assert promotion.promote and "unpaired" in report.lines[0]
    assert promotion.rule == "anytime-valid matched arms"   # a 50 % share: the arms matched


@pytest.mark.parametrize(("share", "rule"), [(0.3, "anytime-valid matched arms"), (0.05, "anytime-valid union of arms"),
                                             (0.95, "anytime-valid union of arms")])
def test_the_split_sequence_is_chosen_from_the_configured_share(gemini_server, tmp_path, share, rule):
    """Before any outcome is seen: a share below 10 % (or above 90 %) leaves most of the larger arm's records
    unmatched, and there the union of the two arms' sequences is narrower."""
    cfg = gemini_config(gemini_server)
    cfg["backends"]["lite"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    cfg["policy"] = {"kind": "challenger", "task": "t", "backend": "lite", "mode": "split", "share": share,
                     "policy": {"kind": "static", "backend": "chat"}}
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy"}
    with Router.from_config(cfg) as router:
        report = router._portal.call(adecide(router, "t", challenger="lite", incumbent="chat", promote=False))
    assert report.promotion.rule == rule and not report.promotion.promote


def test_a_split_keeps_the_sequence_it_started_with_across_a_restart(gemini_server, redis_server, tmp_path, caplog):
    """The share changed across the 10 % line between two looks, the router restarted in between: the second look
    keeps the first one's sequence (a switch between looks voids both guarantees), pinned in the Redis state."""
    def decide(share: float) -> str:
        cfg = gemini_config(gemini_server)
        cfg["backends"]["lite"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
        cfg["policy"] = {"kind": "challenger", "task": "t", "backend": "lite", "mode": "split", "share": share,
                         "policy": {"kind": "static", "backend": "chat"}}
        cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy"}
        cfg["state"] = {"kind": "redis", "url": redis_server.url, "prefix": "pin:"}
        with Router.from_config(cfg) as router:
            report = router._portal.call(adecide(router, "t", challenger="lite", incumbent="chat", promote=False))
        return report.promotion.rule

    assert decide(0.3) == "anytime-valid matched arms"
    with caplog.at_level(logging.WARNING, logger="genroute"):
        assert decide(0.05) == "anytime-valid matched arms"  # not the union a 5 % share would pick at the start
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith("genroute")]
    assert "(5%) now picks the union sequence" in warning and "started on the matched one" in warning
    redis_server.flush()  # a new experiment (its state gone): the sequence is chosen from the share again
    assert decide(0.05) == "anytime-valid union of arms"


def test_challenger_arguments_are_named(gemini_server, tmp_path):
    cfg = gemini_config(gemini_server)
    cfg["backends"]["pro"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-pro"}
    with Router.from_config(cfg) as router:
        pro = router.backends.pop("pro")
        for kwargs, field in [({"share": 2}, "share"), ({"mode": "bogus"}, "mode"), ({"task": ""}, "task"),
                              ({"name": ""}, "name"), ({"backend": "pro"}, "backend")]:
            args = {"name": "new", "backend": pro, "task": "t", **kwargs}
            with pytest.raises(UsageError) as exc:
                router.add_challenger(args.pop("name"), args.pop("backend"), **args)
            assert exc.value.field == field
        for task in ("", None):
            with pytest.raises(UsageError) as exc:
                router.promote(task, "chat")
            assert exc.value.field == "task"
        assert sorted(router.backends) == ["chat"]


def test_a_refused_register_local_leaves_the_router_as_it_was(gemini_server, tmp_path):
    cfg = gemini_config(gemini_server)
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"not loaded until used")
    with Router.from_config(cfg) as router:
        for kwargs, field in [({"name": "chat"}, "name"), ({"share": 5}, "share"), ({"mode": "x"}, "mode"),
                              ({"engine_options": {"bogus": 1}}, "engine_options"),
                              ({"backend_options": {"temperature": "hot"}}, "backend_options")]:
            args = {"name": "tuned", "task": "t", "mode": "shadow", "share": 1.0, **kwargs}
            with pytest.raises(UsageError) as exc:
                register_local(router, args.pop("name"), adapter, **args)
            assert exc.value.field == field
            assert sorted(router.resources.engines) == ["gemini"] and sorted(router.backends) == ["chat"]
        # A missing adapter (or a directory) was registered, to fail at the first request routed to it.
        for wrong in (tmp_path / "missing.gguf", tmp_path, None):
            with pytest.raises(UsageError) as exc:
                register_local(router, "tuned", wrong, task="t", mode="shadow", share=1.0)
            assert exc.value.field == "adapter"
            assert sorted(router.resources.engines) == ["gemini"] and sorted(router.backends) == ["chat"]
        register_local(router, "tuned", adapter, task="t", mode="shadow", share=1.0)   # the retry goes through
        assert "tuned_engine" in router.resources.engines and router.decide("x", task="t").shadow == ("tuned",)
        with pytest.raises(UsageError) as exc:   # checked before the export and minutes of tuning
            router._portal.call(agraduate(router, "t", out_dir=tmp_path / "grad", name="other", share=5))
        assert exc.value.field == "share" and not (tmp_path / "grad").exists()


def test_a_local_challenger_against_a_cloud_incumbent_is_priced_at_what_each_is_billed():
    """The README said promotion compares "cloud-equivalent cost for local models": a local challenger against a
    cloud incumbent is compared at measured cost (the local model free), cloud-equivalent only when both are local."""
    def records(icl_cost):
        return [OutcomeRecord(metadata={"id": str(i), "task": "t", "served": "icl"}, outcomes={
            "icl": Side(score=1.0, cost_usd=icl_cost, cloud_equivalent_cost_usd=0.004, role="served"),
            "lora": Side(score=1.0, cost_usd=0.0, cloud_equivalent_cost_usd=0.002, role="shadow")}) for i in range(80)]

    mixed = decide_promotion(records(0.01), "t", incumbent="icl", challenger="lora", min_n=30)
    assert (mixed.cost_basis, mixed.challenger_cost_usd, mixed.incumbent_cost_usd) == ("measured", 0.0, 0.01)
    local = decide_promotion(records(0.0), "t", incumbent="icl", challenger="lora", min_n=30)
    assert (local.cost_basis, local.challenger_cost_usd, local.incumbent_cost_usd) == ("cloud-equivalent", 0.002, 0.004)


def _tuned_and_new(trained, new):
    """Paired requests: on the ``trained`` inputs (repeats of the tuning set's, in another spelling) the challenger is
    always right and the incumbent half the time; on the ``new`` ones the challenger is wrong on a fifth of them."""
    rows = []
    for i, text in enumerate(trained):
        rows.append((f"  {text.upper()} ", 1.0, float(i % 2)))
    for i, text in enumerate(new):
        rows.append((text, float(i % 5 != 0), 1.0))
    return [OutcomeRecord(input=text, output="yes", metadata={"id": f"q{n}", "task": "t", "served": "chat"},
                          outcomes={"chat": Side(score=inc, cost_usd=0.001, role="served"),
                                    "lora": Side(score=ch, cost_usd=0.0001, role="shadow")})
            for n, (text, ch, inc) in enumerate(rows)]


def test_requests_on_inputs_the_challenger_was_tuned_on_are_left_out_of_the_promotion(gemini_server, tmp_path):
    """Production repeats the questions the tuning set was exported from; on those the tuned challenger recalls its
    training labels, and the promotion counted them: a challenger worse on new requests was promoted."""
    import json

    from genroute.graduation.export import TuningSet
    from genroute.graduation.run import GraduationReport
    from genroute.knowledge.examples import input_key
    from genroute.outcomes import OutcomeStore

    trained = [f"training question {i}" for i in range(200)]
    # The captured requests the tuning set was exported from: served before the challenger existed, no side of its.
    exported = [OutcomeRecord(input=text, output="yes", metadata={"id": f"e{i}", "task": "t", "served": "chat"},
                              outcomes={"chat": Side(score=1.0, cost_usd=0.001, role="served")})
                for i, text in enumerate(trained[:50])]
    records = exported + _tuned_and_new(trained, [f"new question {i}" for i in range(200)])
    everything = decide_promotion(records, "t", incumbent="chat", challenger="lora", min_n=100)
    assert everything.promote and everything.tuned_on == 0   # what was decided before: +0.05 on recall
    keys = frozenset(input_key(t) for t in trained)
    fair = decide_promotion(records, "t", incumbent="chat", challenger="lora", min_n=100, tuned_on=keys)
    assert fair.tuned_on == 200 and fair.n == 200 and not fair.promote   # the pairs left out, not the exported
    split = decide_promotion(records, "t", incumbent="chat", challenger="lora", min_n=100, mode="split",
                             tuned_on=keys)
    assert split.tuned_on == 250 and split.comparison.n_b == 200   # the chat arm's served requests on those inputs
    store = OutcomeStore(tmp_path / "outcomes.db")
    for record in records:
        store.upsert_sync(record)
    # A local tuned challenger: the keys its tuning run wrote beside the adapter (tune_result.json).
    adapter = tmp_path / "adapter" / "adapter.gguf"
    adapter.parent.mkdir()
    adapter.write_bytes(b"never loaded: no request runs")
    (adapter.parent / "tune_result.json").write_text(json.dumps({"input_keys": sorted(keys)}))
    cfg = gemini_config(gemini_server)
    cfg["backends"]["lite"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy", "capture": True}
    with Router.from_config(cfg) as router:
        register_local(router, "lora", adapter, task="t", mode="shadow", share=1.0)
        report = router._portal.call(adecide(router, "t", challenger="lora", incumbent="chat", min_n=100,
                                             promote=False))
        promotion = report.promotion
        assert promotion.tuned_on == 200 and promotion.n == 200 and not promotion.promote
        assert "200 requests left out: their input is one the model was tuned on" in report.lines[0]
        # A Vertex AI tuned model lists no inputs of its own: the graduation's tuning set (its saved report) does.
        train = tmp_path / "train.jsonl"
        train.write_text("".join(json.dumps({"input": t, "output": "yes"}) + "\n" for t in trained))
        tuning = TuningSet(task="t", captured=200, unique=200, conflicting=0, invalid=0, train=200, eval=0,
                           train_path=str(train), eval_path=str(tmp_path / "eval.jsonl"))
        relabelled = exported + [r.model_copy(update={"outcomes": {"chat": r.outcomes["chat"],
                                                                   "lite": r.outcomes["lora"]}})
                                 for r in records if "lora" in r.outcomes]
        with_lite = tmp_path / "lite.db"
        lite_store = OutcomeStore(with_lite)
        for record in relabelled:
            lite_store.upsert_sync(record)
    cfg["outcomes"]["path"] = str(with_lite)
    with Router.from_config(cfg) as router:
        saved = GraduationReport(task="t", challenger="lite", tuning_set=tuning)
        report = router._portal.call(adecide(router, "t", challenger="lite", incumbent="chat", min_n=100,
                                             promote=False, report=saved))
        assert report.promotion.tuned_on == 200 and not report.promotion.promote
        blind = router._portal.call(adecide(router, "t", challenger="lite", incumbent="chat", min_n=100,
                                            promote=False))
        assert blind.promotion.tuned_on == 0 and blind.promotion.promote   # nothing says what lite was tuned on


def test_the_saved_tuning_set_is_found_from_another_directory(tmp_path, monkeypatch):
    """`genroute graduate --out grad` then `genroute graduate --decide --out ...` from elsewhere: the saved report named
    `grad/train.jsonl` relative to where the graduation ran, so its inputs were not found and not left out."""
    from genroute.graduation import export_tuning_set
    from genroute.graduation.trained import tuned_inputs
    from genroute.knowledge.examples import input_key

    monkeypatch.chdir(tmp_path)
    records = [OutcomeRecord(input=f"question {i}", output="yes", metadata={"id": f"r{i}", "task": "t"},
                             outcomes={"icl": Side(score=1.0)}) for i in range(30)]
    tuning = export_tuning_set(records, "t", "grad", eval_share=0.0, seed=0, min_examples=20)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert tuned_inputs(None, (), tuning) == {input_key(f"question {i}") for i in range(30)}  # type: ignore[arg-type]
