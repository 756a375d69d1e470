"""The cost audit: for each way a request can be billed, the total the loopback server billed on the wire appears,
once, in every place genroute reports cost (call spans, root span, result and its rungs, the budget ledger in
process memory and in redis-server, the ``genroute.cost`` metric, the outcome record). See ``tests/cost_audit.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from genroute import BackendUnavailable, Router
from genroute.testing import Fault

from .chroma_fixtures import chroma_server, knowledge  # noqa: F401 - fixtures
from .cost_audit import FLASH, answer, budget_policy, metric_cost, prompt_estimate, sinks, tokens, usage_cost
from .cost_audit import audit_config as _config
from .cost_audit import served_record_cost as _served_record_cost
from .redis_fixtures import redis_server, redis_session, state  # noqa: F401


# -- (a) retries ------------------------------------------------------------------------------------------------


def test_a_retried_truncated_200_counts_its_estimated_input_once_everywhere(gemini_server, otel, state, tmp_path):
    # Would catch: a 200 whose body was cut (the provider ran and bills the call) charged 0, or charged in the
    # spans and not in the budget, or twice (once by the attempt, once by the retry loop).
    usage = tokens(1000, 200)
    gemini_server.fault(Fault.malformed_json())
    gemini_server.reply_json(answer("fine", usage))

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        record = _served_record_cost(router, result)
        found = sinks(otel, router, result, record=record)

    assert len(gemini_server.requests) == 2
    billed = prompt_estimate(gemini_server, 0) + usage_cost(FLASH, usage)
    found.assert_all(billed)
    assert result.cost_estimated
    (call,) = otel.spans("generate_content")
    assert call.attributes["genroute.cost.estimated"] is True


def test_a_retried_503_costs_nothing_and_the_answer_after_it_its_usage(gemini_server, otel, state, tmp_path):
    # Would catch: an error the provider answered (no usage: Gemini does not bill it) charged an estimate.
    usage = tokens(1000, 200)
    gemini_server.fault(Fault.status(503), times=2)
    gemini_server.reply_json(answer("fine", usage))

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    assert len(gemini_server.requests) == 3
    found.assert_all(usage_cost(FLASH, usage))
    assert not result.cost_estimated


@pytest.mark.parametrize("fault", [Fault.status(503, after_chunks=1), Fault.cut_stream(after_chunks=1)],
                         ids=["error-event", "cut"])
def test_a_stream_whose_usage_came_before_it_failed_is_charged_that_usage_and_then_retried(
        gemini_server, otel, state, tmp_path, fault):
    # A stream sends usage, then fails (an error event, or a cut) before any text: nothing reached the reader, so
    # the attempt is retried; the usage the provider reported for it is what it billed, and counts. Would catch:
    # an error event after usage charged 0 (it was, as a 503 answer is: the provider's error answers are free), a
    # cut charged the prompt's 4-characters-a-token estimate instead of the count the provider sent.
    first = tokens(1000, 0)
    usage = tokens(1000, 200)
    gemini_server.reply_json([{"usageMetadata": first, "modelVersion": FLASH}, answer("never", usage)])
    gemini_server.fault(fault)
    gemini_server.reply_json([answer("fine", usage)])

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        text = "".join(chunk.text for chunk in router.stream("a question", timeout_s=20))
        found = sinks(otel, router, None)

    assert text == "fine" and len(gemini_server.requests) == 2
    found.assert_all(usage_cost(FLASH, first) + usage_cost(FLASH, usage))


def test_retries_that_all_fail_after_the_provider_took_them_put_the_sum_on_the_error(
        gemini_server, otel, state, tmp_path):
    # Would catch: a request that failed (no result) leaving its billed attempts out of the ledger or the metric.
    for _ in range(3):
        gemini_server.fault(Fault.malformed_json())

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        with pytest.raises(BackendUnavailable) as caught:
            router.generate("a question", timeout_s=20)
        found = sinks(otel, router, caught.value)

    billed = sum(prompt_estimate(gemini_server, i) for i in range(3))
    found.assert_all(billed)
    assert caught.value.cost_estimated


# -- (b) fallback after a validator rejected a billed answer ----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_a_rung_billed_then_rejected_by_its_validator_counts_with_the_rung_that_answered(
        gemini_server, otel, state, tmp_path, stream):
    # Would catch: the rejected rung's usage dropped (it was billed), or counted in the root and not in the
    # ledger, or the served side of the outcome record leaving it out; streamed, the buffered rung's alike.
    rejected, served = tokens(800, 50), tokens(900, 120)
    wire = (lambda body: [body]) if stream else (lambda body: body)
    gemini_server.reply_json(wire(answer("not json", rejected)))
    gemini_server.reply_json(wire(answer('{"ok": true}', served, model="gemini-2.5-flash-lite")))
    inner = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["json"]}, {"backend": "lite"}]}
    config = _config(gemini_server, state, tmp_path, inner, {"chat": 0.001, "lite": 0.001})
    config["backends"]["lite"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}

    with Router.from_config(config, **otel.providers) as router:
        if stream:
            *_, last = router.stream("answer in JSON", timeout_s=20)
            result = last.result
        else:
            result = router.generate("answer in JSON", timeout_s=20)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    assert result.backend == "lite"
    first, second = result.decision.rungs_tried
    assert first.outcome == "rejected_by_validator" and first.cost_usd == pytest.approx(usage_cost(FLASH, rejected))
    assert second.cost_usd == pytest.approx(usage_cost("gemini-2.5-flash-lite", served))
    found.assert_all(usage_cost(FLASH, rejected) + usage_cost("gemini-2.5-flash-lite", served))


# -- (f) thinking and cached-content tokens ---------------------------------------------------------------------


def test_thinking_and_cached_tokens_are_priced_at_their_rates_everywhere(gemini_server, otel, state, tmp_path):
    # Would catch: thoughts left unpriced (Gemini bills them as output, apart from candidatesTokenCount), cached
    # tokens priced at the full input rate (or subtracted twice), or a sink reading the tokens another way.
    usage = tokens(5000, 100, thoughtsTokenCount=700, cachedContentTokenCount=4096)
    gemini_server.reply_json(answer("ok", usage))

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        result = router.generate("a long shared prefix, then a question", timeout_s=20)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    billed = (5000 - 4096) * 0.30e-6 + 4096 * 0.03e-6 + (100 + 700) * 2.50e-6
    assert usage_cost(FLASH, usage) == pytest.approx(billed)
    found.assert_all(billed)
    assert result.usage.thinking_tokens == 700 and result.usage.cached_input_tokens == 4096


# -- (c) a stream the reader abandons; (d) a stream the deadline cuts ---------------------------------------------


def _text_event(text: str, usage: dict[str, int] | None = None, finish: str | None = None) -> dict[str, Any]:
    return answer(text, usage or {}, finish=finish)


def test_a_stream_abandoned_before_its_usage_arrived_is_charged_an_estimate_that_the_spans_call_one(
        gemini_server, otel, state, tmp_path):
    # Usage comes only with the last event; the reader stops after two. What the provider bills is not known:
    # genroute charges the prompt (4 characters a token) and the 80 characters received (20 tokens), marked
    # estimated on the call span, the root span and the metric. Would catch: an abandoned stream charged 0, or
    # charged in the spans but not settled in the budget (or the other way), or not marked as an estimate.
    events = [_text_event("a" * 40), _text_event("b" * 40),
              _text_event("c" * 40, tokens(1000, 30), finish="STOP")]
    gemini_server.reply_json(events)

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        stream = router.stream("tell me", timeout_s=20)
        received = [next(stream).text, next(stream).text]
        stream.close()
        found = sinks(otel, router, None)

    assert received == ["a" * 40, "b" * 40]
    found.assert_all(prompt_estimate(gemini_server, 0) + 20 * 2.50e-6)
    (call,) = otel.spans("generate_content")
    (root,) = otel.spans("genroute.generate")
    assert call.attributes["genroute.cost.estimated"] is True and root.attributes["genroute.cost.estimated"] is True
    (point,) = otel.metrics()["genroute.cost"].data.data_points
    assert point.attributes["genroute.cost.estimated"] is True


def test_a_stream_the_deadline_cuts_mid_way_is_charged_the_usage_its_chunks_reported(
        gemini_server, otel, state, tmp_path):
    # Gemini sends the usage so far on every event; the deadline passes while the server stalls after two.
    # Would catch: the cut stream charged only its input, or the full answer it never sent, or the error's
    # cost differing from the budget's settle.
    events = [_text_event("a" * 40, tokens(1000, 10)), _text_event("b" * 40, tokens(1000, 20)),
              _text_event("c" * 40, tokens(1000, 30), finish="STOP")]
    gemini_server.reply_json(events)
    gemini_server.fault(Fault.delay(6, after_chunks=2))
    received: list[str] = []

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - its type is checked below
            for chunk in router.stream("tell me", timeout_s=2):
                received.append(chunk.text)
        found = sinks(otel, router, caught.value)

    assert received == ["a" * 40, "b" * 40]
    assert type(caught.value).__name__ in ("DeadlineExceeded", "StreamInterrupted"), caught.value
    found.assert_all(usage_cost(FLASH, tokens(1000, 20)))
    assert caught.value.cost_estimated


# -- (e) a function-calling run whose tool raises ---------------------------------------------------------------


def test_three_model_turns_around_a_failing_tool_cost_the_sum_of_their_usage(gemini_server, otel, state, tmp_path):
    # Turn 1 calls a tool that raises; its error goes back to the model; turn 2 calls it again; turn 3 answers.
    # Would catch: only the last turn billed (the answer's usage), a turn counted twice (the loop's sum and the
    # call spans), or the tool's failure dropping what the turns before it cost.
    turns = [tokens(300, 20), tokens(400, 25), tokens(500, 60)]
    call = [{"functionCall": {"name": "broken", "args": {"x": 1}}}]
    gemini_server.reply_json(answer("", turns[0], parts=call))
    gemini_server.reply_json(answer("", turns[1], parts=[{"functionCall": {"name": "broken", "args": {"x": 2}}}]))
    gemini_server.reply_json(answer("no data, sorry", turns[2]))

    def broken(x: int) -> str:
        """Always fails."""
        raise ValueError(f"no data for {x}")

    config = _config(gemini_server, state, tmp_path)
    config["backends"]["chat"].update(kind="function_calling", tools=["broken"])
    with Router.from_config(config, tools={"broken": broken}, **otel.providers) as router:
        result = router.generate("what is the data?", timeout_s=20)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    assert result.text == "no data, sorry" and len(gemini_server.requests) == 3
    assert [s.attributes.get("error.type") for s in otel.spans("execute_tool")] == ["ValueError"] * 2
    found.assert_all(sum(usage_cost(FLASH, t) for t in turns))
    assert result.usage.input_tokens == 1200 and result.usage.output_tokens == 105


# -- the local model: free unless priced --------------------------------------------------------------------------


@pytest.mark.parametrize("priced", [False, True], ids=["unpriced", "priced"])
def test_the_local_model_costs_nothing_unless_the_config_prices_it(otel, tmp_path, priced):
    # Would catch: a `pricing` entry for the local model ignored (it was: cost 0 whatever the config said), or a
    # priced local call missing from a sink; unpriced, a local call charged anything but its cloud equivalent.
    pytest.importorskip("llama_cpp")
    config: dict[str, Any] = {
        "engines": {"local": {"kind": "local", "n_threads": 1, "max_output_tokens": 4}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m"}},
        "policy": budget_policy({"kind": "static", "backend": "chat"}, {"chat": 0.01}),
        "outcomes": {"path": str(tmp_path / "outcomes.db")},
    }
    if priced:
        config["pricing"] = {"gemma-3-270m": {"input": 1.0, "output": 2.0}}

    with Router.from_config(config, **otel.providers) as router:
        result = router.generate("Hello", timeout_s=120)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    usage = result.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    found.assert_all((usage.input_tokens * 1.0 + usage.output_tokens * 2.0) / 1e6 if priced else 0.0)
    reference = usage.input_tokens * 0.30e-6 + usage.output_tokens * 2.50e-6  # the cloud equivalent: 2.5 Flash
    assert result.cloud_equivalent_cost_usd == pytest.approx(reference)


# -- a retrieval's embedding ------------------------------------------------------------------------------------


def test_a_retrieving_rungs_embedding_and_answer_count_once_everywhere(gemini_server, otel, state, tmp_path):
    # The Developer API's batchEmbedContents reports no tokens: the question's embedding is priced at its estimated
    # tokens, marked estimated. Would catch: the embedding missing from the ledger or the metric (charged by the
    # embedder outside the rung), or counted twice (its `embeddings` span and the rung's call).
    import asyncio

    from genroute.runtime.billing import estimate_tokens

    from .test_cost_embeddings import _config as retrieval_config
    from .test_cost_embeddings import _fill

    config = retrieval_config(gemini_server, tmp_path, state=state, outcomes={"path": str(tmp_path / "o.db")})
    config["policy"] = budget_policy({"kind": "static", "backend": "rag"}, {"rag": 0.001})
    question = "Where is the bakery?"

    async def main() -> tuple[Router, Any, float, float]:
        async with Router.from_config(config, **otel.providers) as router:
            await _fill(router, tmp_path)  # the ingest's embeddings: not the request's
            otel.exporter.clear()
            before = metric_cost(otel)
            result = await router.agenerate(question, timeout_s=20)
            record = await router.afeedback(result, score=1.0)
            return router, result, before, record.outcomes["rag"].cost_usd
    router, result, before, record = asyncio.run(main())

    found = sinks(otel, router, result, record=record)
    found.metric -= before
    actions = [r.action for r in gemini_server.requests[-2:]]
    assert actions == ["batchEmbedContents", "generateContent"]
    billed = estimate_tokens(question) * 0.15e-6 + usage_cost(FLASH, tokens(100, 10))
    found.assert_all(billed)
    assert result.cost_estimated


# -- an explicit context cache: cached tokens at the cached rate, and the storage its creation pays -----------------


async def test_a_context_cached_request_and_the_storage_its_cache_pays_count_once_everywhere(
        gemini_server, otel, knowledge, tmp_path):
    # Would catch: the storage charged on the create span but not settled in the budget or counted in the metric,
    # cached tokens billed at the full input rate, or the create counted once per rung and once per request.
    from genroute.testing import CacheRoutes

    from .cost_audit import call_cost
    from .test_icl import loaded

    collection, _ = await loaded(knowledge, tmp_path)
    caches = CacheRoutes(gemini_server)
    gemini_server.reply_text("pin", usage=(10, 1))
    config = _config(gemini_server, {"kind": "memory"}, tmp_path, {"kind": "static", "backend": "icl"},
                     {"icl": 0.001}, knowledge=knowledge.config)
    config["backends"]["icl"] = {"kind": "icl", "engine": "gemini", "model": FLASH, "collection": collection,
                                 "selector": "fixed", "k": 8, "system": "Label the intent.",
                                 "context_cache": {"min_tokens": 20, "ttl_s": 600}}
    async with Router.from_config(config, **otel.providers) as router:
        result = await router.agenerate("I forgot my PIN")
        record = await router.afeedback(result, score=1.0)

    (cache,) = caches.caches.values()
    usage = tokens(10 + cache.tokens, 1, cachedContentTokenCount=cache.tokens)
    storage = cache.tokens * (600 / 3600) * 1.00e-6
    found = sinks(otel, router, result, record=record.outcomes["icl"].cost_usd)
    found.call_spans = call_cost(otel, names=("generate_content", "create_cached_content"))
    found.assert_all(usage_cost(FLASH, usage) + storage)
    assert result.cache_storage_cost_usd == pytest.approx(storage)
