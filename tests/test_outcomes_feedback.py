"""Feedback across replicas, a judge scorer under the router's deadline, a scrub hook that returns nonsense, and
argument checks of ``feedback`` and ``drain``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

import numpy as np
import pytest

from genroute import ConfigError, GenrouteError, Router, UsageError
from genroute.outcomes import OutcomeStore
from genroute.testing import Fault

from .conftest import gemini_config
from .read_only_files import small_disk  # noqa: F401
from .redis_fixtures import redis_server, redis_session  # noqa: F401


def config(server, tmp_path, **outcomes):
    cfg = gemini_config(server)
    cfg["backends"]["pro"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-pro"}
    cfg["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["pro"]}
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy", **outcomes}
    return cfg


def shared(server, tmp_path, redis, *, capture):
    cfg = config(server, tmp_path, capture=capture)
    del cfg["outcomes"]["path"]
    cfg["state"] = {"kind": "redis", "url": redis.url, "prefix": "xfeedback:", "on_error": "closed"}
    return cfg


def test_a_label_given_to_another_replica_scores_both_sides_with_capture(gemini_server, tmp_path, redis_server):
    gemini_server.reply_text("positive")   # served (chat)
    gemini_server.reply_text("negative")   # shadow (pro)
    cfg = shared(gemini_server, tmp_path, redis_server, capture=True)
    with Router.from_config(cfg, scrub=lambda ex: {**ex, "input": ex["input"].replace("Jane", "<name>")}) as a, \
            Router.from_config(cfg) as b:
        result = a.generate("Jane loved it", task="sentiment")
        a.drain()
        record = b.feedback(result.outcome_id, label="positive")   # b never saw the request
    assert record.outcomes["chat"].score == 1.0 and record.outcomes["pro"].score == 0.0
    assert (record.input, record.output) == ("<name> loved it", "positive")   # the example, scrubbed
    assert record.metadata["answers"] == {"chat": "positive", "pro": "negative"}
    assert "Jane" not in str(record.line())


def test_shared_outcomes_serve_a_router_used_from_one_event_loop_after_another(gemini_server, tmp_path,
                                                                             redis_server, caplog):
    # A loop per asyncio.run (a script's batches, Celery tasks): the shared store's catch-up lock was an
    # asyncio.Lock, bound to the first loop that waited on it, so every later loop's concurrent writes failed
    # (shadow outcomes lost with a warning, feedback raising RuntimeError).
    import asyncio

    cfg = shared(gemini_server, tmp_path, redis_server, capture=False)
    with Router.from_config(cfg) as router:
        async def batch(tag):
            results = await asyncio.gather(*[router.agenerate(f"{tag} {i}", task="t") for i in range(4)])
            await router.adrain()
            return await asyncio.gather(*[router.afeedback(r, label=r.text) for r in results])

        with caplog.at_level(logging.WARNING, logger="genroute.outcomes"):
            records = [record for tag in ("one", "two", "three") for record in asyncio.run(batch(tag))]
    assert len(records) == 12 and all(set(r.outcomes) == {"chat", "pro"} for r in records)
    assert all(r.outcomes["chat"].score == 1.0 for r in records)
    assert "not stored" not in caplog.text


def test_without_capture_a_label_another_replica_cannot_score_is_noted_and_logged(gemini_server, tmp_path,
                                                                                  redis_server, caplog):
    gemini_server.reply_text("positive")
    gemini_server.reply_text("negative")
    cfg = shared(gemini_server, tmp_path, redis_server, capture=False)
    with Router.from_config(cfg) as a, Router.from_config(cfg) as b:
        result = a.generate("Loved it", task="sentiment")
        a.drain()
        with caplog.at_level(logging.WARNING, logger="genroute.outcomes.recorder"):
            record = b.feedback(result.outcome_id, label="positive")
    assert record.metadata["feedback"]["label_scored"] is False and record.metadata["feedback"]["label_given"]
    assert record.outcomes["chat"].score is None and "answers" not in record.metadata
    assert record.input is None and record.output is None and "positive" not in str(record.metadata)
    assert any("scored no answer" in r.getMessage() for r in caplog.records)


def test_a_feedback_judge_ends_at_the_routers_timeout(gemini_server, tmp_path):
    cfg = config(gemini_server, tmp_path, scorer="judge:pro")
    cfg["policy"] = {"kind": "static", "backend": "chat"}
    with Router.from_config(cfg, timeout_s=0.5) as router:
        result = router.generate("hello", task="t", timeout_s=30)  # answered, however loaded the machine
        gemini_server.fault(Fault.delay(5), times=5)   # the judge's server answers too late
        with pytest.raises(GenrouteError) as exc:
            router.feedback(result, label="hi")
    assert "timed out" in str(exc.value) or "deadline" in str(exc.value)


def test_a_scrub_hook_that_returns_no_mapping_is_named_and_loses_nothing(gemini_server, tmp_path):
    gemini_server.reply_text("positive")
    gemini_server.reply_text("negative")
    with Router.from_config(config(gemini_server, tmp_path, capture=True), scrub=lambda ex: "cleaned") as router:
        result = router.generate("Loved it", task="sentiment")
        router.drain()   # the shadow's scores are stored; its answers are not kept
        (pair,) = OutcomeStore(tmp_path / "outcomes.db").records_sync()
        assert pair.outcomes["pro"].agreement == 0.0 and "answers" not in pair.metadata
        with pytest.raises(ConfigError) as exc:
            router.feedback(result, label="positive")
        assert exc.value.field == "outcomes.scrub" and "mapping" in exc.value.message
        (unchanged,) = OutcomeStore(tmp_path / "outcomes.db").records_sync()
        assert unchanged == pair   # nothing written
        router._executor.outcomes.scrub = None   # the hook fixed: the same feedback goes through
        record = router.feedback(result, label="positive")
    assert record.outcomes["chat"].score == 1.0 and record.outcomes["pro"].score == 0.0


def test_feedback_refuses_a_bool_score_and_drain_a_bad_timeout(gemini_server, tmp_path):
    with Router.from_config(config(gemini_server, tmp_path)) as router:
        result = router.generate("hi")
        with pytest.raises(UsageError) as exc:
            router.feedback(result, score=True)
        assert exc.value.field == "score"
        for bad in ("x", -1, float("nan")):
            with pytest.raises(UsageError) as exc:
                router.drain(bad)
            assert exc.value.field == "timeout_s"
        router.drain(0)


@pytest.mark.parametrize(("target", "fields", "field", "says"), [
    ("   ", {"score": 1.0}, "result", "an outcome id must not be blank"),
    (None, {"score": True}, "score", "score must be a number in [0, 1], not a bool"),
    (None, {"score": float("nan")}, "score", "score must be a finite number"),
    (None, {}, "score", "give a score, a label or both"),
    # As an outcome file's score (genroute.bounds.Number): "0.5" was taken as 0.5, and numpy's True as 1.0.
    (None, {"score": "0.5"}, "score", "score must be a number in [0, 1], not '0.5'"),
    (None, {"score": np.True_}, "score", "score must be a number in [0, 1], not a bool"),
])
def test_a_feedback_refusal_says_what_is_wrong_without_pydantics_prefix(gemini_server, tmp_path, target, fields,
                                                                         field, says):
    """The messages read "result: Value error, an outcome id must not be blank": pydantic's prefix before a check
    of ours."""
    with Router.from_config(config(gemini_server, tmp_path)) as router:
        result = router.generate("hi")
        with pytest.raises(UsageError) as exc:
            router.feedback(result if target is None else target, **fields)
        assert (exc.value.field, exc.value.message) == (field, says)


def test_feedback_takes_a_numpy_score_as_the_number_it_is(gemini_server, tmp_path):
    with Router.from_config(config(gemini_server, tmp_path)) as router:
        result = router.generate("hi")
        record = router.feedback(result, score=np.float32(0.25))
    score = record.outcomes[result.backend].score
    assert score == 0.25 and type(score) is float


def test_a_judge_scorers_calls_are_priced_on_the_record_and_in_compile(gemini_server, tmp_path, capsys):
    from genroute.cli import main as cli

    gemini_server.reply_text("positive")   # served (chat)
    gemini_server.reply_text("negative")   # shadow (pro)
    judged = (100_000, 0)   # gemini-2.5-pro at $1.25 per million input tokens: $0.125 a judge call
    gemini_server.reply_text("no", usage=judged)   # the shadow's agreement with the served answer
    with Router.from_config(config(gemini_server, tmp_path, scorer="judge:pro")) as router:
        result = router.generate("Loved it", task="sentiment")
        router.drain()
        gemini_server.reply_text("yes", usage=judged)   # feedback: the served answer against the label
        gemini_server.reply_text("no", usage=judged)    # and the shadow's
        record = router.feedback(result, label="positive")
    assert record.outcomes["chat"].score == 1.0 and record.outcomes["pro"].score == 0.0
    assert record.metadata["scoring_costs"] == pytest.approx({"shadow:pro": 0.125, "feedback": 0.25})
    assert record.metadata["scoring_cost_usd"] == pytest.approx(0.375)   # the feedback's calls were lost
    (stored,) = OutcomeStore(tmp_path / "outcomes.db").records_sync()
    assert stored.merged(stored).metadata["scoring_cost_usd"] == pytest.approx(0.375)   # merged twice: once
    assert cli(["compile", "--outcomes", str(tmp_path / "outcomes.db"), "--out", str(tmp_path / "out"),
                "--no-learned"]) == 0
    assert "scoring (judge calls): $0.375000 on 1 records" in capsys.readouterr().out


def test_a_scoring_cost_recorded_before_sources_were_kept_apart_survives_a_merge():
    from genroute.outcomes import OutcomeRecord

    old = OutcomeRecord(metadata={"id": "r", "scoring_cost_usd": 0.5})   # a shadow's judge, earlier release
    new = OutcomeRecord(metadata={"id": "r", "scoring_costs": {"feedback": 0.25}, "scoring_cost_usd": 0.25})
    merged = old.merged(new)
    assert merged.metadata["scoring_costs"] == {"recorded": 0.5, "feedback": 0.25}
    assert merged.metadata["scoring_cost_usd"] == 0.75 and merged.merged(new) == merged


def test_feedback_for_another_routers_result_is_refused_and_writes_nothing(gemini_server, tmp_path):
    """Router Y took feedback for router X's result: it stored an outcome of X's backend "chat", which Y does not
    have, and `genroute compile` on Y's store compiled a policy routing to it."""
    other = gemini_config(gemini_server)
    other["backends"] = {"solo": other["backends"]["chat"]}
    other["policy"] = {"kind": "static", "backend": "solo"}
    other["outcomes"] = {"path": str(tmp_path / "other.db"), "scorer": "label_accuracy"}
    with Router.from_config(config(gemini_server, tmp_path)) as served_it, Router.from_config(other) as stranger:
        result = served_it.generate("hi")
        served_it.drain()
        for fields in ({"score": 1.0}, {"label": "positive"}):
            with pytest.raises(UsageError) as exc:
                stranger.feedback(result, **fields)
            assert exc.value.field == "result" and "'chat', which this router does not have" in exc.value.message
        assert OutcomeStore(tmp_path / "other.db").records_sync() == []
        assert served_it.feedback(result, score=1.0).outcomes["chat"].score == 1.0  # its own router takes it


def test_feedback_by_id_for_a_request_another_replica_served_without_a_shadow_says_where_to_send_it(
        gemini_server, tmp_path, redis_server):
    """The README said feedback for a request another replica served "finds it" in the shared list; a request with no
    shadow run leaves no record there, and the other replica refused the id as unknown with no word why."""
    cfg = shared(gemini_server, tmp_path, redis_server, capture=True)
    cfg["policy"] = {"kind": "static", "backend": "chat"}   # no shadow: nothing is written when it is served
    with Router.from_config(cfg) as a, Router.from_config(cfg) as b:
        result = a.generate("Loved it", task="sentiment")
        with pytest.raises(UsageError) as exc:
            b.feedback(result.outcome_id, label="positive")
        assert exc.value.field == "result"
        assert "give its feedback to the replica that served it" in exc.value.message
        assert a.feedback(result.outcome_id, label="positive").outcomes["chat"].score is not None
        # Now a record of it is in the shared list: the other replica finds it.
        assert b.feedback(result.outcome_id, score=1.0).outcomes["chat"].score == 1.0


def test_feedback_given_twice_keeps_the_label_and_the_latest_score(gemini_server, tmp_path):
    """A label, then a score for the same answer: the record kept the label as its output but said
    label_given: false, as if no label had ever been given."""
    cfg = config(gemini_server, tmp_path, capture=True)
    cfg["policy"] = {"kind": "static", "backend": "chat"}
    gemini_server.reply_text("positive")
    with Router.from_config(cfg) as router:
        result = router.generate("Loved it", task="sentiment")
        assert router.feedback(result, label="positive").outcomes["chat"].score == 1.0
        again = router.feedback(result, score=0.25)
    assert again.outcomes["chat"].score == 0.25 and again.output == "positive"
    assert again.metadata["feedback"]["label_given"] is True and again.metadata["feedback"]["score"] == 0.25
    [stored] = OutcomeStore(tmp_path / "outcomes.db").records_sync()
    assert (stored.output, stored.metadata["feedback"]["label_given"]) == ("positive", True)


async def async_label_scorer(record, result):
    """An outcome scorer written as ``async def`` (one that asks a service, say)."""
    await asyncio.sleep(0)
    return float(result.text == record.label)


def out_of_range_scorer(record, result):
    """An outcome scorer gone wrong: a score above 1."""
    return 5.0


def test_a_custom_outcome_scorer_may_be_async(gemini_server, tmp_path):
    gemini_server.reply_text("positive")
    gemini_server.reply_text("negative")
    cfg = config(gemini_server, tmp_path, scorer="tests.test_outcomes_feedback:async_label_scorer")
    with Router.from_config(cfg) as router:
        result = router.generate("Loved it", task="sentiment")
        router.drain()
        record = router.feedback(result, label="positive")
    assert record.outcomes["chat"].score == 1.0 and record.outcomes["pro"].score == 0.0


def test_a_custom_outcome_scorer_out_of_range_is_refused_and_stores_nothing(gemini_server, tmp_path, caplog):
    """A score outside [0, 1] (or NaN) was stored as it was, and poisoned the statistics compiled from it."""
    cfg = config(gemini_server, tmp_path, scorer="tests.test_outcomes_feedback:out_of_range_scorer")
    with Router.from_config(cfg) as router, caplog.at_level(logging.WARNING, "genroute.outcomes"):
        result = router.generate("Loved it", task="sentiment")
        router.drain()   # the shadow's score is refused: its outcome is not recorded
        with pytest.raises(UsageError) as exc:
            router.feedback(result, label="positive")
    assert exc.value.field == "outcomes.scorer" and "returned 5.0" in exc.value.message
    assert OutcomeStore(tmp_path / "outcomes.db").records_sync() == []
    # It said "for record 'outcome'" whatever was scored: it names the outcome record (the request's outcome id), and
    # so does the shadow's warning (which said nothing of the request).
    assert f"returned 5.0 for record {result.outcome_id!r}" in exc.value.message
    assert f"shadow outcome of pro not recorded (outcome record {result.outcome_id!r}): UsageError" in caplog.text


def failing_scorer(record, result):
    """An outcome scorer that fails on some answers."""
    raise ValueError("cannot parse the answer")


def test_a_custom_outcome_scorer_that_fails_says_which_record_it_was_scoring(gemini_server, tmp_path):
    cfg = config(gemini_server, tmp_path, scorer="tests.test_outcomes_feedback:failing_scorer")
    with Router.from_config(cfg) as router:
        result = router.generate("Loved it", task="sentiment")
        router.drain()
        with pytest.raises(ValueError, match="cannot parse the answer") as exc:   # its own error, as raised
            router.feedback(result, label="positive")
    assert exc.value.__notes__ == [f"raised by outcomes.scorer 'tests.test_outcomes_feedback:failing_scorer' "
                                   f"scoring outcome record {result.outcome_id!r}"]


def test_feedback_a_store_file_cannot_take_is_a_genroute_error_naming_the_file(gemini_server, tmp_path, small_disk,
                                                                               caplog):
    # An outcome store whose file could not be written (seen: its directory on a full tmpfs) made router.feedback
    # raise sqlite3.OperationalError, which `except GenrouteError` does not catch, and a shadow's lost write was
    # logged as "not stored: OperationalError" without SQLite's reason, once for every request. Now feedback raises
    # OutcomeStoreError naming the file and the reason, and the shadows' warning says it too, at most once a minute.
    # (A read-only file or directory is a ConfigError: tests/test_outcome_durability.py.)
    from genroute import OutcomeStoreError

    disk, fill = small_disk
    path = disk / "outcomes.db"
    with Router.from_config(config(gemini_server, disk)) as router:
        first = router.generate("one", task="t")
        router.drain()
        router.feedback(first, label="one")
        store = router._executor.outcomes.store
        store.close()  # its writes moved into the file and the connection let go: the next write opens it again
        fill()  # no room left for its -wal file, nor for a page more
        with caplog.at_level(logging.WARNING, logger="genroute.outcomes"):
            for text in ("three", "four", "two"):  # every shadow's write fails: one warning, not one a request
                second = router.generate(text, task="t")
                router.drain()
        assert router._executor.outcomes.write_errors == 3
        with pytest.raises(OutcomeStoreError) as raised:
            router.feedback(second, label="two")
        (disk / "filler").unlink()  # room again, for the router's close
    assert isinstance(raised.value, GenrouteError) and raised.value.path == str(path)
    # SQLite said "disk I/O error" of the full disk here (its -wal/-shm files could not grow): the reason is found.
    full = "OSError: [Errno 28] the disk holding the outcome store"
    assert str(path) in str(raised.value) and full in str(raised.value)
    assert f"feedback for {second.outcome_id} not stored" in str(raised.value)
    lost = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert len(lost) == 1 and str(path) in lost[0].getMessage() and full in lost[0].getMessage()
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as db:  # nothing of the second
        assert [row[0] for row in db.execute("SELECT id FROM outcomes")] == [first.outcome_id]
