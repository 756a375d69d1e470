"""Rate limits and circuit breakers, end to end on the loopback Gemini server (memory and real Redis state).

Rate limits: wait for the next window vs fall through to the next rung; tokens estimated, then corrected.
Breakers: N failures open one, its rungs are dropped from the decision (reason says so), one half-open probe,
success closes; a 429 with Retry-After opens it for that long; another router sharing Redis sees it open.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from genroute import CircuitOpen, GenerateResult, RateLimited, Router
from genroute.admission.breaker import skip_open
from genroute.errors import ConfigError
from genroute.testing import Reply
from genroute.types import Decision, Rung

from .conftest import gemini_config
from .redis_fixtures import RedisServer, redis_server, redis_session, state  # noqa: F401

CASCADE = {"kind": "cascade", "rungs": [{"backend": "chat"}, {"backend": "cheap"}]}


def _config(server: Any, **sections: Any) -> dict[str, Any]:
    config = gemini_config(server)
    config["engines"]["gemini"]["retry"]["attempts"] = 1  # one request, one failure: the breaker counts
    config["backends"]["cheap"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    config["policy"] = CASCADE
    return {**config, **sections}


def _fail_chat(server: Any, code: int = 503, *, times: int = 1, retry_after: float | None = None) -> None:
    """Answer the next ``times`` calls to the chat backend's model (only) with ``code``."""
    from genroute.testing.replies import error_body

    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    server.reply_json(error_body(code, retry_after=retry_after), path=r".*/models/gemini-2\.5-flash:generateContent",
                      status=code, headers=headers, times=times)


def _models(server: Any) -> list[str | None]:
    return [(r.model or "").removeprefix("models/") for r in server.requests if r.action == "generateContent"]


# -- rate limits ------------------------------------------------------------------------------------------

def test_fall_through_sends_nothing_past_the_limit(gemini_server, otel, state) -> None:
    limit = {"engine": "gemini", "model": "gemini-2.5-flash", "rpm": 2, "on_limit": "fall_through",
             "window_s": 3600}
    with Router.from_config(_config(gemini_server, rate_limits=[limit], state=state), **otel.providers) as router:
        results = [router.generate(f"q{i}") for i in range(5)]
    assert [r.backend for r in results] == ["chat", "chat", "cheap", "cheap", "cheap"]
    assert _models(gemini_server).count("gemini-2.5-flash") == 2  # never sent to collect a 429
    skipped = results[2].decision.rungs_tried[0]
    assert (skipped.outcome, skipped.error_type) == ("skipped", "RateLimited")
    limited = otel.metrics()["genroute.ratelimit.limited"]
    assert sum(p.value for p in limited.data.data_points) == 3


def test_wait_for_the_next_window_within_the_deadline(gemini_server, otel, state) -> None:
    limit = {"engine": "gemini", "rpm": 2, "window_s": 1.0}  # on_limit: wait (the default)

    async def main() -> list[Any]:
        async with Router.from_config(_config(gemini_server, rate_limits=[limit], state=state),
                                      **otel.providers) as router:
            return await asyncio.gather(*(router.agenerate(f"q{i}", timeout_s=10) for i in range(6)))

    started = time.monotonic()
    results = asyncio.run(main())
    assert all(r.backend == "chat" for r in results)  # every request waited its turn instead of falling through
    assert time.monotonic() - started >= 0.01
    waits = [s.attributes.get("genroute.ratelimit.wait_s", 0.0) for s in otel.spans("genroute.generate")]
    assert sum(w > 0 for w in waits) >= 2  # six requests need three windows: at least two waited
    histogram = otel.metrics()["genroute.ratelimit.wait_s"]
    assert sum(p.count for p in histogram.data.data_points) >= 2


def test_a_wait_past_the_deadline_falls_through_at_once(gemini_server) -> None:
    limit = {"engine": "gemini", "rpm": 1, "window_s": 3600}
    config = _config(gemini_server, rate_limits=[limit])
    config["policy"] = {"kind": "static", "backend": "chat"}
    with Router.from_config(config) as router:
        router.generate("first")
        started = time.monotonic()
        with pytest.raises(RateLimited, match="after the deadline") as caught:
            router.generate("second", timeout_s=2)
    assert time.monotonic() - started < 1.5 and caught.value.retry_after_s > 2
    assert len(_models(gemini_server)) == 1


def test_tokens_are_estimated_then_corrected(gemini_server) -> None:
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=(60, 5))
    limit = {"engine": "gemini", "model": "gemini-2.5-flash", "tpm": 100, "on_limit": "fall_through",
             "window_s": 3600}
    with Router.from_config(_config(gemini_server, rate_limits=[limit])) as router:
        results = [router.generate("x" * 40) for _ in range(4)]  # estimated 10 tokens each; 60 reported
    # Held 10, charged 60: the first two fit (0+10, 60+10 <= 100), then 120 tokens are spent.
    assert [r.backend for r in results] == ["chat", "chat", "cheap", "cheap"]


def test_per_budget_key_limits_are_separate(gemini_server) -> None:
    limit = {"backend": "chat", "per": "budget_key", "rpm": 1, "on_limit": "fall_through", "window_s": 3600}
    with Router.from_config(_config(gemini_server, rate_limits=[limit])) as router:
        backends = [router.generate("q", key=k).backend for k in ("a", "b", "a", "b")]
    assert backends == ["chat", "chat", "cheap", "cheap"]


@pytest.mark.parametrize(("limit", "field"), [
    ({"rpm": 1}, "rate_limits.0"),
    ({"engine": "gemini", "backend": "chat", "rpm": 1}, "rate_limits.0"),
    ({"engine": "gemini"}, "rate_limits.0"),
    ({"engine": "gemini", "rpm": 0}, "rate_limits.0.rpm"),
    ({"engine": "nope", "rpm": 1}, "rate_limits.0.engine"),
    ({"backend": "nope", "rpm": 1}, "rate_limits.0.backend"),
])
def test_rate_limit_config_errors_name_the_field(gemini_server, limit: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Router.from_config(_config(gemini_server, rate_limits=[limit]))
    assert caught.value.field == field


# -- breakers ---------------------------------------------------------------------------------------------

#: Long enough for the requests a test makes while a breaker is open to come within it on a loaded machine (a request
#: after it would be a probe); the tests wait it out with a sleep, which only ever sleeps longer.
COOLDOWN_S = 2.0
BREAKERS = {"failures": 2, "window_s": 30, "cooldown_s": COOLDOWN_S, "refresh_s": 0.05}


def test_breaker_opens_skips_probes_and_closes(gemini_server, otel, state) -> None:
    _fail_chat(gemini_server, times=2)
    with Router.from_config(_config(gemini_server, breakers=BREAKERS, state=state), **otel.providers) as router:
        first = [router.generate(f"q{i}") for i in range(2)]  # chat fails twice: the breaker opens
        sent = len(_models(gemini_server))
        skipped = router.generate("while open")
        assert len(_models(gemini_server)) == sent + 1  # only the cheap rung was called
        time.sleep(COOLDOWN_S + 0.1)  # the cool-down ends: half-open
        probe = router.generate("probe")
        after = router.generate("closed again")
    assert [r.backend for r in first] == ["cheap", "cheap"]
    assert skipped.backend == "cheap" and "breaker open, skipped: chat" in skipped.decision.reason
    assert [a.backend for a in skipped.decision.rungs_tried] == ["cheap"]
    assert probe.backend == "chat" and after.backend == "chat"
    events = [(e.attributes["genroute.breaker"], e.attributes["genroute.breaker.state"])
              for s in sorted(otel.spans("genroute.generate"), key=lambda s: s.start_time) for e in s.events
              if e.name == "genroute.breaker"]
    assert events == [("backend:chat", "open"), ("model:gemini:gemini-2.5-flash", "open"),
                      ("backend:chat", "closed"), ("model:gemini:gemini-2.5-flash", "closed")]
    opens = otel.metrics()["genroute.breaker.opens"]
    assert sum(p.value for p in opens.data.data_points) == 2


def test_a_failed_probe_opens_it_again(gemini_server) -> None:
    _fail_chat(gemini_server, times=3)
    with Router.from_config(_config(gemini_server, breakers=BREAKERS)) as router:
        for i in range(2):
            router.generate(f"q{i}")
        time.sleep(COOLDOWN_S + 0.1)
        assert router.generate("probe fails").backend == "cheap"
        assert router.generate("open again").decision.rungs_tried[0].backend == "cheap"


def test_only_one_probe_while_half_open(gemini_server) -> None:
    _fail_chat(gemini_server, times=2)

    async def main() -> list[GenerateResult]:
        async with Router.from_config(_config(gemini_server, breakers=BREAKERS)) as router:
            for i in range(2):
                await router.agenerate(f"q{i}")
            await asyncio.sleep(COOLDOWN_S + 0.1)
            # The probe (to the chat model) takes a while; the others arrive meanwhile.
            gemini_server.default_reply = lambda req: (time.sleep(0.5) if "lite" not in req.path else None) \
                or Reply(parts=({"text": "ok"},))
            return await asyncio.gather(*(router.agenerate(f"p{i}") for i in range(4)))

    results = asyncio.run(main())
    assert sorted(r.backend for r in results) == ["chat", "cheap", "cheap", "cheap"]
    refused = [r.decision.rungs_tried[0] for r in results if r.backend == "cheap"]
    assert all(a.error_type == "CircuitOpen" and a.outcome == "skipped" for a in refused)


def test_retry_after_opens_the_breaker_for_that_long(gemini_server) -> None:
    _fail_chat(gemini_server, 429, retry_after=90)
    config = _config(gemini_server, breakers={**BREAKERS, "failures": 5})
    config["engines"]["gemini"]["retry"]["max_retry_after_s"] = 1  # longer than the engine would wait
    with Router.from_config(config) as router:
        assert router.generate("q").backend == "cheap"  # one 429 is enough
        health = asyncio.run(router._breakers.health())
        assert 85 < health["chat"] <= 90
        assert "breaker open" in router.generate("later").decision.reason


def test_every_rung_open_raises_circuit_open_without_sending(gemini_server) -> None:
    _fail_chat(gemini_server, times=2)
    config = _config(gemini_server, breakers={**BREAKERS, "cooldown_s": 60})
    config["policy"] = {"kind": "static", "backend": "chat"}
    with Router.from_config(config) as router:
        for i in range(2):
            with pytest.raises(Exception):
                router.generate(f"q{i}")
        with pytest.raises(CircuitOpen, match="every rung") as refused:
            router.generate("refused")
    assert len(gemini_server.requests) == 2
    # It carries what it cost, as every failed request's error does: nothing.
    assert refused.value.usage is not None and refused.value.usage.is_zero and refused.value.cost_usd == 0


def test_another_router_sees_an_open_breaker_through_redis(gemini_server, redis_server: RedisServer) -> None:
    state = {"kind": "redis", "url": redis_server.url, "prefix": "shared-breaker:"}
    config = _config(gemini_server, breakers={**BREAKERS, "cooldown_s": 30, "refresh_s": 0.5}, state=state)
    with Router.from_config(config) as one, Router.from_config(config) as other:
        assert other.generate("before").backend == "chat"  # the other router read the breakers: closed
        _fail_chat(gemini_server, times=2)
        for i in range(2):
            one.generate(f"q{i}")
        # Seen within one refresh interval: the first request past it reads the breakers again. (Not a polling loop
        # with a deadline of twice the interval: on a loaded machine one request can take longer than that.)
        time.sleep(config["breakers"]["refresh_s"])
        seen = other.generate("poll")
        assert seen.backend == "cheap" and "breaker open" in seen.decision.reason


@pytest.mark.parametrize(("health", "rungs", "reason"), [
    ({}, ["a", "b"], None),
    ({"a": -0.1}, ["a", "b"], None),  # half-open: kept, one probe may pass
    ({"a": 3.0}, ["b"], "breaker open, skipped: a (open 3.0 s more)"),
    ({"b": 1.0, "z": 9.0}, ["a"], "skipped: b"),
])
def test_skip_open_is_a_pure_function_of_decision_and_health(health: dict[str, float], rungs: list[str],
                                                             reason: str | None) -> None:
    decision = Decision(policy="p", rungs=(Rung(backend="a"), Rung(backend="b")), reason="why")
    result = skip_open(decision, health)
    assert [r.backend for r in result.rungs] == rungs
    assert (result is decision) == (reason is None)
    if reason is not None:
        assert reason in result.reason and result.reason.startswith("why; ")
    with pytest.raises(CircuitOpen):
        skip_open(decision, {"a": 1.0, "b": 2.0})


def test_policies_receive_breaker_state_in_their_context(gemini_server) -> None:
    from genroute.policies.base import PolicyContext

    _fail_chat(gemini_server, times=2)
    seen: list[PolicyContext] = []
    with Router.from_config(_config(gemini_server, breakers={**BREAKERS, "cooldown_s": 60})) as router:
        decide = router.policy.decide
        router.policy.decide = lambda request, context: seen.append(context) or decide(request, context)  # type: ignore[method-assign]
        for i in range(3):
            router.generate(f"q{i}")
    assert seen[0].health == {} and 0 < seen[2].health["chat"] <= 60


def test_decide_leaves_out_what_this_process_saw_open(gemini_server) -> None:
    _fail_chat(gemini_server, times=2)
    with Router.from_config(_config(gemini_server, breakers={**BREAKERS, "cooldown_s": 60})) as router:
        assert [r.backend for r in router.decide("q").rungs] == ["chat", "cheap"]
        for i in range(2):
            router.generate(f"q{i}")
        decision = router.decide("q")
    assert [r.backend for r in decision.rungs] == ["cheap"] and "breaker open" in decision.reason


def test_a_challenger_added_later_is_covered_by_rate_limits(gemini_server) -> None:
    from genroute.backends.prompt_template import PromptTemplateBackend

    limit = {"engine": "gemini", "rpm": 1, "on_limit": "fall_through", "window_s": 3600}
    config = _config(gemini_server, rate_limits=[limit])
    config["policy"] = {"kind": "static", "backend": "cheap"}
    with Router.from_config(config) as router:
        chat = router.backends["chat"]
        extra = PromptTemplateBackend("extra", chat.config, chat.resources)
        router.add_challenger("extra", extra, task="t", mode="split", share=1.0)
        assert router.generate("first", task="t").backend == "extra"
        with pytest.raises(RateLimited):  # its engine's limit applies to it too (one request per hour)
            router.generate("second", task="t", backend="extra")


def test_an_admission_is_one_store_call_in_and_one_out(gemini_server, redis_server: RedisServer) -> None:
    """A budget, a rate limit (rpm and tpm) and two breakers: one Lua script run before the attempt, one after."""
    import redis
    from opentelemetry import trace

    from genroute.admission import Outcome
    from genroute.types import GenerateRequest

    config = _config(gemini_server, breakers=BREAKERS, state={"kind": "redis", "url": redis_server.url},
                     rate_limits=[{"engine": "gemini", "model": "gemini-2.5-flash", "rpm": 100, "tpm": 10**6}])
    config["policy"] = {"kind": "budget", "inner": CASCADE, "per": "global", "budget_usd": 1.0,
                        "costs": {"chat": 0.01, "cheap": 0.001}}
    client = redis.Redis.from_url(redis_server.url)

    def scripts_run() -> int:
        stats = client.info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))

    def tokens_spent() -> int:  # this minute's and the last (the test may straddle a minute)
        window = int(time.time() // 60)
        return sum(int(client.hget(f"genroute:a:ratelimit:engine:gemini:gemini-2.5-flash:{w}:tpm", "spent") or 0)
                   for w in (window - 1, window))

    async def main() -> tuple[int, int, int, dict[str, float]]:
        async with Router.from_config(config) as router:
            await router.agenerate("warm up")  # the script is loaded, the breaker view read
            assert router.admission is not None
            request = GenerateRequest(input="q" * 40)
            decision = await router.adecide(request)
            before, tokens = scripts_run(), tokens_spent()
            attempt = await router.admission.enter(request, decision, "chat", time.monotonic() + 30,
                                                   trace.INVALID_SPAN)
            entered = scripts_run()
            await router.admission.exit(attempt, Outcome(cost_usd=0.002, input_tokens=12))
            calls = (entered - before, scripts_run() - entered)
            return *calls, tokens_spent() - tokens, await router.admission.budget().usage("*")

    calls_in, calls_out, tokens, usage = asyncio.run(main())
    assert (calls_in, calls_out) == (1, 1)
    assert tokens == 12  # settled at what was reported, not the estimate (10)
    assert usage["reserved"] == 0.0 and usage["spent"] > 0.002  # the warm-up answer and this settle


def test_admission_checks_breakers_in_the_store_even_when_this_process_saw_them_closed(
        gemini_server, redis_server: RedisServer) -> None:
    state = {"kind": "redis", "url": redis_server.url, "prefix": "stale-view:"}
    config = _config(gemini_server, breakers={**BREAKERS, "cooldown_s": 30, "refresh_s": 60}, state=state)
    with Router.from_config(config) as one, Router.from_config(config) as other:
        assert other.generate("before").backend == "chat"  # read the breakers once: closed for 60 s
        _fail_chat(gemini_server, times=2)
        for i in range(2):
            one.generate(f"q{i}")
        sent = _models(gemini_server).count("gemini-2.5-flash")
        result = other.generate("after")  # its view is stale; its admission is not
    assert result.backend == "cheap" and "breaker open" not in result.decision.reason
    tried = result.decision.rungs_tried[0]
    assert (tried.backend, tried.outcome, tried.error_type) == ("chat", "skipped", "CircuitOpen")
    assert _models(gemini_server).count("gemini-2.5-flash") == sent  # nothing was sent to the open one


def test_a_router_without_gates_says_it_has_no_budget(gemini_server):
    # router.admission was None without gates, so the README's router.admission.budget() was an AttributeError.
    from genroute import UsageError

    with Router.from_config(gemini_config(gemini_server)) as router:
        with pytest.raises(UsageError) as err:
            router.admission.budget()
        assert err.value.field == "name" and "ledgers: none" in err.value.message
        assert router.generate("hi").text  # still no gate on the request path


def test_a_daily_quotas_retry_after_opens_the_breaker_only_up_to_its_cap(gemini_server, otel, caplog) -> None:
    # A 429 whose Retry-After is a day ("retry in 86400 s", a daily quota) opened the breaker for a day on one answer,
    # closing the backend with no cap. It now opens for breakers.max_retry_after_s at most (then one probe asks
    # again; 300 s by default), with a warning naming the backend and both durations.
    _fail_chat(gemini_server, 429, retry_after=86400)
    config = _config(gemini_server, breakers={**BREAKERS, "failures": 5})
    config["engines"]["gemini"]["retry"]["max_retry_after_s"] = 1  # the engine does not wait for it
    with Router.from_config(config, **otel.providers) as router:
        assert router.generate("q").backend == "cheap"  # one 429 is enough
        health = asyncio.run(router._breakers.health())
    assert 295 < health["chat"] <= 300
    assert "circuit breaker backend:chat of backend 'chat' opens for 300 s, not the 86400 s" in caplog.text
    events = [e for s in otel.spans("genroute.generate") for e in s.events if e.name == "genroute.breaker"]
    assert any("Retry-After 86400 s (capped at breakers.max_retry_after_s, 300 s)" in e.attributes[
        "genroute.breaker.reason"] for e in events)


def test_the_retry_after_cap_is_set_and_checked(gemini_server) -> None:
    _fail_chat(gemini_server, 429, retry_after=86400)
    config = _config(gemini_server, breakers={**BREAKERS, "failures": 5, "max_retry_after_s": 120})
    config["engines"]["gemini"]["retry"]["max_retry_after_s"] = 1
    with Router.from_config(config) as router:
        router.generate("q")
        assert 115 < asyncio.run(router._breakers.health())["chat"] <= 120
    with pytest.raises(ConfigError, match="breakers.max_retry_after_s"):
        Router.from_config(_config(gemini_server, breakers={**BREAKERS, "max_retry_after_s": 0}))


def test_a_request_with_any_finite_timeout_is_admitted(gemini_server, state) -> None:
    """A hold lives until its request's deadline: with Redis, a ``timeout_s`` of 1e308 (valid: positive and finite)
    made an OverflowError out of generate and stream when the hold's TTL became milliseconds."""
    policy = {"kind": "budget", "inner": CASCADE, "per": "global", "budget_usd": 10.0,
              "costs": {"chat": 0.01, "cheap": 0.01}}
    limit = {"engine": "gemini", "rpm": 1000}
    with Router.from_config(_config(gemini_server, policy=policy, rate_limits=[limit], state=state)) as router:
        assert router.generate("Hi", timeout_s=1e308).backend == "chat"
        assert list(router.stream("Hi", timeout_s=1e308))[-1].result.backend == "chat"
        assert asyncio.run(router.admission.budget().usage("*"))["reserved"] == 0
