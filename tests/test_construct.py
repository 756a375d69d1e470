"""genroute.construct builds the same models validation would, for the models the hot path builds that way."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from google.genai import types
from pydantic import BaseModel, create_model

from genroute import Router
from genroute.backends.base import user_content
from genroute.construct import builder, from_values, replaced
from genroute.testing import GeminiTestServer
from genroute.types import Citation, DecisionRecord, GenerateResult, RungAttempt, ToolCall, Usage


def _same(built: BaseModel, validated: BaseModel) -> None:
    assert type(built) is type(validated)
    assert built == validated
    assert built.model_fields_set == validated.model_fields_set
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump_json() == validated.model_dump_json()
    assert repr(built) == repr(validated)


def test_built_equals_validated_for_every_result_model() -> None:
    usage = Usage(input_tokens=3, output_tokens=5, thinking_tokens=1)
    rung = dict(backend="chat", outcome="ok", error_type=None, error=None, latency_s=0.25, cost_usd=1e-6,
                usage=usage, cost_estimated=False, tool_calls=(ToolCall(name="book", args={"room": "A"}),))
    _same(builder(RungAttempt)(**rung), RungAttempt(**rung))
    attempt = RungAttempt(**rung)
    decision = dict(policy="static", reason="static backend 'chat'", rungs_tried=(attempt,), shadow=("b",))
    _same(builder(DecisionRecord)(**decision), DecisionRecord(**decision))
    result = dict(text="hi", backend="chat", model="gemini-2.5-flash", usage=usage, cost_usd=2e-6,
                  cost_estimated=True, cache_storage_cost_usd=0.0, cloud_equivalent_cost_usd=None, latency_s=0.5,
                  time_to_first_token_s=0.1, finish_reason="stop", decision=DecisionRecord(**decision),
                  citations=(Citation(chunk_id="c1", source="s", score=0.5),),
                  tool_calls=(ToolCall(name="add", args={"a": 1}),), trace_id="ab" * 16, outcome_id="ab" * 16)
    _same(builder(GenerateResult)(**result), GenerateResult(**result))
    _same(from_values(GenerateResult)(dict(result)), GenerateResult(**result))
    # given: the fields the model says were set, where the caller spells out defaults, as validation says.
    build = builder(DecisionRecord, given=("policy", "reason"))
    _same(build(policy="p", reason="r", rungs_tried=(), shadow=()), DecisionRecord(policy="p", reason="r"))
    first, second = build(policy="p", reason="r", rungs_tried=(), shadow=()), build(policy="p", reason="r",
                                                                                    rungs_tried=(), shadow=())
    assert first.model_fields_set is not second.model_fields_set  # each model its own (pydantic adds to it)


def test_a_builder_takes_every_field_and_only_fields() -> None:
    build = builder(DecisionRecord)
    with pytest.raises(TypeError, match="rungs_tried"):
        build(policy="p", reason="r", shadow=())  # a missing field is refused, not defaulted
    with pytest.raises(TypeError, match="extra"):
        build(policy="p", reason="r", rungs_tried=(), shadow=(), extra=1)
    with pytest.raises(TypeError, match="no field 'nope'"):
        builder(DecisionRecord, given=("nope",))

    # Field names become the generated function's parameters: a name that cannot be one is refused at once.
    with pytest.raises(TypeError, match="cannot be a parameter"):
        builder(create_model("Keyworded", **{"lambda": (int, 0)}))


def test_a_plain_text_request_equals_the_validated_request() -> None:
    # The public entry points take a plain string without validating it again: the same request validation
    # builds (fields set included), each with its own dicts; what validation refuses still goes to validation.
    from genroute.errors import UsageError
    from genroute.router.scope import parse_request
    from genroute.types import GenerateRequest

    router = SimpleNamespace(backends={}, _gated=None)  # what parse_request reads of a router: no backends, no gates
    built = parse_request("hello", {}, router)
    _same(built, GenerateRequest(input="hello"))
    assert built.variables is not parse_request("again", {}, router).variables
    for bad in ("", "   \n"):
        with pytest.raises(UsageError) as info:
            parse_request(bad, {}, router)
        assert info.value.field == "input"
    _same(parse_request("hi", {"task": "t"}, router), GenerateRequest(input="hi", task="t"))


def test_replaced_equals_model_copy_and_user_content_equals_a_validated_turn() -> None:
    part = types.Part(text="")
    _same(replaced(part, text="hello"), part.model_copy(update={"text": "hello"}))
    _same(user_content("hello"), types.Content(role="user", parts=[types.Part(text="hello")]))
    first, second = user_content("a"), user_content("b")
    assert first.parts[0].text == "a" and second.parts[0].text == "b"  # no shared state between copies
    assert first.parts is not second.parts


def test_a_routed_result_is_what_validation_would_build() -> None:
    with GeminiTestServer() as server:
        config = {"engines": {"g": {"kind": "gemini", "api_key": "k", "base_url": server.base_url}},
                  "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}}}
        with Router.from_config(config) as router:
            result = router.generate("hello")
    _same(result, GenerateResult.model_validate(result.model_dump()))
    assert result.model_fields_set == set(GenerateResult.model_fields)
    for attempt in result.decision.rungs_tried:
        _same(attempt, RungAttempt.model_validate(attempt.model_dump()))


def test_usage_sums_and_reported_usage_equal_validated_usage() -> None:
    from genroute.runtime.telemetry import usage_of

    no_audio = {"audio_input_tokens": 0, "cached_audio_input_tokens": 0, "audio_output_tokens": 0}
    a, b = Usage(input_tokens=3, output_tokens=5), Usage(input_tokens=1, cached_input_tokens=1, thinking_tokens=2)
    _same(a + b, Usage(input_tokens=4, output_tokens=5, cached_input_tokens=1, thinking_tokens=2, **no_audio))
    response = types.GenerateContentResponse(usage_metadata=types.GenerateContentResponseUsageMetadata(
        prompt_token_count=7, candidates_token_count=2, thoughts_token_count=None))
    _same(usage_of(response), Usage(input_tokens=7, output_tokens=2, cached_input_tokens=0, thinking_tokens=0,
                                    **no_audio))
    audio = types.GenerateContentResponse(usage_metadata=types.GenerateContentResponseUsageMetadata(
        prompt_token_count=7, candidates_token_count=2, cached_content_token_count=4,
        prompt_tokens_details=[types.ModalityTokenCount(modality="TEXT", token_count=2),
                               types.ModalityTokenCount(modality="AUDIO", token_count=5)],
        cache_tokens_details=[types.ModalityTokenCount(modality="AUDIO", token_count=4)]))
    _same(usage_of(audio), Usage(input_tokens=7, output_tokens=2, cached_input_tokens=4, thinking_tokens=0,
                                 audio_input_tokens=5, cached_audio_input_tokens=4, audio_output_tokens=0))
    spoken = types.GenerateContentResponse(usage_metadata=types.GenerateContentResponseUsageMetadata(
        prompt_token_count=7, candidates_token_count=6,
        candidates_tokens_details=[types.ModalityTokenCount(modality="TEXT", token_count=2),
                                   types.ModalityTokenCount(modality="AUDIO", token_count=4)]))
    _same(usage_of(spoken), Usage(input_tokens=7, output_tokens=6, cached_input_tokens=0, thinking_tokens=0,
                                  audio_input_tokens=0, cached_audio_input_tokens=0, audio_output_tokens=4))


def test_a_plugin_output_of_other_types_is_validated_into_the_result() -> None:
    # BackendOutput is a plain dataclass: a plugin backend may fill it with a list of dicts. The result is then
    # validated (the dicts become Citations), as it always was, instead of built from the values as they are.
    from opentelemetry.trace import INVALID_SPAN

    from genroute.backends.base import BackendOutput
    from genroute.router.ledger import Ledger, _as_declared
    from genroute.runtime.context import RunContext
    from genroute.runtime.pricing import Pricing
    from genroute.runtime.telemetry import Telemetry
    from genroute.types import Decision, GenerateRequest

    citation = {"chunk_id": "c1", "source": "s", "score": 0.5}
    loose = BackendOutput(text="hi", model="m", citations=[citation])
    assert not _as_declared(loose)
    assert _as_declared(BackendOutput(text="hi", model="m", citations=(Citation(**citation),)))
    ctx = RunContext(GenerateRequest(input="x"), "chat", telemetry=Telemetry(), pricing=Pricing())
    ledger = Ledger()
    result = ledger.result(Decision.single("static", "chat", "r"), ctx, loose, INVALID_SPAN, 0.0, None,
                           outcome_ids=False, served=(0, 0.0))
    assert result.citations == (Citation(**citation),)
    _same(result, GenerateResult.model_validate(result.model_dump()))


def test_usage_is_zero_only_without_any_token() -> None:
    from genroute.types import NO_USAGE

    assert NO_USAGE.is_zero and Usage().is_zero
    for field in ("input_tokens", "output_tokens", "cached_input_tokens", "thinking_tokens"):
        assert not Usage(**{field: 1}).is_zero


def test_one_store_init_builds_what_the_dataclass_init_builds() -> None:
    import dataclasses
    import inspect

    from genroute.backends.base import BackendOutput, Prepared
    from genroute.construct import one_store_init

    for cls in (Prepared, BackendOutput):
        ours, theirs = inspect.signature(cls.__init__), inspect.signature(cls.__dataclass_init__)
        assert [(p.name, p.kind) for p in ours.parameters.values()][1:] == [
            (p.name, p.kind) for p in theirs.parameters.values()][1:]
        for name, param in list(theirs.parameters.items())[1:]:
            default = ours.parameters[name].default
            assert default is param.default or (default is dataclasses.MISSING and
                                                cls.__dataclass_fields__[name].default_factory is not dataclasses.MISSING)
    cases = [(Prepared, ("m", "hello", None), {}), (Prepared, (), dict(model="m", contents="x", config=None,
                                                                      price_as="base", extra={"k": 1})),
             (BackendOutput, ("hi", "m"), {}), (BackendOutput, (), dict(text="hi", model="m", finish_reason="stop",
                                                                        citations=(), no_context=True))]
    for cls, args, kwargs in cases:
        built, reference = cls(*args, **kwargs), object.__new__(cls)
        cls.__dataclass_init__(reference, *args, **kwargs)
        assert built == reference and repr(built) == repr(reference) and vars(built) == vars(reference)
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.model = "other"  # type: ignore[misc]
        assert dataclasses.replace(built, model="other").model == "other"
    assert Prepared("m", "x", None).extra is not Prepared("m", "x", None).extra  # a factory's default, each its own
    with pytest.raises(TypeError):
        Prepared("m", "x")  # a required field missing, as before

    @dataclasses.dataclass(frozen=True)
    class Later:
        a: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="plain dataclass fields"):
        one_store_init(Later)



def test_a_builder_of_more_fields_than_one_display_holds_equals_validation() -> None:
    # Past 15 fields the builder stores the rest one by one: same values, same order, same fields set.
    wide = create_model("Wide", **{f"f{i}": (int, 0) for i in range(40)})
    values = {f"f{i}": i * 7 for i in range(40)}
    _same(builder(wide)(**values), wide(**values))
    assert list(builder(wide)(**values).__dict__) == [f"f{i}" for i in range(40)]


def test_the_served_result_is_built_as_validation_builds_it() -> None:
    # Ledger.result spells GenerateResult's fields out as a dict (from_values): every field, in the model's order.
    from opentelemetry.trace import INVALID_SPAN

    from genroute.backends.base import BackendOutput
    from genroute.router.ledger import Ledger
    from genroute.runtime.context import RunContext
    from genroute.runtime.pricing import Pricing
    from genroute.runtime.telemetry import Telemetry
    from genroute.types import Decision, GenerateRequest

    ctx = RunContext(GenerateRequest(input="x"), "chat", telemetry=Telemetry(), pricing=Pricing())
    ctx.usage, ctx.cost_usd, ctx.model = Usage(input_tokens=2, output_tokens=1), 3e-6, "gemini-2.5-flash-001"
    ledger = Ledger()
    output = BackendOutput(text="hi", model="gemini-2.5-flash", finish_reason="stop",
                           citations=(Citation(chunk_id="c1", source="s", score=0.5),))
    result = ledger.result(Decision.single("static", "chat", "r"), ctx, output, INVALID_SPAN, 0.0, 0.1,
                           outcome_ids=True, served=(0, 0.0))
    assert list(result.__dict__) == list(GenerateResult.model_fields)
    assert result.outcome_id is not None and result.finish_reason == "stop"
    _same(result, GenerateResult(**result.__dict__))
