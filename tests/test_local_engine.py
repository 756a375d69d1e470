"""The local llama.cpp engine with the real bundled Gemma 3 270M (google-genai types in and out)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest
from google.genai import types

from genroute.engines.local import LocalEngine
from genroute.engines.local_prompt import ANSWER_SCHEMA, Defaults, function_call_schema, prepare
from genroute.errors import BackendRejected, BackendUnavailable, ConfigError, UsageError

from .conftest import Otel

pytest.importorskip("llama_cpp")

WEATHER = types.FunctionDeclaration(
    name="get_weather", description="Current weather in a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                            "required": ["city"]},
)
TIME = types.FunctionDeclaration(
    name="get_time", description="Current time in a timezone",
    parameters=types.Schema(type="OBJECT", properties={"timezone": types.Schema(type="STRING")},
                            required=["timezone"]),
)
TOOLS = [types.Tool(function_declarations=[WEATHER, TIME])]


def user(text: str) -> list[types.Content]:
    return [types.Content(role="user", parts=[types.Part(text=text)])]


@pytest.fixture(scope="module")
def engine():
    """One engine (one loaded model) for the whole module; each test drives it from its own loop."""
    # One thread: on a shared 2-core machine, 2 llama.cpp threads per process were 10x slower.
    engine = LocalEngine("local", {"pool_size": 1, "n_threads": 1})
    yield engine
    asyncio.run(engine.aclose())


# -- translation (no model) ------------------------------------------------------------------------


def test_prepare_renders_a_transcript_and_maps_sampling() -> None:
    contents = user("Hi") + [types.Content(role="model", parts=[types.Part(text="Hello!")])] + user("Bye")
    config = types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.7, top_p=0.5, top_k=7,
                                         max_output_tokens=9, stop_sequences=["END"], seed=3)
    prep = prepare(contents, config, Defaults())
    assert prep.prompt == "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:"
    s = prep.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.seed) == (0.7, 0.5, 7, 9, 3)
    assert s.stop[0] == "END" and "\nUser:" in s.stop
    assert prep.schema is None


def test_prepare_gemma_template() -> None:
    prep = prepare(user("Hi"), types.GenerateContentConfig(system_instruction="Sys"), Defaults(prompt_format="gemma"))
    assert prep.prompt == "<start_of_turn>user\nSys\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert prep.sampling.stop == ("<end_of_turn>",)


IMAGE = types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png")


@pytest.mark.parametrize("system", [types.File(name="files/x"), ["Be brief.", types.File(name="files/x")], IMAGE,
                                    ["Be brief.", IMAGE], types.Content(parts=[types.Part(text="Be brief."), IMAGE])])
def test_a_system_instruction_that_is_not_text_is_refused(system: object) -> None:
    # A file in the system instruction raised AttributeError ('File' object has no attribute 'text'); a part holding
    # an image was dropped without a word (in contents it is refused).
    with pytest.raises(UsageError) as caught:
        prepare(user("Hi"), types.GenerateContentConfig(system_instruction=system), Defaults())
    assert caught.value.field == "config.system_instruction"


CLIP = types.Blob(data=b"RIFF" + bytes(60), mime_type="audio/wav")


@pytest.mark.parametrize(("part", "field"), [
    (types.Part(inline_data=CLIP), "contents[1].parts[0].inline_data"),
    (types.Part(text="What is said here?", inline_data=CLIP), "contents[1].parts[0].inline_data"),
    (types.Part(file_data=types.FileData(file_uri="files/clip", mime_type="audio/mp3")),
     "contents[1].parts[0].file_data"),
], ids=["audio", "text-and-audio", "audio-file"])
async def test_an_audio_part_is_refused_naming_it(engine: LocalEngine, part: types.Part, field: str) -> None:
    # A part of text and audio reached the model as its text alone, the audio dropped without a word; audio alone
    # was refused naming only `contents`, not the part nor what it held.
    contents = [*user("Listen."), types.Content(role="user", parts=[part])]
    with pytest.raises(UsageError) as caught:
        prepare(contents, None, Defaults())
    assert caught.value.field == field and "audio/" in str(caught.value)
    for call in (engine.generate("m", contents, None), anext(engine.stream("m", contents, None))):
        with pytest.raises(UsageError) as caught:
            await call
        assert caught.value.field == field


def test_a_function_declaration_without_a_name_is_refused() -> None:
    # It was offered to the model as a function named null.
    tools = [types.Tool(function_declarations=[WEATHER, types.FunctionDeclaration(description="no name")])]
    with pytest.raises(UsageError) as caught:
        prepare(user("Hi"), types.GenerateContentConfig(tools=tools), Defaults())
    assert caught.value.field == "config.tools[0].function_declarations[1].name"


def test_gemma_template_keeps_the_system_text_when_the_model_speaks_first() -> None:
    # A conversation opening with the model's greeting lost the system instruction and the functions on offer.
    greeting = [types.Content(role="model", parts=[types.Part(text="Hi, how can I help?")]), *user("Weather in Oslo?")]
    config = types.GenerateContentConfig(system_instruction="Answer in French.", tools=TOOLS)
    prompt = prepare(greeting, config, Defaults(prompt_format="gemma")).prompt
    assert prompt.startswith("<start_of_turn>model\nAnswer in French.\n\nAvailable functions:\n- get_weather")


def test_function_call_schema_ties_args_to_the_name() -> None:
    schema = function_call_schema([WEATHER, TIME])
    names = [o["properties"]["name"]["const"] for o in schema["oneOf"]]
    assert names == ["get_weather", "get_time"]
    assert schema["oneOf"][1]["properties"]["args"]["properties"]["timezone"]["type"] == "string"


def test_function_calling_modes() -> None:
    answered = user("Weather in Oslo?") + [
        types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name="get_weather", args={"city": "Oslo"}))]),
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(name="get_weather", response={"temp_c": 3}))]),
    ]
    # AUTO, "always" (the old behaviour): a call is forced until a function result comes back, then text.
    always = Defaults(auto_calls="always")
    call = prepare(user("Weather in Oslo?"), types.GenerateContentConfig(tools=TOOLS), always)
    assert call.function_call and not call.may_answer and call.prompt.endswith("User: Weather in Oslo?\nFunction call:")
    text = prepare(answered, types.GenerateContentConfig(tools=TOOLS), always)
    assert not text.function_call and text.schema is None
    assert 'Function result (get_weather): {"temp_c": 3}' in text.prompt
    none = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="NONE"))
    assert not prepare(user("x"), types.GenerateContentConfig(tools=TOOLS, tool_config=none), Defaults()).function_call
    forced = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY"))
    any_call = prepare(user("x"), types.GenerateContentConfig(tools=TOOLS, tool_config=forced), Defaults())
    assert any_call.function_call and not any_call.may_answer


def test_auto_mode_lets_the_model_choose_a_call_or_an_answer() -> None:
    # One schema admits every call and {"answer": text}; the model picks, before and after a tool result,
    # so a loop can go on calling or stop with an answer.
    choose = Defaults(call_bias=1.5)
    first = prepare(user("Weather in Oslo?"), types.GenerateContentConfig(tools=TOOLS), choose)
    assert first.function_call and first.may_answer and first.call_bias == 1.5
    options = first.schema["anyOf"]
    assert [o["properties"].get("name", {}).get("const") for o in options] == ["get_weather", "get_time", None]
    assert options[-1] == ANSWER_SCHEMA
    assert first.prompt.endswith("User: Weather in Oslo?\nAssistant:")
    after = user("Weather in Oslo?") + [
        types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name="get_weather", args={"city": "Oslo"}))]),
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(name="get_weather", response={"temp_c": 3}))]),
    ]
    again = prepare(after, types.GenerateContentConfig(tools=TOOLS), choose)
    assert again.may_answer and again.schema == first.schema
    assert again.call_bias == 0.0  # calibrated on first steps; after a result the model's own odds decide


def test_stop_sequences_are_ignored_under_a_schema() -> None:
    # JSON may contain any stop text (newlines between tokens, anything inside strings): only the grammar ends it.
    stops = ["\n", "}"]
    call = prepare(user("Weather in Oslo?"), types.GenerateContentConfig(tools=TOOLS, stop_sequences=stops),
                   Defaults())
    assert call.function_call and call.sampling.stop == ()
    as_json = prepare(user("x"), types.GenerateContentConfig(response_mime_type="application/json",
                                                             stop_sequences=stops), Defaults())
    assert as_json.schema == {} and as_json.sampling.stop == ()
    text = prepare(user("x"), types.GenerateContentConfig(stop_sequences=stops), Defaults())
    assert text.schema is None and text.sampling.stop[:2] == ("\n", "}")


@pytest.mark.parametrize(("setting", "value"), [
    ("max_output_tokens", 0), ("max_output_tokens", -5), ("temperature", -1.0), ("temperature", 1e9),
    ("temperature", float("nan")), ("temperature", float("inf")), ("top_p", 5.0), ("top_p", 0.0), ("top_k", -3),
    ("stop_sequences", ["\n", ""]), ("seed", -1), ("seed", 2**32 - 1), ("seed", 2**32 + 7),
])
async def test_sampling_out_of_bounds_is_a_usage_error_naming_the_setting(engine: LocalEngine, setting: str,
                                                                          value: object) -> None:
    # The bounds of a backend's `generation` (SamplingSettings): a direct call must not run with 0 tokens
    # becoming the default 256, a NaN temperature, or an empty stop that empties every answer.
    config = types.GenerateContentConfig(**{setting: value})
    with pytest.raises(UsageError) as info:
        prepare(user("x"), config, Defaults())
    assert info.value.field == f"config.{setting}" and not isinstance(info.value, ConfigError)
    for call in (engine.generate("m", user("x"), config), anext(engine.stream("m", user("x"), config))):
        with pytest.raises(UsageError) as info:
            await call
        assert info.value.field == f"config.{setting}"


def test_unset_sampling_takes_the_defaults_and_set_sampling_is_kept() -> None:
    defaults = Defaults(max_output_tokens=7, temperature=0.3)
    unset = prepare(user("x"), types.GenerateContentConfig(), defaults).sampling
    assert (unset.max_tokens, unset.temperature, unset.top_p, unset.top_k) == (7, 0.3, 0.95, 64)
    edges = types.GenerateContentConfig(max_output_tokens=1, temperature=0.0, top_p=1.0, top_k=1)
    kept = prepare(user("x"), edges, defaults).sampling
    assert (kept.max_tokens, kept.temperature, kept.top_p, kept.top_k) == (1, 0.0, 1.0, 1)


def test_caller_mistakes_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        prepare([], None, Defaults())
    with pytest.raises(UsageError):
        prepare(user("x"), types.GenerateContentConfig(candidate_count=2), Defaults())
    with pytest.raises(UsageError) as info:  # it was ignored: free text where the caller asked for XML
        prepare(user("x"), types.GenerateContentConfig(response_mime_type="application/xml"), Defaults())
    assert info.value.field == "config.response_mime_type"
    for schema in ({"response_schema": {"type": "STRING"}}, {"response_json_schema": {"type": "string"}}):
        # Gemini takes a schema only with a JSON or enum answer; here the schema made the "plain text" JSON.
        with pytest.raises(UsageError) as info:
            prepare(user("x"), types.GenerateContentConfig(response_mime_type="text/plain", **schema), Defaults())
        assert info.value.field == "config.response_mime_type"
    with pytest.raises(ConfigError):
        LocalEngine("bad", {"pool_size": 0})
    with pytest.raises(ConfigError) as info:
        LocalEngine("bad", {"kind": "local", "unknown": 1})
    assert info.value.field == "engines.bad.unknown"
    # A request's temperature is at most 2, so is the engine's default; a NaN call_bias turned function calling off.
    # 100,000 threads aborted the whole process (std::bad_alloc in llama.cpp) at the first request.
    for setting, value in (("temperature", 5.0), ("temperature", float("inf")), ("call_bias", float("nan")),
                           ("call_bias", float("-inf")), ("n_threads", 100_000)):
        with pytest.raises(ConfigError) as info:
            LocalEngine("bad", {setting: value})
        assert info.value.field == f"engines.bad.{setting}"
    # An empty model_path (an unset variable written into a config) silently served the bundled model.
    with pytest.raises(ConfigError) as info:
        LocalEngine("bad", {"model_path": ""})
    assert info.value.field == "engines.bad.model_path"
    # llama.cpp reads -1 as "random" (the same seed gave two answers) and 2**32 + 7 as 7.
    for seed in (-1, 2**32 + 7):
        with pytest.raises(ConfigError) as info:
            LocalEngine("bad", {"seed": seed})
        assert info.value.field == "engines.bad.seed"


# -- the real model --------------------------------------------------------------------------------


@pytest.mark.local
async def test_generation_with_usage(engine: LocalEngine) -> None:
    r = await engine.generate("gemma-3-270m", user("What is the capital of France?"),
                              types.GenerateContentConfig(max_output_tokens=16))
    assert r.text and r.text == r.text.strip()
    assert r.candidates[0].finish_reason in (types.FinishReason.STOP, types.FinishReason.MAX_TOKENS)
    usage = r.usage_metadata
    assert usage.prompt_token_count >= 10 and 0 < usage.candidates_token_count <= 16
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert r.model_version == "gemma-3-270m-q4_k_m"
    assert engine.pricing_model("gemma-3-270m") is None and engine.reference_model == "gemini-2.5-flash"


@pytest.mark.local
async def test_a_text_turn_reaches_an_engine_that_takes_no_text_as_one_user_turn(engine: LocalEngine) -> None:
    # Prepared.contents may be a str: RunContext hands an engine without takes_text the one-turn list instead.
    from genroute.runtime.context import RunContext
    from genroute.runtime.pricing import Pricing
    from genroute.runtime.telemetry import Telemetry
    from genroute.types import GenerateRequest

    class Text(str):
        pass

    config = types.GenerateContentConfig(max_output_tokens=4, temperature=0.0)
    question = "What is the capital of France?"
    assert not engine.takes_text
    reference = await engine.generate("gemma-3-270m", user(question), config)
    for contents in (question, Text(question)):
        ctx = RunContext(GenerateRequest(input=question), "local", telemetry=Telemetry(), pricing=Pricing())
        response = await ctx.generate(engine, "gemma-3-270m", contents, config)
        assert response.text == reference.text
        assert response.usage_metadata.prompt_token_count == reference.usage_metadata.prompt_token_count


def _safety_config(threshold: str) -> dict:
    generation = {"max_output_tokens": 4, "temperature": 0.0,
                  "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": threshold}]}
    return {"engines": {"local": {"kind": "local", "n_threads": 1}},
            "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                  "generation": generation}}}


@pytest.mark.local
def test_a_safety_filter_the_local_model_cannot_apply_is_refused_not_dropped() -> None:
    # A backend's Gemini safety settings on the local engine were ignored: no filter ran, and nothing said so.
    from genroute import Router

    with Router.from_config(_safety_config("BLOCK_NONE")) as router:  # no filter asked for: nothing to refuse
        assert router.generate("The capital of France is").usage.output_tokens > 0


def test_a_blocking_safety_filter_on_the_local_engine_is_refused_when_the_router_is_built() -> None:
    # The backend built, and the refusal came only at its first request (UsageError naming config.safety_settings):
    # a misconfigured backend is now a ConfigError naming its setting at build, before the model is loaded.
    from genroute import Router

    with pytest.raises(ConfigError) as info:
        Router.from_config(_safety_config("BLOCK_ONLY_HIGH"))
    assert info.value.field == "backends.chat.generation.safety_settings"
    assert "no safety filter" in info.value.message
    with Router.from_config(_safety_config("OFF")) as router:  # builds: nothing filters, nothing is dropped
        assert router.backends["chat"].engine._instances == []  # and no model was loaded to say so
    # A call that reaches the engine with its own settings (a direct call) is still refused at the call.
    blocking = types.SafetySetting(category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                                   threshold=types.HarmBlockThreshold.BLOCK_ONLY_HIGH)
    with pytest.raises(UsageError) as call:
        prepare(user("x"), types.GenerateContentConfig(safety_settings=[blocking]), Defaults())
    assert call.value.field == "config.safety_settings"


def test_a_backend_swapped_in_by_replacing_is_refused_as_one_built_would_be() -> None:
    # Router.replacing took a local backend with a blocking safety filter (or a thinking budget) without a word:
    # the copy refused it only at its first request (UsageError naming config.safety_settings).
    from genroute import Router
    from genroute.backends.base import SafetySetting
    from genroute.backends.prompt_template import PromptTemplateBackend

    with Router.from_config(_safety_config("OFF")) as router:
        config = router.backends["chat"].config
        blocking = config.generation.model_copy(update={"safety_settings": (
            SafetySetting(category="HARM_CATEGORY_HARASSMENT", threshold="BLOCK_ONLY_HIGH"),)})
        swapped = PromptTemplateBackend("chat", config.model_copy(update={"generation": blocking}), router.resources)
        with pytest.raises(ConfigError) as info:
            router.replacing({"chat": swapped})
        assert info.value.field == "backends.chat.generation.safety_settings"
        assert router.replacing({"chat": router.backends["chat"]}).backends["chat"].engine._instances == []


def test_a_thinking_budget_on_the_local_engine_is_refused_when_the_router_is_built() -> None:
    # Gemma 3 does not think: a thinking_config would be a budget silently not spent.
    from genroute import Router

    config = _safety_config("OFF")
    config["backends"]["chat"]["generation"] = {"thinking_config": {"thinking_budget": 0}}
    with pytest.raises(ConfigError) as info:
        Router.from_config(config)
    assert info.value.field == "backends.chat.generation.thinking_config"
    with pytest.raises(UsageError) as call:  # a direct call's own
        prepare(user("x"), types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0)),
                Defaults())
    assert call.value.field == "config.thinking_config"


@pytest.mark.local
def test_a_pydantic_model_as_response_schema_constrains_the_local_answer() -> None:
    from pydantic import BaseModel

    from genroute import Router

    class Answer(BaseModel):
        city: str
        temp_c: float

    generation = {"max_output_tokens": 48, "temperature": 0.0, "response_mime_type": "application/json",
                  "response_schema": Answer}
    config = {"engines": {"local": {"kind": "local", "n_threads": 1}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                    "generation": generation}}}
    with Router.from_config(config) as router:
        result = router.generate("The weather in Paris as JSON:")
    assert result.finish_reason == "stop"  # the grammar closed the object within max_output_tokens
    assert Answer.model_validate_json(result.text).city


@pytest.mark.local
async def test_max_tokens_and_greedy_determinism(engine: LocalEngine) -> None:
    config = types.GenerateContentConfig(max_output_tokens=3, stop_sequences=["\n"])
    first = await engine.generate("m", user("Count: one two three four five six"), config)
    await engine.generate("m", user("Count: seven eight"), config)  # a different request in between
    second = await engine.generate("m", user("Count: one two three four five six"), config)
    assert first.text == second.text
    assert first.usage_metadata.candidates_token_count <= 3


@pytest.mark.local
async def test_a_character_cut_off_by_max_tokens_is_left_out_not_replaced(engine: LocalEngine) -> None:
    # Rare characters are byte tokens: 2 and 6 tokens end inside one, which used to come back as U+FFFD.
    prompt = user("Repeat exactly: 𓀀𓀁𓀂𓀃 𒀀𒀁")
    for n in (2, 6):
        config = types.GenerateContentConfig(max_output_tokens=n)
        whole = (await engine.generate("m", prompt, config)).text or ""
        streamed = "".join([c.text or "" async for c in engine.stream("m", prompt, config)])
        assert "\ufffd" not in whole and whole == streamed
        assert whole in ("", "𓀀")


@pytest.mark.local
async def test_constrained_json_matches_the_schema(engine: LocalEngine) -> None:
    schema = types.Schema(type="OBJECT", properties={"name": types.Schema(type="STRING", max_length=20),
                                                     "age": types.Schema(type="INTEGER")},
                          required=["name", "age"])
    r = await engine.generate("m", user("Ann is 31 years old. Give her as JSON."),
                              types.GenerateContentConfig(response_mime_type="application/json",
                                                          response_schema=schema, max_output_tokens=40))
    data = json.loads(r.text)
    assert set(data) == {"name", "age"} and isinstance(data["name"], str) and isinstance(data["age"], int)


@pytest.mark.local
@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_an_enum_mime_type_answers_one_value_bare(engine: LocalEngine, stream: bool) -> None:
    # Gemini writes a text/x.enum answer without JSON quotes; the local engine answered '"négatif"'.
    values = ["positif", "négatif", "😐 neutre"]
    config = types.GenerateContentConfig(response_mime_type="text/x.enum", max_output_tokens=8,
                                         response_schema={"type": "STRING", "enum": values})
    prompt = user("Review: I loved it.\nSentiment:")
    if stream:
        text = "".join([c.text or "" async for c in engine.stream("m", prompt, config)])
    else:
        text = (await engine.generate("m", prompt, config)).text
    assert text in values
    with pytest.raises(UsageError) as info:
        await engine.generate("m", prompt, types.GenerateContentConfig(response_mime_type="text/x.enum"))
    assert info.value.field == "config.response_schema"


@pytest.mark.local
@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}, "admits no value"),
    ({"anyOf": []}, "admits no value"),
    ({"type": "string", "pattern": "[a-z"}, "cannot compile"),
])
async def test_a_schema_no_grammar_can_express_is_a_usage_error_naming_it(engine: LocalEngine, schema: dict,
                                                                       message: str) -> None:
    # An unsatisfiable schema used to give an empty GBNF rule that llama.cpp could not parse: it then sampled with
    # no grammar and JSON mode answered in free text.
    config = types.GenerateContentConfig(response_json_schema=schema, max_output_tokens=8)
    with pytest.raises(UsageError, match=message) as caught:
        await engine.generate("m", user("Give a value."), config)
    assert caught.value.field == "config.response_json_schema"


@pytest.mark.local
async def test_function_call_parses_with_valid_args(engine: LocalEngine) -> None:
    r = await engine.generate("m", user("What's the weather like in Paris?"),
                              types.GenerateContentConfig(tools=TOOLS, max_output_tokens=40))
    (call,) = r.function_calls
    assert call.name in {"get_weather", "get_time"}
    expected = {"get_weather": {"city"}, "get_time": {"timezone"}}[call.name]
    assert set(call.args) == expected and all(isinstance(v, str) for v in call.args.values())
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    # After the tool answered, AUTO "always" mode makes the model reply in text.
    always = LocalEngine("always", {"pool_size": 1, "n_threads": 1, "auto_calls": "always"})
    followup = user("What's the weather like in Paris?") + [
        types.Content(role="model", parts=[types.Part(function_call=call)]),
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            name=call.name, response={"result": "sunny, 18 C"}))]),
    ]
    try:
        answer = await always.generate("m", followup, types.GenerateContentConfig(tools=TOOLS, max_output_tokens=16))
    finally:
        await always.aclose()
    assert not answer.function_calls and answer.text


@pytest.mark.local
async def test_auto_mode_calls_for_relevant_requests_and_answers_the_rest() -> None:
    # call_bias 1.5: where these two short tools' requests separate (the default is calibrated on BFCL).
    engine = LocalEngine("choose", {"pool_size": 1, "n_threads": 1, "call_bias": 1.5})
    config = types.GenerateContentConfig(tools=TOOLS, max_output_tokens=40)
    try:
        for request in ("What's the weather like in Paris?", "Is it raining in Oslo?"):
            reply = await engine.generate("m", user(request), config)
            assert [c.name for c in reply.function_calls or []] == ["get_weather"], request
        for request in ("Who wrote Hamlet?", "Tell me a joke about cats."):
            reply = await engine.generate("m", user(request), config)
            assert not reply.function_calls and reply.text and not reply.text.startswith("{"), request
            assert reply.candidates[0].finish_reason == types.FinishReason.STOP
    finally:
        await engine.aclose()


@pytest.mark.local
async def test_streaming_concatenates_to_the_full_text(engine: LocalEngine) -> None:
    config = types.GenerateContentConfig(max_output_tokens=24)
    chunks = [c async for c in engine.stream("m", user("Name three colors."), config)]
    full = await engine.generate("m", user("Name three colors."), config)
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3
    assert "".join(texts) == full.text
    last = chunks[-1]
    assert last.candidates[0].finish_reason is not None
    assert last.usage_metadata.candidates_token_count == full.usage_metadata.candidates_token_count
    # Every chunk carries the usage so far, as Gemini's do (was: none but the last, so a stream its reader abandoned
    # was charged an estimate): the prompt's tokens, and the tokens generated, never fewer than before.
    assert {c.usage_metadata.prompt_token_count for c in chunks} == {full.usage_metadata.prompt_token_count}
    counts = [c.usage_metadata.candidates_token_count for c in chunks]
    assert counts == sorted(counts) and 0 < counts[0] and counts[-2] <= counts[-1]


@pytest.mark.local
async def test_stream_stopped_early_frees_the_model(engine: LocalEngine) -> None:
    async with asyncio.timeout(60):
        stream = engine.stream("m", user("Tell me a long story."), types.GenerateContentConfig(max_output_tokens=200))
        async for _ in stream:
            break
        await stream.aclose()
        r = await engine.generate("m", user("Hi"), types.GenerateContentConfig(max_output_tokens=4))
    assert r.usage_metadata.candidates_token_count <= 4


@pytest.mark.local
@pytest.mark.parametrize("n_ctx", [32_769, 2**33])
async def test_a_context_beyond_the_trained_length_is_a_config_error_naming_n_ctx(n_ctx: int) -> None:
    # Gemma 3 270M was trained on 32,768 tokens. llama.cpp used to try a KV cache that large: 2**30 tokens took
    # 20 s to fail (as a ConfigError naming model_path), 2**33 raised numpy's MemoryError.
    huge = LocalEngine("huge", {"n_ctx": n_ctx, "n_threads": 1})
    try:
        with pytest.raises(ConfigError) as info:
            await huge.generate("m", user("Hi"), types.GenerateContentConfig(max_output_tokens=1))
        assert info.value.field == "engines.huge.n_ctx" and "32768" in info.value.message
    finally:
        await huge.aclose()


@pytest.mark.local
async def test_prompt_longer_than_the_context_is_rejected() -> None:
    small = LocalEngine("small", {"n_ctx": 64, "n_threads": 1})
    try:
        with pytest.raises(BackendRejected):
            await small.generate("m", user("word " * 200))
    finally:
        await small.aclose()


@pytest.mark.local
async def test_concurrent_requests_from_asyncio(engine: LocalEngine) -> None:
    config = types.GenerateContentConfig(max_output_tokens=6)
    prompts = ["Hello", "What is 2 + 2?", "Name a fruit.", "Say yes."]
    results = await asyncio.gather(*(engine.generate("m", user(p), config) for p in prompts))
    alone = await engine.generate("m", user(prompts[1]), config)
    assert all(r.usage_metadata.candidates_token_count > 0 for r in results)
    assert results[1].text == alone.text  # serialized access: no cross-talk between requests


@pytest.mark.local
def test_concurrent_requests_from_threads(engine: LocalEngine) -> None:
    config = types.GenerateContentConfig(max_output_tokens=6, temperature=0.0)
    prompts = [f"Say the number {i}." for i in range(4)]
    one_at_a_time = [asyncio.run(engine.generate("m", user(p), config)).text for p in prompts]
    results: dict[int, types.GenerateContentResponse] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = asyncio.run(engine.generate("m", user(prompts[i]), config))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert sorted(results) == [0, 1, 2, 3]
    assert all(r.usage_metadata.candidates_token_count > 0 for r in results.values())
    # Greedy decoding and a reset context per call: each thread's answer is the one it gets alone.
    assert [results[i].text for i in range(4)] == one_at_a_time
    assert len(set(one_at_a_time)) > 1  # the prompts differ in their answers, so a mix-up would show


@pytest.mark.local
async def test_router_on_the_local_engine_keeps_the_loop_free_and_states_the_cloud_cost(otel: Otel) -> None:
    from genroute.runtime.pricing import DEFAULT_PRICES
    from genroute.router.router import Router

    config = {"engines": {"local": {"kind": "local", "n_threads": 1}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                    "generation": {"max_output_tokens": 4}}},
              "policy": {"kind": "static", "backend": "chat"}}
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    async with Router.from_config(config, **otel.providers) as router:
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        # A fresh engine: loading the model (~1 s) and decoding both happen while the ticker runs.
        result = await router.agenerate("What is the capital of France?")
        seen = ticks
        ticking.cancel()
    # Had loading or decoding run on the loop, the ticker would have ticked about once.
    assert seen >= 10, seen
    assert result.backend == "chat" and result.usage.output_tokens > 0
    expected = DEFAULT_PRICES["gemini-2.5-flash"].cost(result.usage)
    assert result.cost_usd == 0.0
    assert expected > 0 and result.cloud_equivalent_cost_usd == pytest.approx(expected)
    (call,) = otel.spans("generate_content")
    assert call.attributes["gen_ai.provider.name"] == "genroute.local"
    assert call.attributes["gen_ai.usage.cost.amount"] == 0.0
    assert call.attributes["genroute.cloud_equivalent.cost.amount"] == pytest.approx(expected)
    assert call.attributes["genroute.cloud_equivalent.model"] == "gemini-2.5-flash"
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["genroute.cloud_equivalent.cost.amount"] == pytest.approx(expected)


@pytest.mark.local
async def test_aclose_stops_an_in_flight_generation() -> None:
    closing = LocalEngine("closing", {"n_threads": 1, "prompt_format": "gemma"})
    # The base model rambles on in the chat template, so only max_output_tokens would end this.
    config = types.GenerateContentConfig(max_output_tokens=1500)
    stream = closing.stream("m", user("Write a very long story about a dragon."), config)
    chunks: list[str] = []
    with pytest.raises(BackendUnavailable, match="closed during the generation"):
        async with asyncio.timeout(600):  # a hang bound only
            async for chunk in stream:
                if not chunks:  # generating now: close the engine under it
                    closer = asyncio.create_task(closing.aclose())
                chunks.append(chunk.text)
    await closer
    assert closing._instances == []
    assert 0 < len(chunks) < 1500


@pytest.mark.local
async def test_a_pool_of_two_instances_serves_concurrent_requests() -> None:
    pooled = LocalEngine("pooled", {"pool_size": 2, "n_threads": 1})
    try:
        config = types.GenerateContentConfig(max_output_tokens=4)
        results = await asyncio.gather(*(pooled.generate("m", user(p), config) for p in ("Hi", "Yes", "No")))
        assert all(r.usage_metadata.candidates_token_count > 0 for r in results)
        assert len(pooled._instances) <= 2
    finally:
        await pooled.aclose()


@pytest.mark.local
async def test_lazy_grammar_sampling_matches_llama_cpp_full_grammar(engine: LocalEngine) -> None:
    """Greedy output under our lazy grammar check equals llama-cpp-python's own grammar sampling."""
    from llama_cpp import Llama, LlamaGrammar

    from genroute.engines.local import default_model_path

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "tags"]}
    config = types.GenerateContentConfig(response_json_schema=schema, max_output_tokens=24)
    ours = await engine.generate("m", user("List the planets."), config)
    raw = Llama(model_path=str(default_model_path()), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        prompt = prepare(user("List the planets."), config, Defaults()).prompt
        theirs = raw.create_completion(prompt, max_tokens=24, temperature=0.0, min_p=0.0, repeat_penalty=1.0,
                                       grammar=LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False))
    finally:
        raw.close()
    assert ours.text == theirs["choices"][0]["text"].strip()
    assert ours.usage_metadata.candidates_token_count == theirs["usage"]["completion_tokens"]


@pytest.mark.local
@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_a_call_cut_off_by_max_tokens_is_malformed_with_no_text(engine: LocalEngine, stream: bool) -> None:
    # Three tokens cannot hold a call: the fragment ('{"name": "') used to come back as the answer's text.
    any_mode = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY"))
    config = types.GenerateContentConfig(tools=TOOLS, tool_config=any_mode, max_output_tokens=3)
    if stream:
        chunks = [c async for c in engine.stream("m", user("What's the weather like in Rome?"), config)]
        assert [c.text for c in chunks[:-1]] == []
        response = chunks[-1]
    else:
        response = await engine.generate("m", user("What's the weather like in Rome?"), config)
    (candidate,) = response.candidates
    assert candidate.finish_reason == types.FinishReason.MALFORMED_FUNCTION_CALL
    assert response.text is None and response.function_calls is None
    assert candidate.finish_message.startswith('Malformed function call: {"')
    assert response.usage_metadata.candidates_token_count == 3


@pytest.mark.local
async def test_streamed_function_call_arrives_whole(engine: LocalEngine) -> None:
    any_mode = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY"))
    chunks = [c async for c in engine.stream("m", user("What's the weather like in Rome?"),
                                             types.GenerateContentConfig(tools=TOOLS, tool_config=any_mode,
                                                                         max_output_tokens=40))]
    assert [c.function_calls for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    (call,) = chunks[-1].function_calls
    assert call.name in {"get_weather", "get_time"} and call.args


@pytest.mark.local
async def test_a_local_stream_abandoned_early_states_the_cloud_cost_of_what_it_produced(otel: Otel) -> None:
    from contextlib import aclosing

    from genroute.router.router import Router

    config = {"engines": {"local": {"kind": "local", "n_threads": 1, "prompt_format": "gemma"}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                    "generation": {"max_output_tokens": 200}}},
              "policy": {"kind": "static", "backend": "chat"}}
    async with Router.from_config(config, **otel.providers) as router:
        async with aclosing(router.astream("Write a long story about a dragon.")) as chunks:
            async for chunk in chunks:
                assert chunk.text
                break
    (root,) = otel.spans("genroute.generate")
    # Free here, but what it would have cost in the cloud is estimated from the prompt and the text received.
    assert root.attributes["gen_ai.usage.cost.amount"] == 0.0
    (call,) = otel.spans("generate_content")  # the stream's call span carries its cost as every model call's does
    assert (call.attributes["gen_ai.usage.cost.amount"], call.attributes["gen_ai.usage.cost.currency"]) == (0.0, "USD")
    assert root.attributes["genroute.cloud_equivalent.cost.amount"] > 0
    assert root.attributes["genroute.cost.estimated"] is True


@pytest.mark.local
async def test_requests_queued_when_the_engine_closes_get_a_typed_error() -> None:
    """pool_size 1: one generation runs, two wait in the queue (a generate and a stream); aclose cancels the
    queued ones, which must end in BackendUnavailable, not a bare CancelledError their callers never asked for."""
    queued = LocalEngine("queued", {"pool_size": 1, "n_threads": 1, "prompt_format": "gemma"})
    long = types.GenerateContentConfig(max_output_tokens=1500)
    first = queued.stream("m", user("Write a very long story about a dragon."), long)

    async def consume_stream() -> list[str]:
        return [c.text async for c in queued.stream("m", user("Hi"), types.GenerateContentConfig(max_output_tokens=4))]

    async with asyncio.timeout(600):  # a hang bound only
        await anext(first)  # the only worker is busy now
        waiting = [asyncio.create_task(queued.generate("m", user("Hi"), types.GenerateContentConfig(max_output_tokens=4))),
                   asyncio.create_task(consume_stream())]
        await asyncio.sleep(0.2)  # both submitted to the executor's queue
        await queued.aclose()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        with pytest.raises(BackendUnavailable):
            async for _ in first:
                pass
    for outcome in outcomes:
        assert isinstance(outcome, BackendUnavailable) and "closed" in str(outcome), repr(outcome)


@pytest.mark.local
async def test_a_stream_that_times_out_in_the_queue_never_reaches_the_model() -> None:
    """pool_size 1: a stream whose deadline passes while another generation holds the worker is dropped; it used
    to evaluate its whole prompt once the worker was free, delaying every request queued behind it."""
    busy = LocalEngine("busy", {"pool_size": 1, "n_threads": 1, "prompt_format": "gemma"})
    try:
        async with asyncio.timeout(600):  # a hang bound only
            first = busy.stream("m", user("Write a very long story about a dragon."),
                                types.GenerateContentConfig(max_output_tokens=1500))
            await anext(first)  # the only worker is busy now
            first_prompt = busy.last_prompt_tokens
            with pytest.raises(BackendUnavailable, match="exceeded"):
                async for _ in busy.stream("m", user("word " * 300), types.GenerateContentConfig(max_output_tokens=4),
                                           timeout_s=0.05):
                    pass
            await first.aclose()  # frees the worker at its next token
            await asyncio.wrap_future(busy._executor.submit(lambda: None))  # everything queued before has run
        assert busy.last_prompt_tokens == first_prompt
    finally:
        await busy.aclose()


@pytest.mark.local
async def test_a_decode_stopped_on_purpose_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A request stopped mid-decode (its deadline passed; a cancel or a close does the same) logged llama.cpp's
    "failed to compute graph" / "failed to decode" as warnings and errors, an alarm in every application log for
    a stop genroute asked for: they are debug lines now."""
    slow = LocalEngine("slow", {"pool_size": 1, "n_threads": 1})
    try:
        with caplog.at_level(logging.DEBUG, logger="genroute.llama_cpp"):
            with pytest.raises(BackendUnavailable, match="exceeded"):
                await slow.generate("m", user("word " * 1500), types.GenerateContentConfig(max_output_tokens=2),
                                    timeout_s=0.05)
            await asyncio.wrap_future(slow._executor.submit(lambda: None))  # the worker is done with it
        stopped = [r for r in caplog.records if "failed to decode" in r.getMessage()]
        assert stopped and {r.levelno for r in stopped} == {logging.DEBUG}
        louder = [r.getMessage() for r in caplog.records
                  if r.levelno > logging.DEBUG and r.name == "genroute.llama_cpp" and "failed" in r.getMessage()]
        assert louder == []
    finally:
        await slow.aclose()


@pytest.mark.local
@pytest.mark.parametrize("schema", [None, {"type": "string"}], ids=["text", "json"])
async def test_a_request_that_times_out_stops_evaluating_its_prompt(schema: dict | None) -> None:
    """A deadline that passes while llama.cpp evaluates a long prompt aborts the evaluation; it ran to the end
    (1,500 tokens: 9 s on a loaded 2-core box), holding up every request queued behind it."""
    slow = LocalEngine("slow", {"pool_size": 1, "n_threads": 1})
    try:
        config = types.GenerateContentConfig(max_output_tokens=2, response_json_schema=schema)
        with pytest.raises(BackendUnavailable, match="exceeded"):
            await slow.generate("m", user("word " * 1500), config, timeout_s=0.05)
        await asyncio.wrap_future(slow._executor.submit(lambda: None))  # the worker is done with it
        (llm,) = slow._instances
        assert 1500 < len(slow.last_prompt_tokens) and llm.n_tokens == 0  # stopped, its cache dropped
        after = await slow.generate("m", user("Say yes."), types.GenerateContentConfig(max_output_tokens=4))
        assert after.usage_metadata.candidates_token_count > 0  # the instance still serves
    finally:
        await slow.aclose()
