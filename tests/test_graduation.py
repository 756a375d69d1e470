"""Graduation: the tuning-set export, the promotion rule, ``genroute graduate`` on a config, and the small
end-to-end run on the embedded model (ICL -> feedback -> LoRA -> shadow -> decision)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genroute import Router, UsageError
from genroute.cli import main as cli
from genroute.graduation import adecide, decide_promotion, export_tuning_set
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side

from .conftest import gemini_config

ROOT = Path(__file__).resolve().parent.parent


def captured(i, text, label, task="t"):
    return OutcomeRecord(input=text, output=label, metadata={"id": f"r{i}", "task": task},
                         outcomes={"icl": Side(score=1.0)})


def test_export_deduplicates_drops_conflicts_validates_and_splits(tmp_path):
    records = [captured(i, f"review number {i}", "positive" if i % 2 else "negative") for i in range(40)]
    records += [captured(100, "Review  NUMBER 3", "positive"),            # a duplicate of r3 (same label)
                captured(101, "split decision", "positive"), captured(102, "split decision", "negative"),
                captured(103, "other task", "positive", task="u"),
                OutcomeRecord(metadata={"id": "nocap", "task": "t"}, outcomes={"icl": Side(score=1.0)})]
    tuning = export_tuning_set(records, "t", tmp_path, eval_share=0.25, seed=1, min_examples=10)
    assert (tuning.captured, tuning.unique, tuning.conflicting) == (43, 41, 1)
    assert (tuning.train, tuning.eval) == (30, 10)
    train = [json.loads(line) for line in Path(tuning.train_path).read_text().splitlines()]
    evals = [json.loads(line) for line in Path(tuning.eval_path).read_text().splitlines()]
    assert not {r["input"] for r in train} & {r["input"] for r in evals}
    assert all(r["metadata"]["task"] == "t" and r["output"] in ("positive", "negative") for r in train + evals)
    with pytest.raises(UsageError, match="at least 50") as exc:
        export_tuning_set(records, "t", tmp_path, min_examples=50)
    assert exc.value.field == "task"


def test_export_reads_an_input_in_another_unicode_composition_as_the_same_example(tmp_path):
    # The export grouped by lower-cased text while the promotion decision (and the bench) group by input_key, which
    # folds Unicode composition: "café" typed with a combining accent was a second example, which the seeded split
    # could put in eval beside its twin in train.
    records = [captured(i, f"review number {i}", "positive" if i % 2 else "negative") for i in range(20)]
    records += [captured(100, "Caf\u00e9 was great", "positive"), captured(101, "CAFE\u0301 was great", "positive")]
    tuning = export_tuning_set(records, "t", tmp_path, eval_share=0.25, seed=1, min_examples=10)
    assert (tuning.captured, tuning.unique) == (22, 21)


def paired(n, challenger_wrong, incumbent_wrong, *, costs=(0.0001, 0.001), task="t"):
    """``n`` records with both sides scored: the challenger wrong on ``challenger_wrong`` indexes, etc."""
    return [OutcomeRecord(metadata={"id": str(i), "task": task, "served": "icl"}, outcomes={
        "icl": Side(score=float(i not in incumbent_wrong), cost_usd=costs[1], latency_s=0.9, role="served"),
        "lora": Side(score=float(i not in challenger_wrong), cost_usd=costs[0], latency_s=0.3, role="shadow")})
        for i in range(n)]


def test_promotion_accepted_when_the_ci_is_resolved_above_minus_margin_and_cheaper():
    records = paired(300, challenger_wrong=set(range(0, 60)), incumbent_wrong=set(range(2, 64)))
    decision = decide_promotion(records, "t", incumbent="icl", challenger="lora", margin=0.05, min_n=100)
    assert decision.n == 300 and decision.promote and decision.reasons == ()
    assert decision.comparison.ci[0] > -0.05 and decision.comparison.mcnemar_p is not None
    assert decision.challenger_cost_usd < decision.incumbent_cost_usd
    assert decision.line().endswith("-> PROMOTE")


def test_promotion_refused_when_the_ci_is_unresolved_too_small_or_not_cheaper():
    # 40 pairs, equal means, many disagreements: the CI reaches far below -margin.
    wide = paired(40, challenger_wrong=set(range(0, 10)), incumbent_wrong=set(range(10, 20)))
    decision = decide_promotion(wide, "t", incumbent="icl", challenger="lora", margin=0.05, min_n=20)
    assert not decision.promote and decision.comparison.ci[0] <= -0.05
    assert "not ruled out" in decision.reasons[0] and "keep the incumbent" in decision.line()
    few = decide_promotion(wide[:10], "t", incumbent="icl", challenger="lora", min_n=100)
    assert not few.promote and few.reasons[0] == "only 10 paired outcomes; the decision needs 100"
    dear = paired(300, set(range(60)), set(range(2, 64)), costs=(0.002, 0.001))
    refused = decide_promotion(dear, "t", incumbent="icl", challenger="lora", min_n=100)
    assert not refused.promote and refused.reasons[0].startswith("not cheaper")


def test_a_challenger_whose_sides_recorded_no_cost_is_not_promoted_as_free():
    # A label-only side (feedback's score whose shadow write was lost) averaged in as cost 0: a challenger known
    # only by labels read as cheaper than any incumbent and was promoted.
    records = paired(300, challenger_wrong=set(range(0, 60)), incumbent_wrong=set(range(2, 64)))
    unpriced = [r.model_copy(update={"outcomes": {**r.outcomes, "lora": Side(score=r.outcomes["lora"].score)}})
                for r in records]
    decision = decide_promotion(unpriced, "t", incumbent="icl", challenger="lora", min_n=100)
    assert not decision.promote and decision.challenger_cost_usd is None and decision.challenger_latency_p50_s is None
    assert decision.reasons == ("cheaper is not shown: no lora side recorded a cost (unknown, not free)",)
    assert "unknown vs $1.0000 per 1k" in decision.line() and "p50 not recorded vs 0.900s" in decision.line()
    # Some sides unpriced: the mean is over those that recorded a cost.
    half = [r if i % 2 else u for i, (r, u) in enumerate(zip(records, unpriced, strict=True))]
    decision = decide_promotion(half, "t", incumbent="icl", challenger="lora", min_n=100)
    assert decision.promote and decision.challenger_cost_usd == pytest.approx(0.0001)


def lora_app(server, tmp_path):
    """A config file with a `lora` backend beside `chat`, and the `genroute graduate` arguments for it."""
    cfg = gemini_config(server)
    cfg["backends"]["lora"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db")}
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config, ["graduate", "--task", "t", "--config", str(config), "--out", str(tmp_path / "grad")]


def test_rewriting_a_commented_yaml_config_keeps_the_commented_file_beside_it(gemini_server, tmp_path):
    config, base = lora_app(gemini_server, tmp_path)
    commented = "# Why chat: the 2025 eval (see wiki).\n" + config.read_text()
    config.write_text(commented)
    assert cli([*base, "--register-only", "--challenger", "lora"]) == 0
    assert yaml.safe_load(config.read_text())["policy"]["kind"] == "challenger"  # rewritten: comments gone...
    assert (tmp_path / "app.yaml.bak").read_text() == commented  # ...but not lost


def test_a_second_rewrite_keeps_the_backup_of_the_commented_file(tmp_path):
    """A value holding " #" is text, not a comment: the rewritten file (which keeps that text) has no comments, so a
    second rewrite (a local graduation writes twice) leaves the backup of the commented file as it was."""
    from genroute.tuning.config_file import has_comments, write_config

    config = tmp_path / "app.yaml"
    commented = "# Why: the 2025 eval.\nsystem: 'Answer #1 first'\nnote: a #b\n"
    config.write_text(commented)
    write_config(config, {"system": "Answer #1 first", "note": "a #b", "x": 1})
    write_config(config, {"system": "Answer #1 first", "note": "a #b", "x": 2})
    assert (tmp_path / "app.yaml.bak").read_text() == commented
    assert yaml.safe_load(config.read_text())["x"] == 2
    assert not has_comments(config.read_text())
    assert has_comments("a: 1  # why\n") and has_comments("# top\na: 1\n") and has_comments("a: [1, 2] # x\n")
    assert not has_comments("a: 'x # y'\nb: \"#\"\nc: a#b\n")


def test_register_only_reads_the_configs_relative_paths_from_its_directory(gemini_server, tmp_path, monkeypatch):
    # The policy to write was built with paths taken from the working directory: a config that builds was refused.
    config, base = lora_app(gemini_server, tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["policy"] = {"kind": "cost_aware", "stats_path": "stats.json", "default": "chat"}
    config.write_text(yaml.safe_dump(cfg))
    (tmp_path / "stats.json").write_text(json.dumps({"version": 1, "created_at": "2026-01-01T00:00:00+00:00",
                                                     "source": "bench", "tasks": {}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli([*base, "--register-only", "--challenger", "lora"]) == 0
    policy = yaml.safe_load(config.read_text())["policy"]
    assert policy["kind"] == "challenger" and policy["policy"]["stats_path"] == "stats.json"  # written as it was


def test_graduate_cli_registers_a_challenger_and_promotes_it_on_the_outcomes(gemini_server, tmp_path, otel, capsys):
    config, base = lora_app(gemini_server, tmp_path)
    assert cli([*base, "--register-only", "--challenger", "lora"]) == 0
    policy = yaml.safe_load(config.read_text())["policy"]
    assert policy["kind"] == "challenger" and policy["policy"] == {"kind": "static", "backend": "chat"}
    with Router.from_config(config) as router:
        assert router.decide("x", task="t").shadow == ("lora",)
    store = OutcomeStore(tmp_path / "outcomes.db")
    for record in paired(40, set(range(10)), set(range(10, 20))):   # unresolved: stays
        store.upsert_sync(record.model_copy(update={"metadata": {**record.metadata, "served": "chat"},
                                                    "outcomes": {"chat": record.outcomes["icl"],
                                                                 "lora": record.outcomes["lora"]}}))
    assert cli([*base, "--decide", "--challenger", "lora", "--min-n", "20"]) == 0
    assert yaml.safe_load(config.read_text())["policy"]["promoted"] is False
    for record in paired(300, set(range(60)), set(range(2, 64))):    # resolved at one look, cheaper
        store.upsert_sync(record.model_copy(update={"metadata": {**record.metadata, "id": f"b{record.id}",
                                                                 "served": "chat"},
                                                    "outcomes": {"chat": record.outcomes["icl"],
                                                                 "lora": record.outcomes["lora"]}}))
    # Decided again on more traffic: the anytime-valid sequence, which holds at every look, still reaches below
    # -0.05 (-0.080; its upper end, -0.057, is from the first 10 records, all challenger losses: the rows are in
    # order, not shuffled, and a sequence assumes one mean throughout); the fixed-horizon CI (-0.025), valid for one
    # planned look, promotes when asked for.
    assert cli([*base, "--decide", "--challenger", "lora"]) == 0
    assert "anytime-valid 95% CS [-0.080, -0.057]" in capsys.readouterr().out
    assert yaml.safe_load(config.read_text())["policy"]["promoted"] is False
    assert cli([*base, "--decide", "--challenger", "lora", "--fixed-horizon"]) == 0
    assert "fixed-horizon 95% CI [-0.025, +0.036], valid for one look" in capsys.readouterr().out
    assert yaml.safe_load(config.read_text())["policy"]["promoted"] is True
    with Router.from_config(config, **otel.providers) as router:
        assert [r.backend for r in router.decide("x", task="t").rungs] == ["lora", "chat"]
        report = router._portal.call(adecide(router, "t", challenger="lora", min_n=100, sequential=False))
        priced = router._portal.call(adecide(router, "t", challenger="lora", min_n=100, cpu_usd_per_hour=0.04,
                                             sequential=False,
                                             report=report.model_copy(update={"lines": (), "tuning_cpu_s": 360.0})))
    assert "tuning $0.0040: no request times" in priced.advice   # 360 CPU-s at $0.04/h; the test rows have no times
    (span, _) = otel.spans("genroute.graduate.decide")
    assert span.attributes["genroute.graduate.n"] == 340 and span.attributes["genroute.graduate.promote"] is True
    assert span.attributes["genroute.graduate.rule"] == "fixed-horizon" and "genroute.graduate.cs_low" not in \
        span.attributes
    assert [line.split(":")[0] for line in report.lines] == ["decide", "promote", "advisor"]


@pytest.mark.local
def test_small_graduation_end_to_end_on_the_embedded_model(tmp_path):
    """The benchmark's run at CI size: ICL serves, labeled feedback is captured, a tiny LoRA adapter is trained,
    shadows it on fresh traffic, and a decision is made with its statistics."""
    for module in ("torch", "transformers", "peft", "gguf", "llama_cpp"):
        pytest.importorskip(module, reason="local tuning needs the tune-local and local extras")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "benchmarks" / "graduation.py"),
               "--data", str(ROOT / "benchmarks" / "data" / "sentiment" / "eval.jsonl"),
               "--train", "12", "--shadow", "6", "--after", "3", "--epochs", "1", "--max-steps", "2", "--rank", "2",
               "--min-n", "5", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800,  # a loaded machine is slow
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "summary.json").read_text())
    steps = [line.split(":")[0] for line in report["lines"]]
    assert steps == ["export", "tune", "register", "decide", "promote", "advisor"]
    assert report["tuning_set"]["train"] == 12 and Path(report["adapter_path"]).is_file()
    promotion = report["promotion"]
    assert promotion["n"] == 6 and promotion["incumbent"] == "icl" and promotion["challenger"] == "sentiment_lora"
    assert promotion["challenger_input_tokens"] < promotion["incumbent_input_tokens"]   # the bare prompt
    assert promotion["challenger_cost_usd"] < promotion["incumbent_cost_usd"]
    ci_low = promotion["comparison"]["ci"][0]
    assert promotion["promote"] == (ci_low > -promotion["margin"])   # cheaper and n >= min_n hold here
    summary = (out / "summary.md").read_text()
    assert "| shadow phase: shadow | sentiment_lora | 6 |" in summary
    records = OutcomeStore(out / "outcomes.db").records_sync(task="sentiment")
    assert sum(r.input is not None for r in records) == 21   # capture kept every labeled request


def vertex_app(server, tmp_path, outcomes):
    """app.yaml serving task t on a Vertex engine at ``server``, with 30 captured, labeled examples."""
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump({
        "engines": {"vertex": {"kind": "gemini", "base_url": server.base_url,
                               "vertex": {"project": "test-proj", "location": "us-central1"}}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "vertex", "model": "gemini-2.5-flash"}},
        "policy": {"kind": "static", "backend": "chat"},
        "outcomes": {"path": outcomes, "capture": True}}))
    store = OutcomeStore(tmp_path / "outcomes.db")
    for i in range(30):
        store.upsert_sync(captured(i, f"review number {i}: {'great' if i % 2 else 'awful'}",
                                   "positive" if i % 2 else "negative"))
    return config


def test_graduation_with_a_vertex_tuning_job_on_the_loopback_server(gemini_server, tmp_path, monkeypatch, otel):
    from google.oauth2.credentials import Credentials

    from genroute.graduation import agraduate
    from genroute.testing.tuning_routes import TuningRoutes
    from genroute.tuning.vertex import VertexTuningSettings

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gemini_server.base_url)
    jobs = TuningRoutes(gemini_server)
    config = vertex_app(gemini_server, tmp_path, str(tmp_path / "outcomes.db"))
    credentials = Credentials(token="test")
    settings = VertexTuningSettings(base_model="gemini-2.5-flash", name="sentiment", staging_uri="gs://b/runs",
                                    poll_interval_s=0.01, epochs=3, min_examples=10)
    with Router.from_config(config, engine_options={"vertex": {"credentials": credentials}},
                            **otel.providers) as router:
        report = router._portal.call(agraduate(router, "t", out_dir=tmp_path / "grad", vertex=settings,
                                               config_path=config, credentials=credentials, eval_share=0.0))
        decision = router.decide("x", task="t")
    assert [line.split(":")[0] for line in report.lines] == ["export", "tune", "register"]
    assert "JOB_STATE_SUCCEEDED" in report.lines[1] and "x $5/1M (gemini-2.5-flash, unverified 2025 list price)" in report.lines[1]
    # The training split's rows (27 of the 30: 10 % went to the job as validation data, which is not trained on), at
    # four characters a token, x 3 epochs x $5/1M.
    (train,) = [uri for uri in jobs.uploads if uri.endswith("-train.jsonl")]
    trained = [json.loads(line) for line in jobs.uploads[train].splitlines()]
    chars = sum(len(r["contents"][0]["parts"][0]["text"]) + len(r["contents"][1]["parts"][0]["text"]) for r in trained)
    assert len(trained) == 27
    assert report.extra["tuning_cost_usd"] == pytest.approx(chars / 4 * 3 * 5 / 1e6)
    assert decision.shadow == ("sentiment",)
    written = yaml.safe_load(config.read_text())["backends"]["sentiment"]
    assert written["kind"] == "tuned" and written["model"].endswith("/endpoints/1001")
    names = {s.name for s in otel.spans()}
    assert {"genroute.graduate", "genroute.graduate.export", "genroute.graduate.tune",
            "genroute.graduate.register"} <= names
    # The job's estimated cost is on its span, as a call's is (it was on the report alone).
    (tune,) = otel.spans("genroute.graduate.tune")
    assert tune.attributes["gen_ai.usage.cost.amount"] == pytest.approx(report.extra["tuning_cost_usd"])
    assert tune.attributes["gen_ai.usage.cost.currency"] == "USD" and tune.attributes["genroute.cost.estimated"]
    # Its training price is not one genroute could check against the published page: the span says so too.
    assert tune.attributes["genroute.cost.price_unverified"] is True


@pytest.mark.parametrize("how", ["api", "cli"])
def test_graduation_prices_a_vertex_job_at_a_tuning_price_given(gemini_server, tmp_path, monkeypatch, otel, capsys,
                                                                how):
    # `genroute bench` took --tuning-price, graduation had no way to: its Vertex AI job was always priced at the
    # table's unverified 2025 list price. `tuning_usd_per_1m_tokens` / `--tuning-price` now give the price.
    from google.oauth2.credentials import Credentials

    from genroute.graduation import agraduate
    from genroute.testing.credentials import write_credentials
    from genroute.testing.tuning_routes import TuningRoutes
    from genroute.tuning.vertex import VertexTuningSettings

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gemini_server.base_url)
    jobs = TuningRoutes(gemini_server)
    config = vertex_app(gemini_server, tmp_path, str(tmp_path / "outcomes.db"))
    if how == "api":
        credentials = Credentials(token="test")
        settings = VertexTuningSettings(base_model="gemini-2.5-flash", name="sentiment", staging_uri="gs://b/runs",
                                        poll_interval_s=0.01, epochs=3, min_examples=10, tuning_usd_per_1m_tokens=2.5)
        with Router.from_config(config, engine_options={"vertex": {"credentials": credentials}},
                                **otel.providers) as router:
            report = router._portal.call(agraduate(router, "t", out_dir=tmp_path / "grad", vertex=settings,
                                                   config_path=config, credentials=credentials, eval_share=0.0))
        line, cost = report.lines[1], report.extra["tuning_cost_usd"]
        (tune,) = otel.spans("genroute.graduate.tune")
        assert tune.attributes["gen_ai.usage.cost.amount"] == pytest.approx(cost)
        assert tune.attributes["genroute.cost.price_unverified"] is False  # the caller's price, not the table's
    else:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(write_credentials(tmp_path / "adc.json")))
        assert cli(["graduate", "--task", "t", "--config", str(config), "--out", str(tmp_path / "grad"), "--vertex",
                    "--staging-uri", "gs://b/runs", "--name", "sentiment", "--epochs", "3", "--min-examples", "10",
                    "--poll-interval", "0.01", "--eval-share", "0", "--tuning-price", "2.5"]) == 0
        (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("tune:")]
        cost = json.loads((tmp_path / "grad" / "graduation.json").read_text())["extra"]["tuning_cost_usd"]
    (train,) = [uri for uri in jobs.uploads if uri.endswith("-train.jsonl")]
    trained = [json.loads(row) for row in jobs.uploads[train].splitlines()]
    chars = sum(len(r["contents"][0]["parts"][0]["text"]) + len(r["contents"][1]["parts"][0]["text"]) for r in trained)
    assert cost == pytest.approx(chars / 4 * 3 * 2.5 / 1e6)
    assert f"x $2.5/1M (as given) = ${cost:.4f}" in line and "unverified" not in line


@pytest.mark.parametrize(("price", "message"), [
    ("-1", "--tuning-price: Input should be greater than or equal to 0"),
    ("nan", "--tuning-price: Input should be a finite number"),
])
def test_graduate_names_a_bad_tuning_price(gemini_server, tmp_path, capsys, price, message):
    config = vertex_app(gemini_server, tmp_path, str(tmp_path / "outcomes.db"))
    before = config.read_text()
    assert cli(["graduate", "--task", "t", "--config", str(config), "--out", str(tmp_path / "grad"), "--vertex",
                "--staging-uri", "gs://b/runs", "--tuning-price", price]) == 2
    assert message in capsys.readouterr().err
    assert config.read_text() == before and gemini_server.requests == []


def test_the_advisor_uses_measured_volume_tokens_and_tuning_cost():
    from genroute.graduation.payback import advise

    records = [r.model_copy(update={"metadata": {**r.metadata, "at": 1000.0 + 36.4 * i}})
               for i, r in enumerate(paired(100, set(range(20)), set(range(2, 22))))]   # ~100 requests per hour
    decision = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=50)
    text = advise(records, decision, tuning_cost_usd=0.09, tuning_cpu_s=None)
    # saving $0.0009 per request x 100 requests an hour pays $0.09 back in one hour (of 3604 s measured: 1.00 h)
    assert "measured volume 100 requests in 1.00 h (~71,928/month at that rate)" in text
    assert "pays back in 1.0 hours" in text and "saving $0.9000 per 1k requests" in text


@pytest.mark.parametrize("step_s,window", [(0.01, "in 1.0 s (363,636/hour over that window;"),
                                           (35.0, "in 3465.0 s (104/hour over that window;")],
                         ids=["burst", "under-an-hour"])
def test_the_advisor_gives_no_monthly_volume_or_pay_back_from_under_an_hour_of_traffic(step_s, window):
    # 100 requests 10 ms apart read "~259,200,000/month at that rate" and a pay-back "in 0.0 hours".
    from genroute.graduation.payback import MIN_VOLUME_WINDOW_S, advise

    records = [r.model_copy(update={"metadata": {**r.metadata, "at": 1000.0 + step_s * i}})
               for i, r in enumerate(paired(100, set(range(20)), set(range(2, 22))))]
    assert 99 * step_s < MIN_VOLUME_WINDOW_S == 3600
    decision = decide_promotion(records, "t", incumbent="icl", challenger="lora", min_n=50)
    text = advise(records, decision, tuning_cost_usd=0.09, tuning_cpu_s=None)
    assert f"measured volume 100 requests {window} a monthly volume is estimated from at least 1 h of traffic)" in text
    assert "/month" not in text and "pays back" not in text
    assert "tuning $0.0900: no pay-back period from 100 requests over" in text and "(under 1 h of traffic)" in text
    # Without a tuning cost it still states the saving per request, and no monthly figure.
    text = advise(records, decision, tuning_cost_usd=None, tuning_cpu_s=360)
    assert "saving $0.9000 per 1k requests" in text and "/month" not in text


def test_graduate_vertex_cli_end_to_end_on_the_loopback_server(gemini_server, tmp_path, monkeypatch, capsys):
    """`genroute graduate --vertex` as a user runs it: application-default credentials (a credentials file, as
    `gcloud auth application-default login` writes), the data uploaded to Cloud Storage, a tuning job polled to success,
    the tuned endpoint and the challenger policy written into the config, and graduation.json for --decide."""
    from genroute.testing.credentials import ACCESS_TOKEN, write_credentials
    from genroute.testing.tuning_routes import TuningRoutes

    jobs = TuningRoutes(gemini_server)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(write_credentials(tmp_path / "adc.json")))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gemini_server.base_url)
    config = vertex_app(gemini_server, tmp_path, "outcomes.db")   # relative: beside the config
    out = tmp_path / "grad"
    args = ["graduate", "--task", "t", "--config", str(config), "--out", str(out), "--vertex",
            "--base-model", "gemini-2.5-flash", "--staging-uri", "gs://bucket/runs", "--name", "sentiment",
            "--epochs", "2", "--min-examples", "10", "--poll-interval", "0.01", "--mode", "split", "--share", "0.2"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines()] == ["export", "tune", "register"]
    assert "JOB_STATE_SUCCEEDED" in printed and "x $5/1M (gemini-2.5-flash, unverified 2025 list price)" in printed

    # What was sent: the training rows to Cloud Storage, one job for the base model, every call authorized.
    train, validation = sorted(jobs.uploads, key=lambda u: "validation" in u)
    assert train.startswith("gs://bucket/runs/sentiment-") and train.endswith("-train.jsonl")
    rows = {u: [json.loads(line) for line in jobs.uploads[u].splitlines()] for u in (train, validation)}
    assert (len(rows[train]), len(rows[validation])) == (27, 3)   # the tuning job's 10 % validation split
    assert {r["contents"][1]["parts"][0]["text"] for r in rows[train]} == {"positive", "negative"}
    (job,) = jobs.created
    spec = job["supervisedTuningSpec"]
    assert job["baseModel"] == "gemini-2.5-flash"
    assert (spec["trainingDatasetUri"], spec["validationDatasetUri"]) == (train, validation)
    assert spec["hyperParameters"]["epochCount"] in (2, "2")
    assert {r.headers.get("authorization") for r in gemini_server.requests} == {f"Bearer {ACCESS_TOKEN}"}

    # What was written: the tuned endpoint as a backend, the challenger around the old policy, the report.
    written = yaml.safe_load(config.read_text())
    tuned = written["backends"]["sentiment"]
    assert tuned["kind"] == "tuned" and tuned["engine"] == "vertex" and tuned["base_model"] == "gemini-2.5-flash"
    assert tuned["model"] == "projects/test-proj/locations/us-central1/endpoints/1001"
    assert written["policy"] == {"kind": "challenger", "task": "t", "backend": "sentiment", "mode": "split",
                                 "share": 0.2, "promoted": False,
                                 "policy": {"kind": "static", "backend": "chat"}}
    report = json.loads((out / "graduation.json").read_text())
    assert report["challenger"] == "sentiment" and report["extra"]["tuning_cost_usd"] > 0
    assert report["extra"]["job"] == "projects/test-proj/locations/us-central1/tuningJobs/1001"
    with Router.from_config(config) as router:   # the written config builds and splits the task's traffic
        firsts = [router.decide("x", task="t", key=str(i)).rungs[0].backend for i in range(100)]
    assert 5 <= firsts.count("sentiment") <= 40 and set(firsts) == {"sentiment", "chat"}


_CONFIG_WRITES: dict[str, list[str]] = {}


def _record_config_writes(event, args):
    """An audit hook: the text each atomic replace of a watched file (``_CONFIG_WRITES``' keys) puts in place."""
    if event == "os.rename" and str(args[1]) in _CONFIG_WRITES:
        _CONFIG_WRITES[str(args[1])].append(Path(args[0]).read_text())


sys.addaudithook(_record_config_writes)


def test_graduate_vertex_writes_the_tuned_backend_and_its_challenger_in_one_write(gemini_server, tmp_path,
                                                                                  monkeypatch, capsys):
    """`genroute graduate --vertex` wrote the config twice: the tuning job's endpoint as a backend, then the challenger
    policy around the old one. A crash (or an error) between the two left the tuned backend in the config, routed to
    by nothing, and its name taken, so graduating again was refused. The local path writes both at once; so does this."""
    from genroute.testing.credentials import write_credentials
    from genroute.testing.tuning_routes import TuningRoutes

    TuningRoutes(gemini_server)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(write_credentials(tmp_path / "adc.json")))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gemini_server.base_url)
    config = vertex_app(gemini_server, tmp_path, "outcomes.db")
    args = ["graduate", "--task", "t", "--config", str(config), "--out", str(tmp_path / "grad"), "--vertex",
            "--staging-uri", "gs://bucket/runs", "--name", "sentiment", "--min-examples", "10",
            "--poll-interval", "0.01"]
    monkeypatch.setitem(_CONFIG_WRITES, str(config), [])
    assert cli(args) == 0, capsys.readouterr().err
    versions = [yaml.safe_load(text) for text in _CONFIG_WRITES[str(config)]]
    assert len(versions) == 1   # every version a reader (or a crash) could see is the old file or the graduated one
    (written,) = versions
    assert written["backends"]["sentiment"]["tuning_job"].endswith("/tuningJobs/1001")
    assert written["policy"]["kind"] == "challenger" and written["policy"]["backend"] == "sentiment"
    assert yaml.safe_load(config.read_text()) == written


def test_graduate_vertex_cli_names_a_bad_flag_before_sending(gemini_server, tmp_path, capsys):
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(gemini_config(gemini_server)))
    args = ["graduate", "--task", "t", "--config", str(config), "--out", str(tmp_path / "g"), "--vertex",
            "--staging-uri", "gs://b/p", "--poll-interval", "0"]
    assert cli(args) == 2
    assert "--poll-interval" in capsys.readouterr().err
    assert gemini_server.requests == []


def test_graduate_vertex_names_a_misspelt_engine_before_exporting_anything(gemini_server, tmp_path, capsys):
    config = vertex_app(gemini_server, tmp_path, "outcomes.db")
    out = tmp_path / "out"
    code = cli(["graduate", "--task", "t", "--config", str(config), "--out", str(out), "--vertex",
                "--base-model", "gemini-2.5-flash", "--staging-uri", "gs://b/p", "--engine", "vertx",
                "--min-examples", "10"])
    assert code == 2 and "--engine" in capsys.readouterr().err
    assert not out.exists() and gemini_server.requests == []  # nothing exported, nothing sent


def test_decide_names_a_corrupt_saved_report_instead_of_crashing(gemini_server, tmp_path, capsys):
    from genroute.graduation.cli import graduate_main

    from .conftest import gemini_config

    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(gemini_config(gemini_server)))
    out = tmp_path / "work"
    out.mkdir()
    (out / "graduation.json").write_text("{not json")
    assert graduate_main(["--task", "t", "--config", str(config), "--out", str(out), "--decide",
                          "--challenger", "chat"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "graduation.json" in err and "Traceback" not in err
    assert (out / "graduation.json").read_text() == "{not json"  # left for the user to look at


def test_decide_names_a_bad_margin_or_min_n_flag_and_leaves_the_config(gemini_server, tmp_path, capsys):
    config, base = lora_app(gemini_server, tmp_path)
    before = config.read_text()
    assert cli([*base, "--decide", "--challenger", "lora", "--margin", "nan"]) == 2
    assert "--margin" in capsys.readouterr().err
    assert cli([*base, "--decide", "--challenger", "lora", "--min-n", "-3"]) == 2
    assert "--min-n" in capsys.readouterr().err
    assert config.read_text() == before and not (tmp_path / "grad").exists()


@pytest.mark.parametrize("task", ["a.b", "../x", "ünïcode"])
def test_a_task_whose_default_challenger_name_the_config_cannot_take_is_refused_before_tuning(
        gemini_server, tmp_path, capsys, task):
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(gemini_config(gemini_server)))
    before = config.read_text()
    args = ["graduate", "--task", task, "--config", str(config), "--out", str(tmp_path / "g"), "--max-steps", "1"]
    assert cli(args) == 2  # refused before the export or any tuning starts
    assert "--name" in capsys.readouterr().err
    assert config.read_text() == before and not (tmp_path / "g").exists()


@pytest.mark.parametrize(("taken", "suffix", "flag"), [
    ({"backends": {"t_tuned": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}}},
     ".yaml", "--name"),   # graduated before: its challenger serves out/adapter/adapter.gguf
    ({"engines": {"t_tuned_engine": {"kind": "local"}}}, ".yaml", "--name"),
    ({}, ".toml", "--config"),   # a file genroute cannot rewrite
])
def test_a_config_the_tuned_backend_cannot_be_written_into_is_refused_before_tuning(
        gemini_server, tmp_path, capsys, taken, suffix, flag):
    cfg = gemini_config(gemini_server)
    for section, entries in taken.items():
        cfg[section].update(entries)
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "capture": True}
    config = tmp_path / f"app{suffix}"
    if suffix == ".toml":   # no TOML writer among the dependencies
        engine = cfg["engines"]["gemini"]
        config.write_text(f"""
[engines.gemini]
kind = "gemini"
base_url = "{engine['base_url']}"
api_key = "{engine['api_key']}"
[backends.chat]
kind = "prompt_template"
engine = "gemini"
model = "gemini-2.5-flash"
[policy]
kind = "static"
backend = "chat"
[outcomes]
path = "{tmp_path / 'outcomes.db'}"
capture = true
""")
    else:
        config.write_text(yaml.safe_dump(cfg))
    store = OutcomeStore(tmp_path / "outcomes.db")
    for i in range(6):
        store.upsert_sync(captured(i, f"review number {i}", "positive" if i % 2 else "negative"))
    before = config.read_text()
    out = tmp_path / "grad"
    args = ["graduate", "--task", "t", "--config", str(config), "--out", str(out), "--min-examples", "4",
            "--epochs", "1", "--max-steps", "1", "--rank", "1", "--threads", "1"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"{flag}:" in err
    if "backends" in taken:   # what graduate can do instead (it has no --replace)
        assert "or make that backend the challenger with --register-only --challenger t_tuned" in err
    # Nothing exported, nothing trained: an adapter a registered challenger serves is never overwritten.
    assert config.read_text() == before and not out.exists()


def captured_app(cfg, tmp_path):
    """``cfg`` written to app.yaml with captured outcomes on, its store holding six labeled examples of task t."""
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "capture": True}
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(cfg))
    store = OutcomeStore(tmp_path / "outcomes.db")
    for i in range(6):
        store.upsert_sync(captured(i, f"review number {i}", "positive" if i % 2 else "negative"))
    return config


def promotable_app(server, tmp_path):
    """``lora_app`` whose store holds 300 paired outcomes on which `lora` is promoted over `chat`."""
    config, base = lora_app(server, tmp_path)
    store = OutcomeStore(tmp_path / "outcomes.db")
    for record in paired(300, set(range(60)), set(range(2, 64))):    # resolved and cheaper
        store.upsert_sync(record.model_copy(update={"metadata": {**record.metadata, "served": "chat"},
                                                    "outcomes": {"chat": record.outcomes["icl"],
                                                                 "lora": record.outcomes["lora"]}}))
    return config, base


@pytest.mark.parametrize("decide", [False, True])
def test_an_out_that_is_a_file_is_refused_before_tuning_or_promoting(gemini_server, tmp_path, capsys, decide):
    """Graduating used to fail with a FileExistsError at the export; --decide wrote the promotion into the
    config, then failed to save decision.json."""
    config, base = promotable_app(gemini_server, tmp_path)
    before = config.read_text()
    base[base.index("--out") + 1] = str(tmp_path / "taken")
    (tmp_path / "taken").write_text("a file")
    extra = ["--decide", "--challenger", "lora"] if decide else ["--name", "fresh", "--max-steps", "1"]
    assert cli([*base, *extra]) == 2
    assert "--out: cannot write results to" in capsys.readouterr().err
    assert config.read_text() == before and (tmp_path / "taken").read_text() == "a file"


@pytest.mark.parametrize(("flag", "value"), [("--tuning-cost", "nan"), ("--tuning-cost", "-1"),
                                             ("--cpu-usd-per-hour", "-5"), ("--cpu-usd-per-hour", "inf")])
def test_decide_names_a_bad_tuning_cost_or_cpu_price_and_leaves_the_config(gemini_server, tmp_path, capsys, flag,
                                                                           value):
    """They were taken as given: "tuning $nan pays back in nan hours", "$-1.0000 pays back in -0.3 hours"."""
    config, base = promotable_app(gemini_server, tmp_path)
    before = config.read_text()
    assert cli([*base, "--decide", "--challenger", "lora", flag, value]) == 2
    assert f"{flag}: must be a finite number >= 0" in capsys.readouterr().err
    assert config.read_text() == before and not (tmp_path / "grad").exists()
    with Router.from_config(config) as router:
        for keyword in ("tuning_cost_usd", "cpu_usd_per_hour"):
            with pytest.raises(UsageError) as info:
                router._portal.call(adecide(router, "t", challenger="lora", **{keyword: float(value)}))
            assert info.value.field == keyword


@pytest.mark.parametrize(("extra", "flag"), [
    (["--challenger", "lroa"], "--challenger"),                        # a typo
    (["--challenger", "lora", "--incumbent", "caht"], "--incumbent"),
    (["--challenger", "lora", "--incumbent", "lora"], "--incumbent"),  # itself
])
def test_decide_names_a_challenger_or_incumbent_that_is_not_a_backend(gemini_server, tmp_path, capsys, extra, flag):
    """A misspelt name was decided on no outcomes and exited 0: "only 0 paired outcomes; the decision needs 100"."""
    config, base = promotable_app(gemini_server, tmp_path)
    before = config.read_text()
    assert cli([*base, "--decide", *extra]) == 2
    assert f"{flag}: " in capsys.readouterr().err
    assert config.read_text() == before and not (tmp_path / "grad").exists()
    with Router.from_config(config) as router:
        with pytest.raises(UsageError) as info:
            router._portal.call(adecide(router, "t", challenger="lora", incumbent="nope"))
        assert info.value.field == "incumbent"


def test_graduating_again_into_the_same_out_under_a_new_name_leaves_the_served_adapter(gemini_server, tmp_path,
                                                                                       capsys):
    """The first graduation's challenger serves OUT/adapter/adapter.gguf; a second one named otherwise (as the
    refusal of a taken name suggests) trained and replaced that file under it."""
    cfg = gemini_config(gemini_server)
    out = tmp_path / "grad"
    served = out / "adapter" / "adapter.gguf"
    served.parent.mkdir(parents=True)
    served.write_bytes(b"the first graduation's adapter")
    cfg["engines"]["t_tuned_engine"] = {"kind": "local", "lora_path": str(served), "prompt_format": "gemma"}
    cfg["backends"]["t_tuned"] = {"kind": "tuned", "engine": "t_tuned_engine", "model": "gemma-3-270m",
                                  "base_model": "gemma-3-270m"}
    config = captured_app(cfg, tmp_path)
    before = config.read_text()
    args = ["graduate", "--task", "t", "--config", str(config), "--out", str(out), "--name", "t_tuned2",
            "--min-examples", "4", "--epochs", "1", "--max-steps", "1", "--rank", "1", "--threads", "1"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "engine 't_tuned_engine' serves" in err
    assert served.read_bytes() == b"the first graduation's adapter" and config.read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["adapter"]   # nothing exported either


@pytest.mark.parametrize(("extra", "flag"), [
    (["--share", "0"], "--share"),
    (["--mode", "split", "--share", "1.5"], "--share"),
    (["--eval-share", "1"], "--eval-share"),
    (["--register-only", "--challenger", "lora", "--share", "0"], "--share"),
])
def test_graduate_names_the_flag_of_a_bad_share(gemini_server, tmp_path, capsys, extra, flag):
    """They were named as the Python arguments or the config key they became: share, eval_share, policy.share."""
    config, base = lora_app(gemini_server, tmp_path)
    before = config.read_text()
    assert cli([*base, "--max-steps", "1", *extra]) == 2
    assert f"error: {flag}: " in capsys.readouterr().err
    assert config.read_text() == before


@pytest.mark.parametrize("extra", [[], ["--decide"], ["--register-only", "--challenger", "lora"]])
def test_graduate_names_an_empty_task(gemini_server, tmp_path, capsys, extra):
    """An empty --task was blamed on --name ('_tuned' is not a tuned backend name), which was not given."""
    config, base = lora_app(gemini_server, tmp_path)
    before = config.read_text()
    base[base.index("--task") + 1] = ""
    assert cli([*base, *extra]) == 2
    assert "error: --task: " in capsys.readouterr().err
    assert config.read_text() == before and not (tmp_path / "grad").exists()


@pytest.mark.parametrize(("flag", "named"), [("--decide", "--register-only"), ("--fixed-horizon", "--fixed-horizon")])
def test_graduate_refuses_register_only_with_decide(gemini_server, tmp_path, capsys, flag, named):
    """It registered the challenger (its mode printed as None) and left the decision out without a word; and
    --fixed-horizon, which only --decide reads, would be ignored."""
    config, base = lora_app(gemini_server, tmp_path)
    before = config.read_text()
    assert cli([*base, "--register-only", "--challenger", "lora", flag]) == 2
    assert f"error: {named}: " in capsys.readouterr().err
    assert config.read_text() == before


def test_the_challenger_is_built_with_the_config_files_relative_paths(gemini_server, tmp_path, monkeypatch):
    """A policy's relative stats_path resolves against the config's directory when the router builds it; writing the
    challenger around it built it against the working directory, and refused a config that builds (after tuning,
    with the tuned backend already written)."""
    from genroute.policies.stats import BackendStats, BenchStats

    project = tmp_path / "project"
    project.mkdir()
    BenchStats(tasks={"t": {b: BackendStats(n=100, quality=q, quality_ci=(q - 0.05, q + 0.05), latency_p50_s=0.1,
                                            latency_p95_s=0.2, cost_per_request_usd=c)
                            for b, q, c in (("chat", 0.9, 0.001), ("lora", 0.8, 0.0001))}}).save(project / "stats.json")
    cfg = gemini_config(gemini_server)
    cfg["backends"]["lora"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    cfg["policy"] = {"kind": "cost_aware", "stats_path": "stats.json", "default": "chat"}
    config = project / "app.yaml"
    config.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)   # not the config's directory
    assert cli(["graduate", "--task", "t", "--config", str(config), "--out", str(project / "grad"),
                "--register-only", "--challenger", "lora"]) == 0
    written = yaml.safe_load(config.read_text())["policy"]
    assert written["kind"] == "challenger" and written["policy"]["stats_path"] == "stats.json"   # still relative
    with Router.from_config(config) as router:   # stats.json read: cost_aware sends t to the cheaper lora itself
        decision = router.decide("x", task="t")
    assert decision.rungs[0].backend == "lora" and decision.shadow == ()   # not also as its own shadow


def test_graduate_vertex_tunes_on_the_vertex_engine_beside_a_developer_api_one(gemini_server, tmp_path, monkeypatch,
                                                                                capsys):
    """A config serving on the Developer API with a Vertex AI engine for tuning: `genroute graduate --vertex` was
    refused ("engine: name the Gemini engine to tune with (found: gemini, vertex)") and had no flag to name it."""
    from genroute.testing.credentials import write_credentials
    from genroute.testing.tuning_routes import TuningRoutes

    TuningRoutes(gemini_server)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(write_credentials(tmp_path / "adc.json")))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gemini_server.base_url)
    config = vertex_app(gemini_server, tmp_path, "outcomes.db")
    cfg = yaml.safe_load(config.read_text())
    cfg["engines"]["gemini"] = gemini_config(gemini_server)["engines"]["gemini"]
    cfg["backends"]["chat"]["engine"] = "gemini"
    config.write_text(yaml.safe_dump(cfg))
    args = ["graduate", "--task", "t", "--config", str(config), "--out", str(tmp_path / "grad"), "--vertex",
            "--staging-uri", "gs://bucket/runs", "--name", "sentiment", "--min-examples", "10",
            "--poll-interval", "0.01"]
    assert cli(args) == 0, capsys.readouterr().err
    written = yaml.safe_load(config.read_text())["backends"]["sentiment"]
    assert (written["engine"], written["tasks"]) == ("vertex", ["t"])
    with Router.from_config(config) as router:
        assert router.decide("x", task="t").shadow == ("sentiment",)


@pytest.mark.parametrize(("extra", "message"), [
    (["--vertex", "--staging-uri", "gs://b/p", "--learning-rate", "1e-4"], "--learning-rate: is for local tuning"),
    (["--vertex", "--staging-uri", "gs://b/p", "--rank", "4"], "--rank: is for local tuning"),
    (["--staging-uri", "gs://b/p"], "--staging-uri: is for tuning on Vertex AI"),
    (["--base-model", "gemini-2.5-pro"], "--base-model: is for tuning on Vertex AI"),
    (["--tuning-price", "2.5"], "--tuning-price: is for tuning on Vertex AI"),  # a local run's cost is CPU time
])
def test_graduate_refuses_a_tuning_flag_the_run_would_ignore(gemini_server, tmp_path, capsys, extra, message):
    """They were ignored: a Vertex AI job ran with its own learning rate, a local run tuned Gemma."""
    config, base = lora_app(gemini_server, tmp_path)
    before = config.read_text()
    assert cli([*base, *extra]) == 2
    assert message in capsys.readouterr().err
    assert config.read_text() == before and gemini_server.requests == []


@pytest.mark.parametrize(("extra", "message"), [
    (["--min-examples", "4", "--eval-share", "0.95"], "--eval-share: keeps all 6 usable examples"),
    (["--min-examples", "0"], "--min-examples: must be an integer >= 1"),
])
def test_graduate_names_the_flag_that_leaves_nothing_to_tune_on(gemini_server, tmp_path, capsys, extra, message):
    """Both ended in "data: .../train.jsonl holds no examples", naming a flag graduate does not have, after writing
    an empty train.jsonl."""
    config, base = lora_app(gemini_server, tmp_path)
    store = OutcomeStore(tmp_path / "outcomes.db")
    for i in range(6):
        store.upsert_sync(captured(i, f"review number {i}", "positive" if i % 2 else "negative"))
    assert cli([*base, "--max-steps", "1", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "grad").exists()
    with pytest.raises(UsageError) as info:
        export_tuning_set(store.records_sync(task="t"), "t", tmp_path / "x", min_examples=0)
    assert info.value.field == "min_examples" and not (tmp_path / "x").exists()


def test_decide_refuses_another_graduations_saved_report(gemini_server, tmp_path, capsys):
    """--decide took graduation.json from --out whatever it graduated: another task's tuning lines and CPU time
    went into this decision's report and pay-back."""
    from genroute.graduation.run import GraduationReport

    config, base = promotable_app(gemini_server, tmp_path)
    out = tmp_path / "grad"
    out.mkdir()
    (out / "graduation.json").write_text(GraduationReport(
        task="other", challenger="other_tuned", lines=("export: ... task 'other'",), tuning_cpu_s=3600.0,
    ).model_dump_json())
    before = config.read_text()
    assert cli([*base, "--decide", "--challenger", "lora", "--cpu-usd-per-hour", "1"]) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "'other_tuned' for task 'other'" in err
    assert config.read_text() == before and not (out / "decision.json").exists()


@pytest.mark.local
@pytest.mark.slow
def test_ctrl_c_stops_a_graduations_training_and_writes_no_adapter(tmp_path):
    """The LoRA run trains on a worker thread, which Ctrl-C does not interrupt: `genroute graduate` went on training
    (asyncio.run waits for the thread) and then wrote the adapter nobody asked for any more."""
    import signal
    import time

    for module in ("torch", "transformers", "peft", "gguf", "llama_cpp"):
        pytest.importorskip(module, reason="local tuning needs the tune-local and local extras")
    cfg = {"engines": {"g": {"kind": "gemini", "api_key": "k", "base_url": "http://127.0.0.1:9"}},
           "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}},
           "policy": {"kind": "static", "backend": "chat"},
           "outcomes": {"path": str(tmp_path / "outcomes.db"), "capture": True}}
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(cfg))
    store = OutcomeStore(tmp_path / "outcomes.db")
    for i in range(6):
        store.upsert_sync(captured(i, f"review number {i}", "positive" if i % 2 else "negative"))
    out = tmp_path / "grad"
    # Far more steps than the test waits for: only a stopped run ends in time.
    # An inherited ignored SIGINT would stay ignored in the command (see test_cli's Ctrl-C test): start it handled.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "genroute.cli", "graduate", "--task", "t", "--config",
                                 str(config), "--out", str(out), "--min-examples", "4", "--epochs", "100000",
                                 "--rank", "1", "--threads", "1"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        while not (out / "train.jsonl").exists() and proc.poll() is None:   # exported: the tuning starts
            time.sleep(0.1)
        time.sleep(3)   # into the training (the model loads in about a second)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "genroute: interrupted" in err
    assert not (out / "adapter").exists()
    assert "t_tuned" not in config.read_text()


def test_decide_keeps_the_graduations_mode_and_share(gemini_server, tmp_path):
    """A promotion written by --decide set the challenger back to shadow mode at share 1 (the flags' defaults)."""
    config, base = lora_app(gemini_server, tmp_path)
    assert cli([*base, "--register-only", "--challenger", "lora", "--share", "0.25"]) == 0
    store = OutcomeStore(tmp_path / "outcomes.db")
    for record in paired(300, set(range(60)), set(range(2, 64))):    # resolved, cheaper: promoted
        store.upsert_sync(record.model_copy(update={"metadata": {**record.metadata, "served": "chat"},
                                                    "outcomes": {"chat": record.outcomes["icl"],
                                                                 "lora": record.outcomes["lora"]}}))
    assert cli([*base, "--decide", "--challenger", "lora"]) == 0
    policy = yaml.safe_load(config.read_text())["policy"]
    assert (policy["promoted"], policy["mode"], policy["share"]) == (True, "shadow", 0.25)


@pytest.mark.parametrize("policy", [
    {"kind": "static", "backend": "chat"},
    {"kind": "challenger", "task": "t", "backend": "lora", "policy": {"kind": "static", "backend": "chat"}},
    {"kind": "cascade", "rungs": [{"backend": "chat"}, {"backend": "lora"}]}])
def test_register_only_refuses_the_incumbent_as_its_challenger(gemini_server, tmp_path, capsys, policy):
    """`--challenger chat` was written as chat's own shadow: every request of the task ran twice."""
    config, base = lora_app(gemini_server, tmp_path)
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "policy": policy}))
    before = config.read_text()
    assert cli([*base, "--register-only", "--challenger", "chat"]) == 2
    err = capsys.readouterr().err
    assert "error: --challenger: 'chat' already answers task 't' (the incumbent)" in err
    assert config.read_text() == before
    assert cli([*base, "--register-only", "--challenger", "lora"]) == 0   # another backend is taken


@pytest.mark.local
def test_a_local_graduation_writes_the_backend_and_its_challenger_in_one_write(gemini_server, tmp_path, monkeypatch):
    """The tuned backend was written, then the challenger policy in a second write: a crash between the two left
    the backend in the config with nothing routing to it."""
    from genroute.tuning import config_file

    for module in ("torch", "transformers", "peft", "gguf", "llama_cpp"):
        pytest.importorskip(module, reason="local tuning needs the tune-local and local extras")
    config = captured_app(gemini_config(gemini_server), tmp_path)
    writes = []
    write_config = config_file.write_config
    monkeypatch.setattr(config_file, "write_config", lambda path, raw: (writes.append(raw), write_config(path, raw)))
    assert cli(["graduate", "--task", "t", "--config", str(config), "--out", str(tmp_path / "grad"),
                "--min-examples", "4", "--epochs", "1", "--max-steps", "1", "--rank", "1", "--threads", "1"]) == 0
    (written,) = writes
    assert "t_tuned" in written["backends"] and "t_tuned_engine" in written["engines"]
    assert written["policy"]["kind"] == "challenger" and written["policy"]["backend"] == "t_tuned"
    assert yaml.safe_load(config.read_text()) == written


def test_a_budget_without_a_cost_for_the_tuned_backend_is_refused_before_tuning(gemini_server, tmp_path, capsys):
    """Its stats file has no figures for the new backend: the config written would no longer build."""
    from genroute.policies.stats import BackendStats, BenchStats

    entry = BackendStats(n=5, quality=0.9, latency_p50_s=0.1, latency_p95_s=0.2, cost_per_request_usd=0.001)
    stats = BenchStats(tasks={"*": {"chat": entry}}).save(tmp_path / "stats.json")
    cfg = gemini_config(gemini_server)
    cfg["policy"] = {"kind": "budget", "budget_usd": 1.0, "stats_path": str(stats),
                     "inner": {"kind": "static", "backend": "chat"}}
    config = captured_app(cfg, tmp_path)
    before = config.read_text()
    assert cli(["graduate", "--task", "t", "--config", str(config), "--out", str(tmp_path / "grad"),
                "--min-examples", "4", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: policy.stats_path: the stats file has no cost for backend(s) 't_tuned'" in err
    assert config.read_text() == before and not (tmp_path / "grad").exists()
