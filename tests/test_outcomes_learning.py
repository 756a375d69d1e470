"""Policies that learn from outcomes: refresh (cost_aware, learned), exploration within its share, challengers,
promotion, and ``genroute compile --outcomes``."""

from __future__ import annotations

import json
import math
import re

import pytest

from genroute import Router
from genroute.cli import main as cli
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side
from genroute.outcomes.stats import outcome_stats, training_rows
from genroute.policies import build_policy
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.policies.stats import BackendStats, BenchStats
from genroute.types import GenerateRequest

from .conftest import gemini_config


def router_config(server, tmp_path, policy, **outcomes):
    cfg = gemini_config(server)
    cfg["backends"]["pro"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-pro"}
    cfg["policy"] = policy
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "min_n": 20, **outcomes}
    return cfg


def fill(tmp_path, n, sides, *, task="t", inputs=None):
    """``n`` production records of ``task`` with the given per-backend (score, cost) sides."""
    store = OutcomeStore(tmp_path / "outcomes.db")
    for i in range(n):
        store.upsert_sync(OutcomeRecord(
            input=None if inputs is None else inputs[i % len(inputs)],
            output=None if inputs is None else "x",
            metadata={"id": f"{task}-{i}", "task": task},
            outcomes={b: Side(score=score(i) if callable(score) else score, cost_usd=cost, latency_s=0.1 + i / 1000)
                      for b, (score, cost) in sides.items()}))


def bench_stats(tmp_path, chat_quality):
    stats = BenchStats(tasks={"t": {
        "chat": BackendStats(n=50, quality=chat_quality, latency_p50_s=0.1, latency_p95_s=0.2,
                             cost_per_request_usd=0.0001),
        "pro": BackendStats(n=50, quality=0.95, latency_p50_s=0.3, latency_p95_s=0.6, cost_per_request_usd=0.001)}})
    return str(stats.save(tmp_path / "stats.json"))


def test_refresh_changes_a_cost_aware_decision_when_outcomes_say_so(gemini_server, tmp_path):
    policy = {"kind": "cost_aware", "stats_path": bench_stats(tmp_path, 0.5), "min_quality": 0.8, "default": "pro"}
    with Router.from_config(router_config(gemini_server, tmp_path, policy)) as router:
        assert router.decide("hi", task="t").rungs[0].backend == "pro"   # the benchmark: chat too weak
        fill(tmp_path, 10, {"chat": (1.0, 0.0001), "pro": (1.0, 0.001)})
        assert router.refresh() is False or router.decide("hi", task="t").rungs[0].backend == "pro"  # 10 < min_n
        fill(tmp_path, 30, {"chat": (lambda i: float(i % 10 != 0), 0.0001), "pro": (1.0, 0.001)})
        assert router.refresh() is True
        decision = router.decide("hi", task="t")
        assert decision.rungs[0].backend == "chat" and "quality 0.9 >= 0.8" in decision.reason
        assert router.decide("hi", task="other").rungs[0].backend == "pro"   # other tasks: unchanged


def test_a_compiled_cost_aware_policy_refreshed_from_outcomes_holds_the_task_to_its_best_backend_now(
        gemini_server, tmp_path):
    """The compiled file froze the task's floor at 95 % of the benchmark's best (chat, 1.0): once production outcomes
    put chat at 0.6, no backend met 0.95 and every request went to the default, chat, the worse of the two, where
    pro measured 0.9."""
    from genroute.outcomes.cli import compile_main

    bench = tmp_path / "bench.jsonl"   # the benchmark: chat right everywhere and cheaper, pro right on 90 %
    bench.write_text("".join(json.dumps({"input": f"q {i}", "metadata": {"id": f"b{i}", "task": "t"}, "outcomes": {
        "chat": {"score": 1.0, "cost_usd": 0.0001, "latency_s": 0.1},
        "pro": {"score": float(i % 10 != 0), "cost_usd": 0.001, "latency_s": 0.1}}}) + "\n" for i in range(30)))
    assert compile_main(["--outcomes", str(bench), "--out", str(tmp_path / "compiled"), "--no-learned"]) == 0
    policy = json.loads((tmp_path / "compiled" / "cost_aware.json").read_text())
    with Router.from_config(router_config(gemini_server, tmp_path, policy)) as router:
        assert router.decide("hi", task="t").rungs[0].backend == "chat"
        fill(tmp_path, 30, {"chat": (lambda i: float(i % 5 < 3), 0.0001)})   # production: chat right on 60 %
        assert router.refresh() is True
        decision = router.decide("hi", task="t")
    assert decision.rungs[0].backend == "pro" and "quality 0.9 >= 0.855" in decision.reason


def test_refresh_retrains_the_learned_policy_from_captured_outcomes(gemini_server, tmp_path):
    from genroute.policies.learned import train

    texts = [f"where is my card number {i}" for i in range(12)] + [f"what fee did you charge me {i}" for i in range(12)]
    # The benchmark said: pro for everything. Production says: chat is right (and cheaper) for card questions.
    train([{"input": t, "backend": b, "score": 1.0 if b == "pro" else 0.0, "cost_usd": c, "record_id": t}
           for t in texts for b, c in (("chat", 0.0001), ("pro", 0.001))], tmp_path / "learned.npz")
    policy = {"kind": "learned", "model_path": str(tmp_path / "learned.npz"), "default": "pro"}
    with Router.from_config(router_config(gemini_server, tmp_path, policy)) as router:
        assert router.decide("where is my card number 99").rungs[0].backend == "pro"
        fill(tmp_path, 24, {"chat": (lambda i: float(i < 12), 0.0001), "pro": (1.0, 0.001)}, task="bank",
             inputs=texts)
        assert router.refresh() is True
        assert router.decide("where is my card number 99").rungs[0].backend == "chat"
        assert router.decide("what fee did you charge me 99").rungs[0].backend == "pro"
    assert (tmp_path / "learned.refreshed.npz").is_file() and (tmp_path / "learned.npz").is_file()


CTX = PolicyContext(catalogue={b: BackendInfo(name=b, kind="x") for b in ("icl", "tuned", "prompt")})


def explore(share, stats=None):
    policy = build_policy({"kind": "explore", "policy": {"kind": "static", "backend": "icl"}, "share": share,
                           "candidates": ["icl", "tuned"], "cost_weight": 100.0})
    return policy, PolicyContext(catalogue=CTX.catalogue, stats=stats)


@pytest.mark.parametrize("share", [0.05, 0.2])
def test_exploration_stays_within_its_share(share):
    policy, context = explore(share)
    n = 4000
    decisions = [policy.decide(GenerateRequest(input="review", key=f"user-{i}"), context) for i in range(n)]
    explored = [d for d in decisions if d.rungs[0].backend != "icl"]
    # Eligibility is a hash below `share`: a binomial count, so allow 3 standard deviations, never more.
    assert 0 < len(explored) <= n * share + 3 * (n * share * (1 - share)) ** 0.5
    assert all(d.rungs[1].backend == "icl" and d.reason.startswith("explore: Thompson") for d in explored)
    again = [policy.decide(GenerateRequest(input="review", key=f"user-{i}"), context) for i in range(200)]
    assert again == decisions[:200]   # pure: the same request, the same decision


def test_exploration_follows_the_evidence_and_the_cost_term():
    def stats(tuned_quality, tuned_cost):
        return BenchStats(tasks={"*": {
            "icl": BackendStats(n=500, quality=0.8, latency_p50_s=1, latency_p95_s=1, cost_per_request_usd=0.001),
            "tuned": BackendStats(n=500, quality=tuned_quality, latency_p50_s=1, latency_p95_s=1,
                                  cost_per_request_usd=tuned_cost)}})

    def explored(s):
        policy, context = explore(0.5, s)
        return sum(policy.decide(GenerateRequest(input="r", key=str(i)), context).rungs[0].backend == "tuned"
                   for i in range(1000))

    assert explored(stats(0.5, 0.0002)) == 0          # clearly worse: never sent traffic
    assert explored(stats(0.8, 0.0002)) > 400         # as good and cheaper: nearly every eligible request
    assert explored(stats(0.8, 0.003)) == 0           # as good but dearer by more than the cost term allows


def test_challenger_shadow_split_and_promotion(gemini_server, tmp_path):
    from genroute.backends.prompt_template import PromptTemplateBackend, PromptTemplateConfig

    cfg = router_config(gemini_server, tmp_path, {"kind": "static", "backend": "chat"})
    with Router.from_config(cfg) as router:
        challenger = PromptTemplateBackend(
            "lite", PromptTemplateConfig(kind="prompt_template", engine="gemini", model="gemini-2.5-flash-lite"),
            router.resources)
        router.add_challenger("lite", challenger, task="sentiment")
        decision = router.decide("good", task="sentiment")
        assert decision.rungs[0].backend == "chat" and decision.shadow == ("lite",)
        assert router.decide("good", task="other").shadow == ()
        gemini_server.reply_text("positive")
        gemini_server.reply_text("positive")
        result = router.generate("good", task="sentiment")
        router.drain()
        record = OutcomeStore(tmp_path / "outcomes.db").records_sync()[0]
        assert record.id == result.outcome_id and record.outcomes["lite"].agreement == 1.0
        router.promote("sentiment", "lite")
        promoted = router.decide("good", task="sentiment")
        assert [r.backend for r in promoted.rungs] == ["lite", "chat"] and promoted.shadow == ()
        assert "promoted" in promoted.reason
    split = build_policy({"kind": "challenger", "policy": {"kind": "static", "backend": "icl"}, "task": "t",
                          "backend": "tuned", "mode": "split", "share": 0.25})
    firsts = [split.decide(GenerateRequest(input="x", task="t", key=str(i)), CTX).rungs[0].backend
              for i in range(2000)]
    assert 0.2 < firsts.count("tuned") / 2000 < 0.3


@pytest.mark.parametrize(("first", "shadow"), [("icl", ("tuned",)), ("tuned", ())])
def test_a_challenger_never_shadows_the_backend_that_answers_first(first, shadow):
    """A nested policy that sends the request to the challenger itself: it ran twice, compared with itself."""
    policy = build_policy({"kind": "challenger", "policy": {"kind": "static", "backend": first}, "task": "t",
                           "backend": "tuned"})
    decision = policy.decide(GenerateRequest(input="x", task="t"), CTX)
    assert decision.rungs[0].backend == first and decision.shadow == shadow


def test_a_shadow_is_not_run_again_on_the_fallback_rung_that_served(gemini_server, tmp_path):
    """A cascade's fallback rung answered and is also the challenger's shadow: it ran twice, the shadow recorded
    nothing (its record is the served one's) and was paid for all the same."""
    from genroute.testing.faults import Fault

    cascade = {"kind": "cascade", "rungs": [{"backend": "chat"}, {"backend": "pro"}]}
    cfg = router_config(gemini_server, tmp_path, {"kind": "challenger", "task": "t", "backend": "pro",
                                                  "mode": "shadow", "policy": cascade})
    cfg["engines"]["gemini"]["retry"]["attempts"] = 1
    with Router.from_config(cfg) as router:
        gemini_server.fault(Fault.status(503))  # chat fails: pro answers
        gemini_server.reply_text("positive")
        gemini_server.reply_text("positive")
        result = router.generate("good", task="t")
        router.drain()
    assert result.backend == "pro"
    assert [r.model for r in gemini_server.requests] == ["models/gemini-2.5-flash", "models/gemini-2.5-pro"]


def test_compile_from_outcomes(tmp_path, capsys):
    fill(tmp_path, 30, {"chat": (lambda i: float(i % 2), 0.0001), "pro": (1.0, 0.001)})
    OutcomeStore(tmp_path / "outcomes.db").export_jsonl(tmp_path / "matrix.jsonl")
    for source in ("outcomes.db", "matrix.jsonl"):
        assert cli(["compile", "--outcomes", str(tmp_path / source), "--out", str(tmp_path / source[:3])]) == 0
        stats = BenchStats.load(tmp_path / source[:3] / "stats.json")
        assert stats.tasks["t"]["chat"].quality == 0.5 and stats.tasks["t"]["pro"].n == 30
        # The policy config beside it: t's floor at 95 % of pro's 1.0, so chat (0.5, cheaper) is not chosen, where
        # a cost_aware policy given stats.json alone (floor 0) sends t to chat.
        policy = json.loads((tmp_path / source[:3] / "cost_aware.json").read_text())
        assert (policy["relative_floor"], policy["default"]) == (0.95, "pro") and "tasks" not in policy
        catalogue = PolicyContext(catalogue={b: BackendInfo(name=b, kind="x") for b in ("chat", "pro")})
        decided = build_policy(policy).decide(GenerateRequest(input="x", task="t"), catalogue)
        assert decided.rungs[0].backend == "pro"
        floor0 = {"kind": "cost_aware", "stats_path": policy["stats_path"], "default": "pro"}
        assert build_policy(floor0).decide(GenerateRequest(input="x", task="t"), catalogue).rungs[0].backend == "chat"
    assert "learned.npz not trained" in capsys.readouterr().out   # no captured inputs
    assert cli(["compile", "--outcomes", str(tmp_path / "missing.db"), "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit) as exited:  # a usage error, as argparse's own; it used to compile with 1
        cli(["compile", "--outcomes", str(tmp_path / "outcomes.db"), "--out", str(tmp_path / "neg"), "--min-n", "-1"])
    assert exited.value.code == 2 and "--min-n: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()
    line = json.loads((tmp_path / "matrix.jsonl").read_text().splitlines()[0])
    assert set(line) == {"input", "output", "metadata", "outcomes"} and line["metadata"]["task"] == "t"


def test_a_recompile_that_writes_no_policy_removes_the_earlier_ones(tmp_path, capsys):
    # A second compile into the same --out that wrote no cost_aware.json (no entry met --min-n) or no learned.npz
    # (--no-learned) left the earlier run's files beside the new stats.json: a router given them routed as the
    # earlier records said.
    texts = [f"where is my card number {i}" for i in range(10)] + [f"what fee did you charge me {i}" for i in range(10)]
    fill(tmp_path, 20, {"chat": (lambda i: float(i < 10), 0.0001), "pro": (1.0, 0.001)}, inputs=texts)
    out = tmp_path / "out"
    assert cli(["compile", "--outcomes", str(tmp_path / "outcomes.db"), "--out", str(out)]) == 0
    assert (out / "cost_aware.json").is_file() and (out / "learned.npz").is_file()
    capsys.readouterr()
    assert cli(["compile", "--outcomes", str(tmp_path / "outcomes.db"), "--out", str(out), "--no-learned"]) == 0
    assert not (out / "learned.npz").exists() and (out / "cost_aware.json").is_file()
    assert f"{out / 'learned.npz'}: removed" in capsys.readouterr().out
    assert cli(["compile", "--outcomes", str(tmp_path / "outcomes.db"), "--out", str(out), "--min-n", "1000",
                "--no-learned"]) == 0
    assert not (out / "cost_aware.json").exists() and (out / "stats.json").is_file()
    assert f"{out / 'cost_aware.json'}: removed" in capsys.readouterr().out


def test_compile_states_a_small_validation_splits_routing_accuracy_with_n_and_an_interval(tmp_path, capsys):
    # "routing accuracy 1.000 on 4 held out" read as a finding: the reader had no n's worth of doubt to weigh.
    texts = [f"where is my card number {i}" for i in range(10)] + [f"what fee did you charge me {i}" for i in range(10)]
    fill(tmp_path, 20, {"chat": (lambda i: float(i < 10), 0.0001), "pro": (1.0, 0.001)}, inputs=texts)
    assert cli(["compile", "--outcomes", str(tmp_path / "outcomes.db"), "--out", str(tmp_path / "out")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "routing accuracy" in x)
    assert re.search(r"routing accuracy \d\.\d{3} \(\d+ of \d+, exact 95 % CI \[\d\.\d{3}, \d\.\d{3}\]\)", line), line


def test_a_side_without_a_recorded_cost_or_latency_is_unknown_not_free(tmp_path, capsys):
    # A label-only side (feedback's score whose shadow write was lost) averaged in as cost 0 and latency 0: the
    # backend looked cheaper and faster than it was, and one with only such sides looked free.
    lines = [{"metadata": {"id": f"r{i}", "task": "t"},
              "outcomes": {"chat": {"score": 1.0, "cost_usd": 0.002, "latency_s": 0.5} if i < 3 else {"score": 1.0},
                           "pro": {"score": 1.0}}} for i in range(5)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli(["compile", "--outcomes", str(path), "--out", str(tmp_path / "out"), "--no-learned"]) == 0
    out = capsys.readouterr().out
    chat = BenchStats.load(tmp_path / "out" / "stats.json").tasks["t"]["chat"]
    assert (chat.n, chat.cost_per_request_usd, chat.cost_n, chat.latency_p50_s, chat.latency_n) == (5, 0.002, 3, 0.5, 3)
    assert "pro" not in BenchStats.load(tmp_path / "out" / "stats.json").tasks["t"]
    assert "(over the 3 with a recorded cost)" in out
    assert "t / pro: left out: none of its 5 scored sides has a recorded cost_usd" in out
    # Training rows too: the unpriced sides take chat's mean recorded cost, and pro (never priced) is left out.
    rows = training_rows([OutcomeRecord(input=f"q{i}", **line) for i, line in enumerate(lines)])
    assert {(r["backend"], r["cost_usd"]) for r in rows} == {("chat", 0.002)} and len(rows) == 5
    untimed = outcome_stats([OutcomeRecord(metadata={"task": "t"}, outcomes={"pro": Side(score=1.0, cost_usd=0.001)})])
    pro = untimed.tasks["t"]["pro"]
    assert (pro.latency_p50_s, pro.latency_p95_s, pro.latency_n) == (None, None, 0)  # not 0 s, which meets any SLO
    catalogue = PolicyContext(catalogue={"pro": BackendInfo(name="pro", kind="x")}, stats=untimed)
    policy = build_policy({"kind": "cost_aware", "default": "pro", "tasks": {"t": {"max_p95_latency_s": 1.0}}})
    assert "none of 1 measured backend(s)" in policy.decide(GenerateRequest(input="x", task="t"), catalogue).reason


@pytest.mark.parametrize(("side", "says"), [
    ({"score": 1.0, "cost_usd": -0.5}, "m.jsonl:2: outcomes.b.cost_usd: must be a finite number >= 0"),
    ({"score": 1.0, "cost_usd": math.inf}, "m.jsonl:2: outcomes.b.cost_usd: must be a finite number >= 0"),
    ({"score": True}, "m.jsonl:2: outcomes.b.score: must be a number between 0 and 1, not true"),
    ({"score": 1.5}, "m.jsonl:2: outcomes.b.score: must be between 0 and 1"),
    ({"score": "0.5"}, "m.jsonl:2: outcomes.b.score: must be a number between 0 and 1, not \"0.5\""),
    ({"score": 1.0, "cost_usd": "0.01"}, "m.jsonl:2: outcomes.b.cost_usd: must be a number (USD), not \"0.01\""),
    ({"score": 1.0, "latency_s": True}, "m.jsonl:2: outcomes.b.latency_s: must be a number (seconds), not true"),
])
def test_compile_refuses_a_bad_outcome_naming_its_line(tmp_path, capsys, side, says):
    """As genroute bench --outcomes does. A negative cost crashed with pydantic's traceback, an infinite one wrote
    Infinity into stats.json, a JSON true counted as 1 and 1.5 was named by no line."""
    good = {"input": "q1", "metadata": {"id": "r1", "task": "t"}, "outcomes": {"b": {"score": 1.0}}}
    bad = {"input": "q2", "metadata": {"id": "r2", "task": "t"}, "outcomes": {"b": side}}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    assert cli(["compile", "--outcomes", str(path), "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"genroute compile: error: --outcomes: {says}") and not (tmp_path / "out").exists()


def test_scheduled_refresh_picks_up_outcomes_without_a_call(gemini_server, tmp_path):
    import time

    policy = {"kind": "cost_aware", "stats_path": bench_stats(tmp_path, 0.5), "min_quality": 0.8, "default": "pro"}
    cfg = router_config(gemini_server, tmp_path, policy, refresh_every_s=0.2)
    with Router.from_config(cfg) as router:
        router.generate("start the schedule", task="t")   # the first request starts the refresher
        fill(tmp_path, 30, {"chat": (1.0, 0.0001), "pro": (1.0, 0.001)})
        deadline = time.monotonic() + 60
        while router.decide("hi", task="t").rungs[0].backend != "chat" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert router.decide("hi", task="t").rungs[0].backend == "chat"


def test_scheduled_refresh_goes_on_after_the_event_loop_that_started_it_ends(gemini_server, tmp_path):
    """An application calling ``asyncio.run`` per request: the first loop's end cancelled the refresher, and the
    router never started another, so no scheduled refresh ran again."""
    import asyncio

    policy = {"kind": "cost_aware", "stats_path": bench_stats(tmp_path, 0.5), "min_quality": 0.8, "default": "pro"}
    router = Router.from_config(router_config(gemini_server, tmp_path, policy, refresh_every_s=0.1))
    try:
        asyncio.run(router.agenerate("start the schedule", task="t"))  # its loop ends: the refresher with it
        fill(tmp_path, 30, {"chat": (1.0, 0.0001), "pro": (1.0, 0.001)})
        before = router.policy

        async def serve_a_while() -> None:
            await router.agenerate("a request on a new loop", task="t")
            for _ in range(600):  # at most 60 s (a loaded machine): the refresh is due within 0.1 s
                if router.policy is not before:
                    return
                await asyncio.sleep(0.1)

        asyncio.run(serve_a_while())
        assert router.decide("hi", task="t").rungs[0].backend == "chat"
    finally:
        router.close()


def test_close_from_another_thread_stops_the_refresher_of_an_application_loop(gemini_server, tmp_path):
    """The refresher runs on the loop of the first request; ``close()`` from another thread stopped it only on the
    router's own loop, so one on an application's loop went on refreshing the closed router, for good."""
    import asyncio
    import threading
    import time

    policy = {"kind": "static", "backend": "chat"}
    router = Router.from_config(router_config(gemini_server, tmp_path, policy, refresh_every_s=0.1))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(router.agenerate("on the application's loop"), loop).result(10)
        refresher = router._refresher
        router.close()
        deadline = time.monotonic() + 30
        while not refresher.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refresher.done()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_compile_names_the_key_of_a_line_that_is_no_outcome_record(tmp_path, capsys):
    # "data.jsonl:2: not an outcome record (Input should be a valid string)" left the reader to guess which key.
    path = tmp_path / "data.jsonl"
    good = {"input": "q1", "output": "a", "metadata": {"id": "q1"}, "outcomes": {"chat": {"score": 1.0}}}
    bad = {"input": "q2", "output": 7.0, "metadata": {"id": "q2"}, "outcomes": {"chat": {"score": 1.0}}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    assert cli(["compile", "--outcomes", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "data.jsonl:2: not an outcome record (output: Input should be a valid string)" in capsys.readouterr().err


def test_aclose_stops_the_refresher_at_once(gemini_server, tmp_path):
    """A stub of ``_stop_refresher`` in the router's lifecycle mixin came first in ``Router``'s order: a close left the
    refresher sleeping on the application's loop until its next turn (ten minutes here), holding the closed router."""
    import asyncio

    config = router_config(gemini_server, tmp_path, {"kind": "static", "backend": "chat"}, refresh_every_s=600)

    async def main() -> bool:
        async with await Router.acreate(config) as router:
            await router.agenerate("starts the refresher")
            refresher = router._refresher
        return refresher is not None and refresher.done()

    assert asyncio.run(main())


def test_a_stats_file_spells_no_input_keys_one_way_and_reads_both_old_spellings(tmp_path):
    """`genroute compile --outcomes` wrote `"input_keys": null` for outcomes without input text and the bench's
    compile `[]`: one file format, two spellings of "none". Both writers go through `BenchStats.with_input_keys`,
    which records none as null, and a file that holds `[]` reads as one that holds null or nothing."""
    from genroute.outcomes.cli import compile_main

    fill(tmp_path, 30, {"chat": (1.0, 0.0001), "pro": (lambda i: float(i % 2), 0.001)})   # no input captured
    assert compile_main(["--outcomes", str(tmp_path / "outcomes.db"), "--out", str(tmp_path / "out"),
                         "--no-learned"]) == 0
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["input_keys"] is None
    assert BenchStats().with_input_keys([]).input_keys is None
    assert BenchStats().with_input_keys(["b", "a", "b"]).input_keys == ("a", "b")
    for old in ([], None):
        path = tmp_path / f"old-{old}.json"
        path.write_text(json.dumps({"version": 1, "tasks": {}, "input_keys": old}))
        assert BenchStats.load(path).input_keys is None
    assert BenchStats.model_validate({"version": 1}).input_keys is None


def test_a_scheduled_refresh_whose_backend_failed_to_reload_names_the_backend(gemini_server, tmp_path, caplog):
    """A refresh where one backend's reload fails names it on the error (an exception note); the scheduled refresh's
    warning printed only the error's text, so the log did not say which backend's store was down."""
    import asyncio
    import logging

    from genroute.backends.prompt_template import PromptTemplateBackend

    class Broken(PromptTemplateBackend):
        async def reload(self) -> None:
            raise OSError("its store is down")

    async def main() -> None:
        policy = {"kind": "static", "backend": "chat"}
        async with await Router.acreate(router_config(gemini_server, tmp_path, policy, refresh_every_s=0.1)) as router:
            pro = router.backends["pro"]
            router.backends["pro"] = Broken("pro", pro.config, pro.resources)
            await router.agenerate("start the schedule", task="t")  # the first request starts the refresher
            for _ in range(600):  # at most 60 s (a loaded machine): a refresh is due every 0.1 s
                if any("scheduled refresh failed" in r.getMessage() for r in caplog.records):
                    return
                await asyncio.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="genroute"):
        asyncio.run(main())
    warned = [r.getMessage() for r in caplog.records if "scheduled refresh failed" in r.getMessage()]
    assert warned and "its store is down" in warned[0] and "['pro']" in warned[0], warned
