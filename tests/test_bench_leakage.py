"""A local tuned model benchmarked on the records it was tuned on: the advisor leaves them out and the report says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from genroute.bench import report_outcomes
from genroute.bench.advisor import TunedInfo
from genroute.bench.datasets import BenchRecord
from genroute.bench.runner import Outcome
from genroute.knowledge.examples import input_key


def test_the_advisor_leaves_out_the_records_a_local_tuned_model_was_trained_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`genroute tune --local data.jsonl` then `genroute bench data.jsonl --backends icl,tuned`: the tuned model was
    scored on its own training inputs, and the advisor said "graduate" on the recall it measured."""
    records = [BenchRecord(id=f"r{i}", input=f"Question {i} about my card", label="card", task="intent")
               for i in range(60)]
    trained = records[:40]   # tuned on these (in another spelling: the key reads case and spacing as one)
    result = tmp_path / "adapter" / "tune_result.json"
    result.parent.mkdir()
    result.write_text(json.dumps({"train_cpu_seconds": 10.0,
                                  "input_keys": sorted(input_key(f"  {r.input.upper()} ") for r in trained)}))
    # On what it was trained on, the tuned model is always right; on the 20 others, right on 10 of them, as ICL is.
    outcomes = [Outcome(backend="tuned", record_id=r.id, ok=True, scorer="label_accuracy",
                        score=1.0 if i < 40 else float(i % 2)) for i, r in enumerate(records)]
    outcomes += [Outcome(backend="icl", record_id=r.id, ok=True, scorer="label_accuracy", score=float(i % 2))
                 for i, r in enumerate(records)]
    caplog.set_level(logging.WARNING, logger="genroute")
    report = report_outcomes(outcomes, records, tmp_path / "out", kinds={"icl": "icl", "tuned": "tuned"},
                             tuned_info=TunedInfo(where="local", tune_result=str(result)), compile=False)
    advice = report.advice
    assert advice is not None and advice.trained_on == 40
    assert advice.quality is not None and advice.quality.n == 20 and advice.quality.difference == 0.0
    assert advice.verdict == "inconclusive"   # on all 60 records: "graduate", tuned +0.333
    assert "tuned on the inputs of 40 of these records" in advice.text
    text = Path(report.files["markdown"]).read_text(encoding="utf-8")
    assert "## Tuned on benchmark records" in text and "tuned was tuned on the inputs of 40 of the 60 records" in text
    assert any("40 of the 60 records" in r.getMessage() for r in caplog.records)

    # A tune_result.json of an earlier genroute lists no inputs: nothing is left out.
    result.write_text(json.dumps({"train_cpu_seconds": 10.0}))
    earlier = report_outcomes(outcomes, records, tmp_path / "out2", kinds={"icl": "icl", "tuned": "tuned"},
                              tuned_info=TunedInfo(where="local", tune_result=str(result)), compile=False)
    assert earlier.advice is not None and earlier.advice.trained_on == 0 and earlier.advice.verdict == "graduate"


def test_a_bench_on_the_file_loaded_as_icl_examples_leaves_each_records_own_example_out_and_says_so(
        gemini_server, tmp_path: Path) -> None:
    """`genroute ingest data.jsonl --kind examples` then `genroute bench data.jsonl --backends icl`: every scored record
    is in the example pool. ICL never shows a request its own example; the report did not say that the pool each
    record was answered from held it (and that it was left out), so a reader could not tell the score was fair."""
    import asyncio

    from genroute import Router
    from genroute.bench import bench
    from genroute.knowledge import aload_examples, build_store
    from genroute.testing.replies import field_of

    from .conftest import gemini_config

    labels = ["refund", "card"]
    data = tmp_path / "intents.jsonl"
    data.write_text("".join(json.dumps({"input": f"Question {i} about my {labels[i % 2]}", "label": labels[i % 2],
                                        "output": labels[i % 2], "metadata": {"id": f"q{i}", "task": "intent"}}) + "\n"
                            for i in range(12)))
    others = tmp_path / "others.jsonl"
    others.write_text("".join(json.dumps({"input": f"Another question {i}", "output": labels[i % 2]}) + "\n"
                              for i in range(6)))
    knowledge = {"path": str(tmp_path / "chroma")}
    store = build_store(knowledge, engines={})
    asyncio.run(aload_examples(store, [data], collection="intents"))     # the whole labeled file, as examples
    asyncio.run(aload_examples(store, [others], collection="others"))
    config = gemini_config(gemini_server)
    config["knowledge"] = knowledge
    config["backends"] = {name: {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash", "collection": name,
                                 "k": 20, "selector": "fixed"} for name in ("intents", "others")}
    config["policy"] = {"kind": "static", "backend": "intents"}
    with Router.from_config(config) as router:
        report = bench(router, str(data), backends=["intents", "others"], out_dir=tmp_path / "out", progress=False,
                       compile=False)
    sent = [r for r in gemini_server.requests if r.action in ("generateContent", "streamGenerateContent")]
    assert len(sent) == 24
    for request in sent:
        turns = [c["parts"][0]["text"] for c in field_of(request.body, "contents") if c["role"] == "user"]
        # The request's own example is not among the turns before it; the other 11 of the pool are.
        assert turns[-1] not in turns[:-1] and len(turns) - 1 in (11, 6)
    note = report.own_examples_note
    assert "- intents: 12 of the 12 records have their input in its example collection `intents`" in note
    assert "others" not in note and "left out" in note
    text = Path(report.files["markdown"]).read_text(encoding="utf-8")
    assert "## Benchmark records among the ICL examples" in text and "12 of the 12 records" in text


def test_a_policy_benchmarked_on_the_records_it_was_compiled_from_is_named_in_the_report(
        gemini_server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`genroute bench data.jsonl` writes cost_aware.json and learned.json; served and benchmarked with `--policy` on
    the same file, the @policy row (a kNN router looking its own record up) read as routing skill on new requests."""
    from genroute import Router
    from genroute.bench import bench
    from genroute.policies.stats import BenchStats

    from .conftest import gemini_config

    labels = ["refund", "card"]

    def dataset(path: Path, stem: str) -> Path:
        path.write_text("".join(json.dumps({"input": f"{stem} {i} about my {labels[i % 2]}", "label": labels[i % 2],
                                            "metadata": {"id": f"q{i}", "task": "intent", "label_set": labels}}) + "\n"
                                for i in range(30)))
        return path

    data, fresh = dataset(tmp_path / "intents.jsonl", "Question"), dataset(tmp_path / "fresh.jsonl", "Query")
    config = gemini_config(gemini_server)
    config["backends"] = {"lite": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite",
                                   "template": "Name the intent."},
                          "full": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}}
    config["policy"] = {"kind": "static", "backend": "lite"}
    with Router.from_config(config) as router:
        first = bench(router, str(data), backends=["lite", "full"], out_dir=tmp_path / "out", progress=False)
    assert first.compiled_on_note == ""   # a static policy compiled from nothing
    stats = BenchStats.load(first.compiled.stats_path)
    assert stats.input_keys is not None and len(stats.input_keys) == 30
    # `genroute compile --outcomes` on the bench's outcome matrix: its stats.json lists the inputs too.
    from genroute.cli import main as cli

    assert cli(["compile", "--outcomes", first.files["outcomes"], "--out", str(tmp_path / "compiled"),
                "--no-learned"]) == 0
    files = {**first.compiled.policy_files, "compiled": str(tmp_path / "compiled" / "cost_aware.json")}
    caplog.set_level(logging.WARNING, logger="genroute")
    for kind in ("cost_aware", "learned", "compiled"):
        policy = json.loads(Path(files[kind]).read_text(encoding="utf-8"))
        with Router.from_config({**config, "policy": policy}) as router:
            again = bench(router, str(data), backends=["lite"], policy=True, out_dir=tmp_path / f"again-{kind}",
                          progress=False, compile=False)
            elsewhere = bench(router, str(fresh), backends=["lite"], policy=True, out_dir=tmp_path / f"fresh-{kind}",
                              progress=False, compile=False)
        name = "cost_aware" if kind == "compiled" else kind
        assert f"({name}) was compiled from the inputs of 30 of the 30 records" in again.compiled_on_note
        text = Path(again.files["markdown"]).read_text(encoding="utf-8")
        assert "## Policy compiled from benchmark records" in text
        assert elsewhere.compiled_on_note == ""   # new inputs: nothing to say
    assert any("compiled from the inputs of 30 of the 30 records" in r.getMessage() for r in caplog.records)


def test_a_semantic_policys_utterances_count_as_the_inputs_it_was_compiled_from() -> None:
    """semantic.json (`genroute bench --outcomes`) holds training queries as its routes' utterances: a benchmark of
    it on those queries routes each by itself."""
    from genroute.bench.policy_inputs import compiled_from, policy_inputs_note
    from genroute.policies import build_policy

    inner = {"kind": "semantic", "default": "lite",
             "routes": {"lite": ["Question 1 about my card"], "full": ["Question 2 about refunds"]}}
    policy = build_policy({"kind": "challenger", "task": "intent", "backend": "full", "policy": inner})
    assert compiled_from(policy) == {input_key("Question 1 about my card"), input_key("Question 2 about refunds")}
    records = [BenchRecord(id=f"r{i}", input=f"  question {i} ABOUT my card", label="card") for i in range(3)]
    assert "compiled from the inputs of 1 of the 3 records" in policy_inputs_note(policy, records)


def test_an_icl_backend_without_a_knowledge_store_is_reported_unscored_not_crashed_on(gemini_server,
                                                                                      tmp_path: Path) -> None:
    """Looking for the records among an ICL backend's examples must not fail a run whose ICL backend has no store."""
    from genroute import Router
    from genroute.bench import bench

    from .conftest import gemini_config

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"input": f"q {i}", "label": "a"}) + "\n" for i in range(4)))
    config = gemini_config(gemini_server)
    config["backends"]["icl"] = {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash", "collection": "nope"}
    with Router.from_config(config) as router:
        report = bench(router, str(data), backends=["icl", "chat"], out_dir=tmp_path / "out", progress=False,
                       compile=False)
    assert [u.backend for u in report.unscored] == ["icl"] and report.own_examples_note == ""


def test_what_a_policy_was_compiled_from_is_read_through_its_public_reads() -> None:
    """bench read policies' private attributes (`_stats`, a split's `_inner`) and guessed at `inner`, `model` and
    `config.routes`: a policy of another shape (a plugin's) was never asked. Each policy now says what it was
    compiled from (`compiled_inputs`) and which policies it hands requests to (`nested`)."""
    from genroute.bench.policy_inputs import compiled_from
    from genroute.policies import build_policy
    from genroute.policies.base import Policy, PolicyConfig
    from genroute.types import Decision

    class Arms(Policy):
        kind = "arms-test"
        Config = PolicyConfig

        def __init__(self, *arms: Policy) -> None:
            super().__init__(PolicyConfig(kind="arms-test"))
            self.arms = arms

        @property
        def nested(self) -> tuple[Policy, ...]:
            return self.arms

        def compiled_inputs(self) -> frozenset[str]:
            return frozenset({input_key("its own")})

        def decide(self, request, context):  # type: ignore[no-untyped-def]
            return Decision.single(self.name, "lite", "test")

    semantic = build_policy({"kind": "semantic", "default": "lite", "routes": {"lite": ["Question 1 about my card"]}})
    split = build_policy({"kind": "split", "arms": [
        {"weight": 1, "policy": {"kind": "semantic", "default": "lite", "routes": {"full": ["refunds please"]}}},
        {"weight": 1, "backend": "lite"}, {"weight": 1, "policy": {"kind": "static", "backend": "lite"}}]})
    assert compiled_from(Arms(semantic, split)) == {input_key("its own"), input_key("Question 1 about my card"),
                                                   input_key("refunds please")}
    assert [p.kind for p in split.nested] == ["semantic", "static"] and semantic.nested == ()
