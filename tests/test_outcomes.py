"""Outcomes from production: shadows scored against the served answer, feedback, opt-in capture, shadow safety."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from genroute import ConfigError, Router, UsageError, side_effect_free
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side
from genroute.policies.base import Policy, PolicyConfig
from genroute.router.validators import Judge
from genroute.types import Decision

from .conftest import TEST_KEY, gemini_config
from .redis_fixtures import redis_server, redis_session  # noqa: F401

FLASH = (0.30, 2.50)
PRO = (1.25, 10.0)
SHADOWED = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["pro"]}


def cost(price, usage):
    return usage[0] * price[0] / 1e6 + usage[1] * price[1] / 1e6


def config(server, tmp_path, policy=SHADOWED, **outcomes):
    cfg = gemini_config(server)
    cfg["backends"]["pro"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-pro"}
    cfg["policy"] = policy
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy", **outcomes}
    return cfg


def stored(tmp_path):
    return OutcomeStore(tmp_path / "outcomes.db").records_sync()


def test_shadow_outcome_row_has_both_sides_costs_latencies_and_the_trace(gemini_server, otel, tmp_path):
    gemini_server.reply_text("positive", usage=(100, 5))   # served (flash)
    gemini_server.reply_text("negative", usage=(120, 6))   # shadow (pro)
    with Router.from_config(config(gemini_server, tmp_path), **otel.providers) as router:
        result = router.generate("The food was great.", task="sentiment")
        router.drain()
        (record,) = stored(tmp_path)
        assert record.id == result.outcome_id == result.trace_id
        assert record.metadata["trace_id"] == result.trace_id and record.metadata["served"] == "chat"
        assert record.metadata["task"] == "sentiment" and record.metadata["features"]["input_tokens"] == 100
        served, shadow = record.outcomes["chat"], record.outcomes["pro"]
        assert (served.role, shadow.role) == ("served", "shadow")
        assert served.cost_usd == pytest.approx(cost(FLASH, (100, 5)))
        assert shadow.cost_usd == pytest.approx(cost(PRO, (120, 6)))
        assert served.latency_s > 0 and shadow.latency_s > 0
        assert shadow.agreement == 0.0            # scored against the served answer
        assert served.score is None and shadow.score is None   # no truth yet
        assert record.input is None and record.output is None  # no capture: no text
        # The user's label turns the pair into scores of both sides against the truth.
        record = router.feedback(result, label="positive")
        assert record.outcomes["chat"].score == 1.0 and record.outcomes["pro"].score == 0.0
        assert record.outcomes["pro"].cost_usd == pytest.approx(cost(PRO, (120, 6)))  # merged, not replaced
    (span,) = otel.spans("genroute.shadow")
    assert span.attributes["genroute.outcome.id"] == result.trace_id
    assert span.attributes["genroute.shadow.agreement"] == 0.0


def test_feedback_without_capture_stores_no_text(gemini_server, tmp_path):
    gemini_server.reply_text("positive", usage=(10, 1))
    gemini_server.reply_text("positive", usage=(10, 1))
    secret_input = "My order number is ZX-99812 and the parcel never came"
    with Router.from_config(config(gemini_server, tmp_path)) as router:
        result = router.generate(secret_input, task="sentiment")
        router.drain()
        record = router.feedback(result.outcome_id, label="negative-and-angry", score=0.0)
    assert record.input is None and record.output is None
    assert record.metadata["feedback"]["label_given"] is True and record.metadata["feedback"]["score"] == 0.0
    assert record.outcomes["chat"].score == 0.0
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("outcomes.db*"))
    assert b"ZX-99812" not in raw and b"negative-and-angry" not in raw and b"parcel" not in raw


def scrub(example):
    if "do-not-keep" in example["input"]:
        return None
    return {**example, "input": example["input"].replace("jane@example.com", "<email>")}


def test_capture_keeps_accepted_examples_scrubbed_and_without_secrets(gemini_server, tmp_path):
    cfg = config(gemini_server, tmp_path, policy={"kind": "static", "backend": "chat"}, capture=True)
    with Router.from_config(cfg, scrub=scrub) as router:
        kept = router.generate(f"Mail jane@example.com, key {TEST_KEY} and AIzaSyB-another-key-12345678901", task="t")
        labeled = router.feedback(kept, label="positive")
        assert labeled.input == "Mail <email>, key [REDACTED] and [REDACTED]"
        assert labeled.output == "positive"
        passed = router.generate("Lovely staff", task="t")
        accepted = router.feedback(passed, score=1.0)        # no label: the accepted answer is the served one
        assert (accepted.input, accepted.output) == ("Lovely staff", passed.text)
        failed = router.generate("Terrible staff", task="t")
        assert router.feedback(failed, score=0.0).input is None   # rejected answers are not examples
        dropped = router.generate("do-not-keep this one", task="t")
        assert router.feedback(dropped, label="negative").input is None   # the scrub hook dropped it
    captured = OutcomeStore(tmp_path / "outcomes.db").records_sync(captured=True)
    assert sorted(r.output for r in captured) == sorted(["positive", passed.text])
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("outcomes.db*"))
    assert TEST_KEY.encode() not in raw and b"jane@example.com" not in raw


#: Credentials a captured example must not keep, each in a form the capture filter once missed.
SECRETS = {
    "s3cretPW": "redis://:s3cretPW@cache.internal:6379/0",  # empty user name
    "pa/ss": "postgres://app:pa/ss@db.internal/app",  # a slash in the password
    "github_pat_11AAAAAAA0aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb": "",
    "ya29.a0AfH6SMBxQw-xyzxyzxyzxyz": "",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}


def test_capture_keeps_no_url_password_or_token_and_the_store_is_private(gemini_server, tmp_path):
    import stat

    cfg = config(gemini_server, tmp_path / "private" / "outcomes", policy={"kind": "static", "backend": "chat"},
                 capture=True)
    gemini_server.reply_text("Connect with redis://:hunter2@cache.internal:6379/0")
    with Router.from_config(cfg) as router:
        result = router.generate("My settings: " + " and ".join(form or secret for secret, form in SECRETS.items()))
        record = router.feedback(result, score=1.0)
    assert "redis://***@cache.internal:6379/0" in record.input and "postgres://***@db.internal/app" in record.input
    assert record.output == "Connect with redis://***@cache.internal:6379/0"
    store = tmp_path / "private" / "outcomes"
    raw = b"".join(p.read_bytes() for p in store.glob("outcomes.db*"))
    assert b"hunter2" not in raw
    for secret in SECRETS:
        assert secret.encode() not in raw and secret not in record.input
    assert stat.S_IMODE((store / "outcomes.db").stat().st_mode) == 0o600  # captured text is the owner's only
    assert stat.S_IMODE(store.stat().st_mode) == stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700


def test_feedback_is_validated_and_needs_outcomes(gemini_server, tmp_path):
    with Router.from_config(config(gemini_server, tmp_path)) as router:
        result = router.generate("hi")
        with pytest.raises(UsageError) as exc:
            router.feedback(result, score=2.0)
        assert exc.value.field == "score"
        with pytest.raises(UsageError) as exc:
            router.feedback(result)
        assert exc.value.field == "score" and "label" in str(exc.value)
        with pytest.raises(UsageError, match="no request with id"):
            router.feedback("0" * 32, score=1.0)
    cfg = gemini_config(gemini_server)
    with Router.from_config(cfg) as router:
        with pytest.raises(UsageError) as exc:
            router.feedback(router.generate("hi"), score=1.0)
        assert exc.value.field == "outcomes"


def test_async_feedback_is_the_same_path_and_untraced_requests_get_an_id(gemini_server, tmp_path):
    cfg = config(gemini_server, tmp_path, policy={"kind": "static", "backend": "chat"})

    async def main():
        async with Router.from_config(cfg) as router:   # no tracer provider: no trace id
            result = await router.agenerate("hi", task="t")
            assert result.trace_id is None and len(result.outcome_id) == 32
            return await router.afeedback(result, score=0.75)

    record = asyncio.run(main())
    assert record.outcomes["chat"].score == 0.75 and "trace_id" not in record.metadata


def test_a_side_effecting_tool_backend_cannot_be_shadowed(gemini_server, tmp_path):
    def send_email(to: str) -> str:
        """Send an email."""
        return "sent"

    @side_effect_free
    def get_weather(city: str) -> str:
        """Read the weather."""
        return "sunny"

    cfg = config(gemini_server, tmp_path)
    cfg["backends"]["pro"] = {"kind": "function_calling", "engine": "gemini", "model": "gemini-2.5-pro",
                              "tools": ["send_email", "get_weather"]}
    with pytest.raises(ConfigError, match="send_email") as exc:
        Router.from_config(cfg, tools={"send_email": send_email, "get_weather": get_weather})
    assert exc.value.field == "policy.shadow.0"
    # The same backend with only read-only tools may be shadowed.
    cfg["backends"]["pro"]["tools"] = ["get_weather"]
    Router.from_config(cfg, tools={"send_email": send_email, "get_weather": get_weather}).close()


@pytest.mark.parametrize("where", ["rung", "named", "custom", "scorer"])
def test_a_side_effecting_tool_backend_cannot_be_a_judge(gemini_server, tmp_path, where):
    # A judge is asked about the request ("send an email to bob ..."): with tools that act, it could send it again.
    sent = []

    def send_email(to: str) -> str:
        """Send an email."""
        sent.append(to)
        return "sent"

    cfg = config(gemini_server, tmp_path, policy={"kind": "static", "backend": "chat"})
    cfg["backends"]["mailer"] = {"kind": "function_calling", "engine": "gemini", "model": "gemini-2.5-pro",
                                 "tools": ["send_email"]}
    validators = None
    if where == "rung":
        cfg["policy"] = {"kind": "cascade", "rungs": [{"backend": "mailer", "validators": ["judge:mailer"]}]}
        field = "policy.rungs.0.validators"
    elif where == "named":
        cfg["validators"] = {"strict": {"kind": "judge", "backend": "mailer"}}
        field = "validators.strict"
    elif where == "custom":
        validators = {"strict": Judge("mailer")}
        field = "validators.strict"
    else:
        cfg["outcomes"]["scorer"] = "judge:mailer"
        field = "outcomes.scorer"
    with pytest.raises(ConfigError, match="send_email") as exc:
        Router.from_config(cfg, tools={"send_email": send_email}, validators=validators)
    assert exc.value.field == field and "judge" in str(exc.value)
    assert gemini_server.requests == [] and sent == []
    # With only read-only tools the judge may run.
    Router.from_config(cfg, tools={"send_email": side_effect_free(send_email)}, validators=validators).close()


def test_store_merges_writes_from_either_side_in_any_order(tmp_path):
    store = OutcomeStore(tmp_path / "o.db")
    store.upsert_sync(OutcomeRecord(metadata={"id": "a", "task": "t"}, outcomes={"x": Side(score=1.0)}))
    store.upsert_sync(OutcomeRecord(metadata={"id": "a"}, outcomes={"x": Side(cost_usd=0.5), "y": Side(score=0.0)}))
    (record,) = store.records_sync(task="t")
    assert record.outcomes["x"].score == 1.0 and record.outcomes["x"].cost_usd == 0.5
    assert record.outcomes["y"].score == 0.0
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("select count(*) from outcomes").fetchone()[0] == 1
    assert store.export_jsonl(tmp_path / "m.jsonl") == 1


def test_outcomes_go_to_the_shared_state_store_and_every_router_sees_them(gemini_server, tmp_path, redis_server):
    cfg = config(gemini_server, tmp_path)
    del cfg["outcomes"]["path"]
    cfg["state"] = {"kind": "redis", "url": redis_server.url, "prefix": "outcomes-test:", "on_error": "closed"}
    gemini_server.reply_text("positive", usage=(100, 5))
    gemini_server.reply_text("negative", usage=(120, 6))
    with Router.from_config(cfg) as serving, Router.from_config(cfg) as other:
        result = serving.generate("The food was great.", task="sentiment")
        serving.drain()
        # Another router (another process, in production) knows the request only through the shared store.
        record = other.feedback(result.outcome_id, score=1.0)
        assert record.outcomes["chat"].score == 1.0 and record.outcomes["pro"].agreement == 0.0
        assert record.outcomes["pro"].cost_usd == pytest.approx(cost(PRO, (120, 6)))

        async def seen():
            return await serving._executor.outcomes.store.records(task="sentiment")

        (merged,) = serving._portal.call(seen())
        assert merged.outcomes["chat"].score == 1.0 and merged.metadata["feedback"]["score"] == 1.0
    assert not list(tmp_path.glob("*.db"))   # nothing went to a local file (a `path` would archive them there)


def test_feedback_before_the_shadow_finishes_scores_the_shadow_against_the_label(gemini_server, tmp_path):
    import threading

    release = threading.Event()

    def slow_pro(server, request, match):
        release.wait(10)
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": "negative"}]},
                                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 1, "totalTokenCount": 51}}

    gemini_server.route("POST", r"/v1/models/gemini-2.5-pro:generateContent", slow_pro)
    gemini_server.reply_text("positive", usage=(40, 1))
    with Router.from_config(config(gemini_server, tmp_path)) as router:
        result = router.generate("Meh, it was bad.", task="sentiment")
        early = router.feedback(result, label="negative")      # the shadow is still waiting for its answer
        assert early.outcomes["chat"].score == 0.0 and "pro" not in early.outcomes
        release.set()
        router.drain()
    (record,) = stored(tmp_path)
    assert record.outcomes["chat"].score == 0.0
    assert record.outcomes["pro"].score == 1.0 and record.outcomes["pro"].agreement == 0.0
    assert record.outcomes["pro"].cost_usd == pytest.approx(cost(PRO, (50, 1)))


# -- where the SQLite outcome store lives ------------------------------------------------------------


def _served_and_stored(config_source, path):
    """Serve one request with feedback through ``config_source``; the records the store at ``path`` holds."""
    with Router.from_config(config_source) as router:
        result = router.generate("Loved it", task="sentiment")
        router.feedback(result, score=1.0)
    return OutcomeStore(path).records_sync()


def test_a_config_file_keeps_outcomes_beside_it_unless_told_otherwise(gemini_server, tmp_path, monkeypatch):
    import yaml

    cfg = config(gemini_server, tmp_path, policy={"kind": "static", "backend": "chat"})
    del cfg["outcomes"]["path"]
    app = tmp_path / "app"
    app.mkdir()
    (app / "shop.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    (record,) = _served_and_stored("app/shop.yaml", app / "shop-outcomes.db")   # the default: beside the file
    assert record.metadata["task"] == "sentiment" and record.outcomes["chat"].score == 1.0

    monkeypatch.setenv("GENROUTE_OUTCOMES_PATH", str(tmp_path / "env" / "all.db"))   # the environment's choice
    assert len(_served_and_stored("app/shop.yaml", tmp_path / "env" / "all.db")) == 1

    cfg["outcomes"]["path"] = "kept/here.db"   # the config's own path wins, relative to the file
    (app / "shop.yaml").write_text(yaml.safe_dump(cfg))
    assert len(_served_and_stored("app/shop.yaml", app / "kept" / "here.db")) == 1
    assert len(OutcomeStore(app / "shop-outcomes.db").records_sync()) == 1   # nothing more went to the default


def test_a_dict_config_must_say_where_outcomes_go(gemini_server, tmp_path, monkeypatch):
    cfg = config(gemini_server, tmp_path, policy={"kind": "static", "backend": "chat"})
    del cfg["outcomes"]["path"]
    with pytest.raises(ConfigError, match="GENROUTE_OUTCOMES_PATH") as err:
        Router.from_config(cfg)
    assert err.value.field == "outcomes.path" and gemini_server.requests == []
    monkeypatch.setenv("GENROUTE_OUTCOMES_PATH", str(tmp_path / "env.db"))
    assert len(_served_and_stored(cfg, tmp_path / "env.db")) == 1


def test_outcomes_in_the_state_store_need_no_file(gemini_server, tmp_path):
    import yaml

    cfg = config(gemini_server, tmp_path, policy={"kind": "static", "backend": "chat"}, store="state")
    del cfg["outcomes"]["path"]
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump(cfg))
    with Router.from_config(tmp_path / "shared.yaml") as router:
        result = router.generate("Loved it", task="sentiment")
        assert router.feedback(result, score=1.0).outcomes["chat"].score == 1.0
    assert not (tmp_path / "shared-outcomes.db").exists()


@pytest.mark.parametrize("score", [7.0, -0.5, float("nan")])
def test_outcome_scores_outside_0_1_are_refused_by_the_statistics(score: float) -> None:
    from genroute.outcomes.stats import outcome_stats

    records = [OutcomeRecord(task="t", outcomes={"chat": Side(score=score), "big": Side(score=1.0)})]
    with pytest.raises(ConfigError) as err:  # a raw ValidationError from BenchStats; before, explore's draw raised
        outcome_stats(records)
    assert err.value.field == "outcomes.scorer" and "'chat'" in err.value.message


def test_an_exported_side_without_a_recorded_cost_is_priced_not_free(tmp_path):
    # A label-only side (feedback's score for a backend that did not answer) was exported with cost_usd 0.0 and
    # tokens 0, which a matrix reader takes as recorded: with prices, that backend counted as free.
    from genroute.bench.outcomes import CandidatePrice, CandidatePricing, load_matrix

    store = OutcomeStore(tmp_path / "o.db")
    for i in range(2):
        store.upsert_sync(OutcomeRecord(input="three words here", metadata={"id": f"r{i}"}, outcomes={
            "a": Side(role="served", score=1.0, cost_usd=0.002, input_tokens=10, output_tokens=20),
            "b": Side.model_validate({"score": 0.5})}))
    store.upsert_sync(OutcomeRecord(metadata={"id": "r1"}, outcomes={"b": Side.model_validate({"score": 0.0})}))
    store.export_jsonl(tmp_path / "m.jsonl")
    assert (tmp_path / "m.jsonl").read_text().count('"b": {"score": ') == 2
    price = CandidatePrice(input_usd_per_1m=100.0, output_usd_per_1m=100.0)
    matrix = load_matrix(tmp_path / "m.jsonl", pricing=CandidatePricing(prices={"a": price, "b": price},
                                                                        output_tokens=7))
    assert matrix.costs.tolist() == [[0.002, pytest.approx(10 * 100 / 1e6)]] * 2
    with pytest.raises(UsageError, match=r"m\.jsonl:1: outcomes\.b\.cost_usd: not recorded") as exc:
        load_matrix(tmp_path / "m.jsonl")
    assert exc.value.field == "outcomes"


class _SlowDecision(Policy):
    """Takes its time to decide (as a policy that embeds the request does), then serves chat and shadows pro."""

    kind = "slow_decision"
    Config = PolicyConfig
    blocking = True  # decided in a worker thread, as an embedding policy is
    SLEEP_S = 0.5

    def decide(self, request, context):
        time.sleep(self.SLEEP_S)
        return Decision.single(self.kind, "chat", "slow on purpose", shadow=("pro",))


def test_served_and_shadow_latencies_start_at_the_same_point_their_admission(gemini_server, otel, tmp_path):
    """The served side was timed from the request's start, the policy's decide time included, and the shadow's from
    its admission: a shadow of the same speed read as faster by the decide time, in graduation's p50s too."""
    gemini_server.reply_text("positive", usage=(100, 5))   # served (flash)
    gemini_server.reply_text("positive", usage=(100, 5))   # shadow (pro)
    policy = _SlowDecision(PolicyConfig(kind="slow_decision"))
    with Router.from_config(config(gemini_server, tmp_path), policy=policy, **otel.providers) as router:
        result = router.generate("The food was great.", task="sentiment")
        router.drain()
    (record,) = stored(tmp_path)
    served, shadow = record.outcomes["chat"], record.outcomes["pro"]
    (attempt,) = result.decision.rungs_tried
    # The served side is its rung, timed from its admission, as the shadow is from its own; the caller's latency
    # still holds the decision.
    assert served.latency_s == pytest.approx(attempt.latency_s)
    assert result.latency_s - served.latency_s >= _SlowDecision.SLEEP_S
    (shadow_span,) = otel.spans("genroute.shadow")
    (served_call,) = [s for s in otel.spans("generate_content")
                      if s.attributes["gen_ai.request.model"] == "gemini-2.5-flash"]
    # Each side holds its backend's whole run (the shadow's span also holds the recording of its outcome).
    assert served.latency_s >= (served_call.end_time - served_call.start_time) / 1e9
    assert (shadow_span.end_time - shadow_span.start_time) / 1e9 >= shadow.latency_s > 0
