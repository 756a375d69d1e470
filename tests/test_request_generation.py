"""A request's own generation settings (``GenerateRequest.generation``) over its backend's, on the loopback wire and
the local model: what reached the engine, every rung and shadow, sync/async/stream alike, bad values named."""

from __future__ import annotations

import asyncio

import pytest

from genroute import BudgetExceeded, GenerateRequest, Router, UsageError

from .conftest import gemini_config

BACKEND = {"temperature": 0.1, "max_output_tokens": 20, "stop_sequences": ["END"], "top_k": 7}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def sent(server, model: str | None = None) -> list[dict]:
    """The generationConfig of each request the server received (for ``model``, if given)."""
    return [r.body.get("generationConfig", {}) for r in server.requests
            if r.model and (model is None or r.model.endswith(model))]


def test_the_requests_settings_reach_the_wire_over_the_backends_and_only_for_that_request(gemini_server):
    config = gemini_config(gemini_server, generation={**BACKEND, "response_schema": SCHEMA}, system="Be brief.")
    with Router.from_config(config) as router:
        gemini_server.reply_text('{"a": 1}')
        router.generate("x", generation={"temperature": 0.9, "max_output_tokens": 500, "seed": 4})
        gemini_server.reply_text('{"a": 2}')
        router.generate("x")  # the backend's config, built once and reused, is not the override's
    over, plain = sent(gemini_server)
    assert (over["temperature"], over["maxOutputTokens"], over["seed"]) == (0.9, 500, 4)
    # The backend's other settings are kept: its stops, top_k, JSON mode and schema, its system instruction.
    assert over["stopSequences"] == ["END"] and over["topK"] == 7
    assert over["responseMimeType"] == "application/json" and over["responseJsonSchema"] == SCHEMA
    assert gemini_server.requests[0].body["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert (plain["temperature"], plain["maxOutputTokens"]) == (0.1, 20) and "seed" not in plain


def test_stop_sequences_replace_the_backends_and_a_backend_without_settings_takes_them(gemini_server):
    with Router.from_config(gemini_config(gemini_server, generation={"stop_sequences": ["END"]})) as router:
        router.generate("x", generation={"stop_sequences": ["STOP", "\n\n"]})
        router.generate("x", generation={"stop_sequences": []})  # none at all, for this request
    with Router.from_config(gemini_config(gemini_server)) as router:  # a backend with no generation settings
        router.generate("x", generation={"top_p": 0.5})
    assert GenerateRequest(input="x", generation={}).generation is None  # nothing given: the backend's, as without
    replaced, none, bare = sent(gemini_server)
    assert replaced["stopSequences"] == ["STOP", "\n\n"] and "stopSequences" not in none
    assert bare == {"topP": 0.5}


def test_every_rung_and_every_shadow_gets_the_requests_settings_and_a_judge_keeps_its_own(gemini_server):
    config = gemini_config(gemini_server, generation=BACKEND)
    chat = config["backends"]["chat"]
    config["backends"].update(pro={**chat, "model": "gemini-2.5-pro"}, judge={**chat, "model": "gemini-2.5-flash-lite"},
                              shadow={**chat, "model": "gemini-2.0-flash", "generation": {"temperature": 1.5}})
    config["policy"] = {"kind": "cascade", "shadow": ["shadow"],
                        "rungs": [{"backend": "chat", "validators": ["judge:judge"]}, {"backend": "pro"}]}
    verdict = {"candidates": [{"content": {"role": "model", "parts": [{"text": "FAIL"}]}, "finishReason": "STOP"}]}
    gemini_server.reply_json(verdict, path=r".*/gemini-2\.5-flash-lite:generateContent")  # the first rung's refused
    with Router.from_config(config) as router:
        result = router.generate("x", generation={"temperature": 0.0, "max_output_tokens": 64})
    assert result.backend == "pro"
    for model in ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"):  # both rungs and the shadow
        (gen,) = sent(gemini_server, model)
        assert (gen["temperature"], gen["maxOutputTokens"]) == (0.0, 64), model
        assert gen.get("stopSequences") == (None if model == "gemini-2.0-flash" else ["END"])  # each backend's own
    # The judge answers about the request with its own settings: the request's are not the judge's call's.
    (judged,) = sent(gemini_server, "gemini-2.5-flash-lite")
    assert (judged["temperature"], judged["maxOutputTokens"]) == (0.1, 20)


def test_a_challenger_is_compared_on_the_requests_settings(gemini_server):
    config = gemini_config(gemini_server, generation=BACKEND)
    config["backends"]["pro"] = {**config["backends"]["chat"], "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "challenger", "policy": {"kind": "static", "backend": "chat"}, "task": "t",
                        "backend": "pro"}
    with Router.from_config(config) as router:
        router.generate("x", task="t", generation={"temperature": 0.4, "top_p": 0.9})
    for model in ("gemini-2.5-flash", "gemini-2.5-pro"):  # the incumbent and its challenger
        (gen,) = sent(gemini_server, model)
        assert (gen["temperature"], gen["topP"], gen["maxOutputTokens"]) == (0.4, 0.9, 20), model


@pytest.mark.parametrize(("generation", "field"), [
    ({"temperature": 3.0}, "generation.temperature"), ({"max_output_tokens": 0}, "generation.max_output_tokens"),
    ({"top_p": 0.0}, "generation.top_p"), ({"stop_sequences": [""]}, "generation.stop_sequences"),
    ({"temperature": float("nan")}, "generation.temperature"), ({"response_schema": {}}, "generation.response_schema"),
])
def test_bad_settings_are_a_usage_error_naming_the_field(gemini_server, generation, field):
    with Router.from_config(gemini_config(gemini_server)) as router:
        with pytest.raises(UsageError) as info:
            router.generate("x", generation=generation)
        assert info.value.field == field, info.value
        with pytest.raises(UsageError) as built:
            GenerateRequest(input="x", generation=generation)
        assert built.value.field == field, built.value
    assert gemini_server.requests == []


def test_sync_async_and_streamed_requests_send_the_same_settings(gemini_server):
    generation = {"temperature": 0.3, "max_output_tokens": 99, "stop_sequences": ["Q:"]}
    with Router.from_config(gemini_config(gemini_server, generation=BACKEND)) as router:
        router.generate("x", generation=generation)
        asyncio.run(router.agenerate("x", generation=generation))
        list(router.stream("x", generation=generation))

        async def astream() -> None:
            async for _ in router.astream(GenerateRequest(input="x", generation=generation)):
                pass

        asyncio.run(astream())
    configs = sent(gemini_server)
    assert len(configs) == 4 and all(c == configs[0] for c in configs), configs
    assert (configs[0]["temperature"], configs[0]["maxOutputTokens"], configs[0]["stopSequences"]) == (0.3, 99, ["Q:"])


@pytest.mark.local
def test_the_local_model_honours_the_requests_max_output_tokens_and_stop_sequences():
    pytest.importorskip("llama_cpp")
    config = {"engines": {"local": {"kind": "local", "n_threads": 1}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                    "generation": {"max_output_tokens": 24, "temperature": 0.0}}}}
    with Router.from_config(config) as router:
        plain = router.generate("The capital of France is")
        short = router.generate("The capital of France is", generation={"max_output_tokens": 2})
        # A character the plain answer has past its start: the request's stop ends the answer just before it.
        stop = next(c for c in plain.text.strip()[1:] if not c.isspace())
        stopped = router.generate("The capital of France is", generation={"stop_sequences": [stop]})
    assert plain.usage.output_tokens > 2
    assert short.usage.output_tokens <= 2 and short.finish_reason == "max_tokens", short
    assert stopped.text == plain.text[:plain.text.index(stop, len(plain.text) - len(plain.text.lstrip()) + 1)]
    assert stopped.finish_reason == "stop"


def test_an_outcome_record_says_which_settings_the_request_carried(gemini_server, tmp_path):
    from genroute.outcomes import OutcomeStore

    config = gemini_config(gemini_server, generation=BACKEND)
    config["backends"]["pro"] = {**config["backends"]["chat"], "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["pro"]}
    config["outcomes"] = {"path": str(tmp_path / "o.db"), "scorer": "label_accuracy"}
    with Router.from_config(config) as router:
        over = router.generate("x", generation={"temperature": 0.7, "stop_sequences": ["Q:"]})
        plain = router.generate("x")
        router.drain()
    records = {r.id: r for r in OutcomeStore(tmp_path / "o.db").records_sync()}
    assert records[over.outcome_id].metadata["generation"] == {"temperature": 0.7, "stop_sequences": ["Q:"]}
    assert "generation" not in records[plain.outcome_id].metadata
    assert set(records[over.outcome_id].outcomes) == {"chat", "pro"}  # the shadow compared on the same settings


def test_a_budget_holds_the_output_tokens_a_request_raises_its_backends_max_output_tokens_by(gemini_server):
    # The hold was the backend's estimate (`costs`, made under its max_output_tokens of 20) whatever the request
    # allowed: 4,020 tokens could cost $0.01 more than held. Now the hold adds them at the output rate.
    config = gemini_config(gemini_server, generation=BACKEND)  # gemini-2.5-flash: $2.50 per 1M output tokens
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": 0.01, "costs": {"chat": 0.001}}
    with Router.from_config(config) as router:
        with pytest.raises(BudgetExceeded) as info:
            router.generate("x", generation={"max_output_tokens": 20 + 4_000})  # $0.001 + $0.01 > $0.01
        assert "needs up to $0.011" in str(info.value), info.value
        assert gemini_server.requests == []  # refused before anything was sent
        router.generate("x", generation={"max_output_tokens": 20 + 3_000})  # $0.0085: held, then settled
        router.generate("x", generation={"max_output_tokens": 5, "temperature": 0.0})  # lowered: the estimate
    assert [g["maxOutputTokens"] for g in sent(gemini_server)] == [3_020, 5]


def test_a_budget_downgrades_a_request_whose_own_max_output_tokens_its_left_cannot_hold(gemini_server, tmp_path):
    # cost_aware (and learned) order backends by their measured cost per request, which no max_output_tokens
    # enters; the budget around them compares its estimate with what is left to downgrade, and that estimate left
    # out the tokens a request raises max_output_tokens by, which its gate then holds: the request was decided for
    # chat, refused there, and stepped down with a reason that named chat. It is now downgraded when deciding.
    from genroute.policies.stats import BackendStats, BenchStats

    figures = {"latency_p50_s": 0.1, "latency_p95_s": 0.2}
    stats = BenchStats(tasks={"*": {"chat": BackendStats(n=50, quality=0.9, cost_per_request_usd=0.0005, **figures),
                                    "cheap": BackendStats(n=50, quality=0.5, cost_per_request_usd=0.00005, **figures)}})
    config = gemini_config(gemini_server, generation=BACKEND)  # gemini-2.5-flash: $2.50 per 1M output tokens
    config["backends"]["cheap"] = {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite"}
    config["policy"] = {"kind": "budget", "per": "global", "budget_usd": 0.01, "costs": {"chat": 0.001, "cheap": 0.0001},
                        "on_exhausted": "downgrade", "downgrade_to": "cheap",
                        "inner": {"kind": "cost_aware", "stats_path": str(stats.save(tmp_path / "stats.json")),
                                  "min_quality": 0.8, "default": "chat"}}
    with Router.from_config(config) as router:
        raised = router.generate("x", generation={"max_output_tokens": 20 + 4_000})  # $0.001 + $0.01 > $0.01 left
        assert raised.backend == "cheap"
        assert "< $0.011 for chat; downgraded to cheap" in raised.decision.reason, raised.decision.reason
        within = router.generate("x", generation={"max_output_tokens": 20 + 3_000})  # $0.0085: chat
        plain = router.generate("x")
    assert (within.backend, plain.backend) == ("chat", "chat") and "downgraded" not in within.decision.reason
    assert [r.model.rsplit("/", 1)[-1] for r in gemini_server.requests if r.model] == [
        "gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-flash"]


def test_a_budget_refuses_a_request_that_clears_its_backends_output_limit_before_anything_is_sent(gemini_server):
    # generation={"max_output_tokens": None} clears the backend's limit: the model's own applies (65,536 tokens on
    # 2.5 Flash), which genroute does not know, so the budget's hold added nothing for it and each such request in
    # flight could overspend the budget by up to the model's whole output. It is refused under a budget, naming the
    # field, before anything is sent or held; a number is held as before, and without a budget nothing changes.
    config = gemini_config(gemini_server, generation=BACKEND)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": 0.01, "costs": {"chat": 0.001}}
    cleared = {"max_output_tokens": None, "temperature": 0.5}

    async def main() -> tuple[list[UsageError], dict[str, float], list[str]]:
        refused = []
        async with Router.from_config(config) as router:
            for call in (lambda: router.agenerate("x", generation=cleared),
                         lambda: router.agenerate(GenerateRequest(input="x", backend="chat", generation=cleared)),
                         lambda: anext(router.astream("x", generation=cleared)),
                         lambda: router.adecide("x", generation=cleared)):
                with pytest.raises(UsageError) as info:
                    await call()
                refused.append(info.value)
            held = await router.admission.budget().usage("*")
            await router.agenerate("x", generation={"max_output_tokens": 30})  # a number: held and sent
            await router.agenerate("x", generation={"temperature": 0.5})  # no limit given: the backend's
        return refused, held, [g.get("maxOutputTokens") for g in sent(gemini_server)]

    refused, held, limits = asyncio.run(main())
    assert {(e.field, e.message) for e in refused} == {
        ("generation.max_output_tokens", "a budget cannot hold a request with no output limit: give a number")}
    assert held == {"spent": 0.0, "reserved": 0.0} and limits == [30, 20]
    with Router.from_config(gemini_config(gemini_server, generation=BACKEND)) as router:  # no budget: sent
        router.generate("x", generation=cleared)
    assert "maxOutputTokens" not in sent(gemini_server)[-1]


SIX = ["a", "b", "c", "d", "e", "f"]


def test_more_stop_sequences_than_gemini_takes_are_refused_before_anything_is_sent(gemini_server):
    # Gemini takes at most 5 stop sequences. A Gemini backend with 6 built, and its first request was the provider's
    # 400; a request's override of 6 had the 6th silently dropped. Both are refused, naming the field; the local
    # engine takes any number.
    from genroute import ConfigError

    with pytest.raises(ConfigError) as built:
        Router.from_config(gemini_config(gemini_server, generation={"stop_sequences": SIX}))
    assert built.value.field == "backends.chat.generation.stop_sequences" and "at most 5" in built.value.message
    with Router.from_config(gemini_config(gemini_server, generation={"stop_sequences": SIX[:5]})) as router:
        with pytest.raises(UsageError) as asked:
            router.generate("x", generation={"stop_sequences": SIX})
        assert asked.value.field == "generation.stop_sequences" and "at most 5" in asked.value.message
        with pytest.raises(UsageError):
            list(router.stream("x", generation={"stop_sequences": SIX}))
        router.generate("x", generation={"stop_sequences": SIX[1:]})
    assert [c["stopSequences"] for c in sent(gemini_server)] == [SIX[1:]]
    local = {"engines": {"local": {"kind": "local", "n_threads": 1}},
             "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                   "generation": {"stop_sequences": [f"s{i}" for i in range(12)]}}}}
    Router.from_config(local).close()


@pytest.mark.parametrize("seed", [-1, 2**32 - 1, 10**30])
def test_a_seed_the_local_engine_cannot_take_is_named_where_it_was_set(seed):
    # llama.cpp takes 0..2**32-2. A backend's seed outside it was built, then every request failed, and so did a
    # request's own: each with the engine's UsageError naming its call's `config.seed`, a field no caller set. Now
    # the backend's is refused at build and the request's before the model is asked, each naming its own field.
    from genroute import ConfigError

    chat = {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m"}
    config = {"engines": {"local": {"kind": "local", "n_threads": 1}}, "backends": {"chat": chat}}
    with pytest.raises(ConfigError) as built:
        Router.from_config({**config, "backends": {"chat": {**chat, "generation": {"seed": seed}}}})
    assert built.value.field == "backends.chat.generation.seed", built.value
    with Router.from_config(config) as router:
        for call in (lambda: router.generate("x", generation={"seed": seed}),
                     lambda: list(router.stream("x", generation={"seed": seed})),
                     lambda: asyncio.run(router.agenerate("x", generation={"seed": seed}))):
            with pytest.raises(UsageError) as asked:
                call()
            assert asked.value.field == "generation.seed" and "4294967294" in asked.value.message
        assert router.resources.engines["local"]._instances == []  # refused before the model was loaded
