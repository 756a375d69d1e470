"""GeminiEngine, error mapping and the retry layer, over the wire against the loopback server."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from google.genai import errors as genai_errors
from google.genai import types

from genroute import Router
from genroute.engines.errors import map_error, parse_retry_after, redact
from genroute.engines.gemini import GeminiEngine, GeminiEngineConfig
from genroute.engines.retry import RetryConfig, call_with_retry
from genroute.errors import BackendRejected, BackendUnavailable, ConfigError, GenrouteError, StreamInterrupted
from genroute.testing import Fault, GeminiTestServer, fake_embedding

KEY = "AIzaSyLOOPBACK-test-key-0123456789abcdef"
MODEL = "gemini-2.5-flash"
FAST_RETRY = {"attempts": 3, "initial_backoff_s": 0.001, "max_backoff_s": 0.01, "jitter_s": 0.001,
              "deadline_s": 10, "max_retry_after_s": 0.5}


def user(text: str) -> list[types.Content]:
    return [types.Content(role="user", parts=[types.Part(text=text)])]


@pytest.fixture(scope="module")
def server():
    with GeminiTestServer() as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.clear()
    yield server
    server.clear()


@pytest.fixture
async def engine(srv):
    eng = GeminiEngine("gem", {"api_key": KEY, "base_url": srv.base_url, "retry": FAST_RETRY})
    yield eng
    await eng.aclose()


@pytest.fixture
async def vertex_engine(srv, monkeypatch):
    from google.oauth2.credentials import Credentials

    monkeypatch.setenv("NO_GCE_CHECK", "true")
    config = {"vertex": {"project": "proj", "location": "europe-west4"}, "base_url": srv.base_url, "retry": FAST_RETRY}
    eng = GeminiEngine("vx", config, credentials=Credentials(token="test"))
    yield eng
    await eng.aclose()


# -- happy paths -----------------------------------------------------------------------------------


async def test_generate_text_with_usage(srv, engine):
    srv.reply_text("Bonjour", usage=(12, 4))
    response = await engine.generate(MODEL, user("hello"), types.GenerateContentConfig(temperature=0))
    assert response.text == "Bonjour"
    assert (response.usage_metadata.prompt_token_count, response.usage_metadata.candidates_token_count) == (12, 4)
    (req,) = srv.requests
    assert req.path == f"/v1/models/{MODEL}:generateContent"
    assert req.body["generationConfig"]["temperature"] == 0
    assert engine.provider == "gcp.gemini"


async def test_one_user_turn_given_as_text_goes_as_the_same_request(srv, engine):
    # Prepared.contents may be a str (one user turn): sent as the SDK sends a string, the same body as the
    # Content list it stands for; a str subclass (e.g. a template engine's markup), of one character too, alike.
    class Text(str):
        pass

    srv.reply_text("ok")
    await engine.generate(MODEL, user("a"))
    for text in ("a", Text("a")):
        srv.reply_text("ok")
        response = await engine.generate(MODEL, text)
        assert response.text == "ok"
        assert srv.requests[-1].body["contents"] == srv.requests[0].body["contents"]


async def test_timeout_is_always_sent(srv, engine):
    await engine.generate(MODEL, user("x"))
    await engine.generate(MODEL, user("x"), timeout_s=5)
    assert [r.headers["x-server-timeout"] for r in srv.requests] == ["10", "5"]  # min(engine timeout 60 s, retry deadline 10 s), then the request's 5 s


async def test_a_long_engine_timeout_is_bounded_by_the_retry_budget_without_per_request_options(srv):
    # An attempt never outlives the retry budget (120 s by default): that is the client's own timeout, so an
    # engine with timeout_s 3600 sends no per-request HTTP options (the SDK's costly merge) on every attempt.
    eng = GeminiEngine("gem", {"api_key": KEY, "base_url": srv.base_url, "timeout_s": 3600})
    try:
        assert eng._attempt_timeout(120.0) == (120.0, None)
        assert eng._attempt_timeout(30.0) == (30.0, 30.0)  # a shorter deadline still overrides
        await eng.generate(MODEL, user("x"))
        await eng.generate(MODEL, user("x"), timeout_s=3600)
        await eng.generate(MODEL, user("x"), timeout_s=30)
    finally:
        await eng.aclose()
    assert [r.headers["x-server-timeout"] for r in srv.requests] == ["120", "120", "30"]


async def test_a_router_deadline_sizes_the_client_timeout(srv):
    # A router's timeout_s shorter than the engine's: the client's own timeout is the router's, so requests with
    # that deadline send no per-request HTTP options; one with a longer deadline still gets the engine's bound.
    from genroute import Router

    config = {"engines": {"g": {"kind": "gemini", "api_key": KEY, "base_url": srv.base_url}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}}, "timeout_s": 30}
    async with Router.from_config(config) as router:
        engine = router.resources.engines["g"]
        assert engine._attempt_timeout(29.99) == (29.99, None)
        assert engine._attempt_timeout(90.0) == (60.0, 60.0)
        await router.agenerate("x")
        await router.agenerate("x", timeout_s=90)
        await router.agenerate("x", timeout_s=5)
    assert [r.headers["x-server-timeout"] for r in srv.requests] == ["30", "60", "5"]


async def test_caller_http_options_are_kept(srv, engine):
    config = types.GenerateContentConfig(http_options=types.HttpOptions(headers={"x-extra": "1"}))
    await engine.generate(MODEL, user("x"), config, timeout_s=3)
    assert srv.requests[0].headers["x-extra"] == "1"
    assert srv.requests[0].headers["x-server-timeout"] == "3"


async def test_stream_chunks(srv, engine):
    srv.reply_text("alpha beta gamma delta", usage=(5, 4), chunks=4)
    chunks = [c async for c in engine.stream(MODEL, user("go"))]
    assert [c.text for c in chunks] == ["alpha ", "beta ", "gamma ", "delta"]
    assert chunks[-1].usage_metadata.total_token_count == 9
    assert srv.requests[0].query == {"alt": "sse"}


async def test_function_call(srv, engine):
    srv.reply_function_call("get_weather", {"city": "Paris"})
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(
        name="get_weather", parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}})])
    response = await engine.generate(MODEL, user("weather in Paris?"), types.GenerateContentConfig(tools=[tool]))
    (call,) = response.function_calls
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    declared = srv.requests[0].body["tools"][0]["functionDeclarations"][0]
    assert declared["name"] == "get_weather"


async def test_vertex_and_tuned_endpoint(srv, vertex_engine):
    assert vertex_engine.provider == "gcp.vertex_ai"
    await vertex_engine.generate(MODEL, user("x"))
    endpoint = "projects/proj/locations/europe-west4/endpoints/987"
    chunks = [c async for c in vertex_engine.stream(endpoint, user("x"))]
    assert chunks
    assert [r.path for r in srv.requests] == [
        f"/v1beta1/projects/proj/locations/europe-west4/publishers/google/models/{MODEL}:generateContent",
        f"/v1beta1/{endpoint}:streamGenerateContent",
    ]
    assert {r.headers["authorization"] for r in srv.requests} == {"Bearer test"}


async def test_embed_in_batches(srv, srv_engine_small_batch):
    texts = ["a", "b", "c", "d", "e"]
    vectors = await srv_engine_small_batch.embed("gemini-embedding-001", texts)
    assert vectors == [fake_embedding(t, 768) for t in texts]
    assert [len(r.body["requests"]) for r in srv.requests] == [2, 2, 1]
    small = await srv_engine_small_batch.embed("gemini-embedding-001", ["a"], output_dimensionality=16)
    assert small == [fake_embedding("a", 16)]


@pytest.fixture
async def srv_engine_small_batch(srv):
    eng = GeminiEngine("gem", {"api_key": KEY, "base_url": srv.base_url, "embed_batch_size": 2})
    yield eng
    await eng.aclose()


async def test_count_tokens(engine):
    assert await engine.count_tokens(MODEL, user("a" * 20)) == 5


# -- retries and error mapping on the wire -----------------------------------------------------------


async def test_429_with_retry_after_then_success(srv, engine):
    srv.fault(Fault.status(429, retry_after=0.01))
    srv.reply_text("ok")
    response = await engine.generate(MODEL, user("x"))
    assert response.text == "ok"
    assert len(srv.requests) == 2


async def test_400_fails_at_once(srv, engine):
    srv.fault(Fault.status(400), times=3)
    with pytest.raises(BackendRejected) as info:
        await engine.generate(MODEL, user("x"))
    assert info.value.status == 400
    assert info.value.backend == "gem"
    assert len(srv.requests) == 1


@pytest.mark.parametrize("code", [500, 503, 408])
async def test_retryable_statuses_are_retried(srv, engine, code):
    srv.fault(Fault.status(code), times=2)
    srv.reply_text("finally")
    assert (await engine.generate(MODEL, user("x"))).text == "finally"
    assert len(srv.requests) == 3


async def test_attempts_exhausted_raise_unavailable(srv, engine):
    srv.fault(Fault.status(503), times=5)
    with pytest.raises(BackendUnavailable) as info:
        await engine.generate(MODEL, user("x"))
    assert info.value.status == 503
    assert len(srv.requests) == 3


async def test_retry_after_beyond_cap_is_not_waited(srv, engine):
    srv.fault(Fault.status(429, retry_after=60), times=2)
    with pytest.raises(BackendUnavailable) as info:
        await engine.generate(MODEL, user("x"))
    assert info.value.retry_after_s == 60
    assert len(srv.requests) == 1


#: An engine timeout a call is sent (and a retried one answers) well within on a loaded machine (0.3 s was not always:
#: cut before it was sent, or cut again and a third attempt got another reply), far shorter than the 30 s delay it
#: must cut.
ATTEMPT_TIMEOUT_S = 2.0


async def test_delay_past_timeout_is_unavailable_within_deadline(srv, engine):
    srv.fault(Fault.delay(30), times=3)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="timed out"):  # (2 s: time for the request to be sent, even loaded)
        await engine.generate(MODEL, user("x"), timeout_s=ATTEMPT_TIMEOUT_S)
    # Not a timing benchmark: only proves the deadline bounded the call instead of the 30 s delay.
    assert time.monotonic() - started < 10
    assert len(srv.requests) == 1


async def test_an_attempt_is_bounded_by_the_engine_timeout_without_a_deadline(srv):
    # The client sets no HTTP timeout (aiohttp would schedule a timer per request): the engine's own timer ends an
    # attempt at the engine's timeout_s when no caller's deadline does.
    srv.fault(Fault.delay(30))
    srv.reply_text("second")
    eng = GeminiEngine("gem", {"api_key": KEY, "base_url": srv.base_url, "retry": FAST_RETRY,
                               "timeout_s": ATTEMPT_TIMEOUT_S})
    try:
        started = time.monotonic()
        assert (await eng.generate(MODEL, user("x"))).text == "second"
    finally:
        await eng.aclose()
    assert time.monotonic() - started < 20  # not a timing benchmark: the 30 s delay was cut, then retried
    assert [r.headers["x-server-timeout"] for r in srv.requests] == ["2", "2"]  # the server is still told


async def test_a_bounded_call_leaves_its_deadline_to_the_caller(srv, engine):
    # bounded=True: the caller (a router's timer) cancels the call at timeout_s, so the engine sets no timer for
    # it; the server is still told the deadline.
    assert GeminiEngine.caller_bounded
    srv.fault(Fault.delay(0.6))
    assert (await engine.generate(MODEL, user("x"), timeout_s=0.2, bounded=True)).text
    srv.fault(Fault.delay(30), times=3)
    with pytest.raises(BackendUnavailable, match="timed out"):  # not bounded: the engine's own timer ends it
        await engine.generate(MODEL, user("x"), timeout_s=ATTEMPT_TIMEOUT_S)  # (time for the request to be sent)
    assert [r.headers["x-server-timeout"] for r in srv.requests] == ["1", "2"]


async def test_a_bounded_call_still_times_out_attempts_shorter_than_its_deadline(srv):
    # The engine's timeout_s (2 s) is shorter than the caller's deadline (8 s): that bound is the engine's to
    # enforce, and the attempt it cut is retried within the deadline.
    srv.fault(Fault.delay(30))
    srv.reply_text("retried")
    eng = GeminiEngine("gem", {"api_key": KEY, "base_url": srv.base_url, "retry": FAST_RETRY,
                               "timeout_s": ATTEMPT_TIMEOUT_S})
    try:
        assert (await eng.generate(MODEL, user("x"), timeout_s=8, bounded=True)).text == "retried"
    finally:
        await eng.aclose()
    assert len(srv.requests) == 2


async def test_malformed_json_is_typed(srv, engine):
    srv.fault(Fault.malformed_json(), times=3)
    with pytest.raises(BackendUnavailable, match="malformed"):
        await engine.generate(MODEL, user("x"))
    assert len(srv.requests) == 3


@pytest.mark.parametrize(("status", "kind", "sent"), [(400, BackendRejected, 1), (404, BackendRejected, 1),
                                                      (429, BackendUnavailable, 3), (503, BackendUnavailable, 3)])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_error_status_whose_body_is_not_json_keeps_its_status(srv, engine, status, kind, sent, stream):
    # The SDK parses an error body before it raises its APIError: one that is not JSON escapes as a JSONDecodeError.
    srv.fault(Fault.malformed_json(status=status), times=3)
    with pytest.raises(kind) as info:
        if stream:
            _ = [c async for c in engine.stream(MODEL, user("x"))]
        else:
            await engine.generate(MODEL, user("x"))
    assert info.value.status == status and str(info.value).startswith(f"{status} ")
    assert "the error body is not valid JSON" in str(info.value)
    assert len(srv.requests) == sent  # retried as its status says, not as a malformed 200


async def test_an_error_status_whose_body_is_not_json_keeps_its_retry_after(srv, engine):
    srv.reply_json(b"<html>slow down</html>", path=r".*generateContent", status=429, headers={"Retry-After": "0"},
                   times=3)
    with pytest.raises(BackendUnavailable) as info:
        await engine.generate(MODEL, user("x"))
    assert info.value.status == 429 and info.value.retry_after_s == 0.0


async def test_reset_then_success(srv, engine):
    srv.fault(Fault.reset())
    srv.reply_text("back")
    assert (await engine.generate(MODEL, user("x"))).text == "back"
    assert len(srv.requests) == 2


async def test_connection_refused_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    eng = GeminiEngine("gem", {"api_key": KEY, "base_url": f"http://127.0.0.1:{port}", "retry": FAST_RETRY})
    try:
        with pytest.raises(BackendUnavailable):
            await eng.generate(MODEL, user("x"))
    finally:
        await eng.aclose()


async def test_stream_retries_before_first_chunk(srv, engine):
    srv.fault(Fault.status(429))
    srv.fault(Fault.cut_stream(after_chunks=0))
    srv.reply_text("one two", chunks=2, times=2)  # the cut stream uses up one
    assert [c.text async for c in engine.stream(MODEL, user("x"))] == ["one ", "two"]
    assert len(srv.requests) == 3


async def test_cut_stream_after_first_chunk_is_interrupted(srv, engine):
    srv.fault(Fault.cut_stream(after_chunks=1))
    srv.reply_text("one two three", chunks=3)
    seen = []
    with pytest.raises(StreamInterrupted):
        async for chunk in engine.stream(MODEL, user("x")):
            seen.append(chunk.text)
    assert seen == ["one "]
    assert len(srv.requests) == 1


async def test_stream_error_event_is_interrupted(srv, engine):
    srv.fault(Fault.status(503, after_chunks=1))
    with pytest.raises(StreamInterrupted) as info:
        _ = [c async for c in engine.stream(MODEL, user("a b c"))]
    assert info.value.status == 503
    mapped = info.value.__cause__  # the mapped failure, caused by the SDK's error: a breaker counts a 5xx by it
    assert isinstance(mapped, BackendUnavailable) and mapped.status == 503
    assert mapped.__cause__ is not None and not isinstance(mapped.__cause__, GenrouteError)


async def test_clean_close_without_finish_reason_is_interrupted(srv, engine):
    partial = {"candidates": [{"content": {"role": "model", "parts": [{"text": "half"}]}}]}
    srv.reply_json([partial, partial])
    with pytest.raises(StreamInterrupted, match="finish reason"):
        _ = [c async for c in engine.stream(MODEL, user("x"))]


# -- configuration and secrets ---------------------------------------------------------------------


async def test_api_key_never_leaks(srv, engine):
    srv.fault(Fault.status(400, message=f"API key not valid: {KEY}"))
    with pytest.raises(BackendRejected) as info:
        await engine.generate(MODEL, user("x"))
    for text in (str(info.value), repr(info.value), repr(engine), repr(engine.config), str(engine.config),
                 json.dumps(engine.config.model_dump(mode="json"))):
        assert KEY not in text
    assert srv.requests[0].headers["x-goog-api-key"] == KEY  # it was sent, just never shown


async def test_configured_headers_reach_every_call_and_are_never_shown(srv):
    # A gateway in front of Gemini wants headers of its own (its auth, a tenant): no HttpOptions could be given.
    gateway = "Bearer gw-0123456789abcdef"
    eng = GeminiEngine("gw", {"api_key": KEY, "base_url": srv.base_url, "retry": FAST_RETRY,
                              "headers": {"Authorization": gateway, "X-Tenant": "acme"}})
    try:
        assert (await eng.generate(MODEL, user("hey"))).text == "echo: hey"
        _ = [c async for c in eng.stream(MODEL, user("hey"))]
        await eng.embed("gemini-embedding-001", ["a"])
        srv.fault(Fault.status(401, message=f"bad gateway token {gateway.split()[1]}"))
        with pytest.raises(BackendRejected) as info:
            await eng.generate(MODEL, user("x"))
    finally:
        await eng.aclose()
    assert len(srv.requests) == 4
    for request in srv.requests:
        assert (request.headers["authorization"], request.headers["x-tenant"]) == (gateway, "acme")
        assert "x-server-timeout" in request.headers  # the engine's own header is still sent
    for text in (str(info.value), repr(info.value), repr(eng.config), json.dumps(eng.config.model_dump(mode="json"))):
        assert "gw-0123456789abcdef" not in text
    with pytest.raises(ConfigError) as bad:
        Router.from_config({"engines": {"g": {"kind": "gemini", "api_key": KEY, "headers": {"X Tenant": "a"}}},
                            "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}}})
    assert bad.value.field == "engines.g.headers"


@pytest.mark.parametrize("name", ["x-goog-api-key", "X-Goog-Api-Key"])
def test_a_key_header_in_headers_is_refused_not_sent_over_the_engines_key(name):
    # It replaced the engine's key on every request, whatever the case of its name, while the engine said it sent
    # api_key_env's (and refused to build with that variable unset, though a key was there).
    with pytest.raises(ConfigError) as bad:
        Router.from_config({"engines": {"g": {"kind": "gemini", "api_key": KEY, "headers": {name: "other-key-0123"}}},
                            "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}}})
    assert bad.value.field == "engines.g.headers" and "api_key_env" in bad.value.message
    assert "other-key-0123" not in str(bad.value)


@pytest.mark.parametrize("name", ["Authorization", "authorization"])
def test_an_authorization_header_with_vertex_is_refused_not_replaced_by_the_credentials_token(name):
    # google-genai sets Authorization to the Vertex credentials' token on every request: this header was replaced
    # unsent, in either case. A Developer API engine sends it (a gateway's auth).
    engine = {"kind": "gemini", "vertex": {"project": "p", "location": "l"}, "headers": {name: "Bearer gw-token-0123"}}
    with pytest.raises(ConfigError) as bad:
        Router.from_config({"engines": {"g": engine},
                            "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}}})
    assert bad.value.field == "engines.g.headers" and "credentials" in bad.value.message
    assert "gw-token-0123" not in str(bad.value)
    developer = GeminiEngine("g", {"api_key": KEY, "headers": {name: "Bearer gw-token-0123"}})
    assert developer.config.header_values() == {name: "Bearer gw-token-0123"}


async def test_env_key_fallbacks_and_base_url(srv, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google-env")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", srv.base_url)
    eng = GeminiEngine("env", {"retry": FAST_RETRY})
    try:
        assert eng.base_url == srv.base_url
        assert (await eng.generate(MODEL, user("hey"))).text == "echo: hey"
        assert srv.requests[0].headers["x-goog-api-key"] == "from-google-env"
    finally:
        await eng.aclose()


async def test_with_both_key_variables_set_the_log_names_the_key_sent(srv, monkeypatch, caplog):
    # google-genai logs "Using GOOGLE_API_KEY" whenever both are set, even for a client given its key: the engine
    # sends api_key_env's, so the SDK's line is dropped and the engine's own names the key it sends.
    monkeypatch.setenv("GEMINI_API_KEY", "from-gemini-env")
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google-env")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", srv.base_url)
    caplog.set_level(logging.INFO)
    eng = GeminiEngine("both", {"retry": FAST_RETRY})
    try:
        await eng.generate(MODEL, user("hey"))
        assert eng.client is not None  # the SDK's own client (sync calls, Vertex AI) is made the same way
    finally:
        await eng.aclose()
    assert srv.requests[0].headers["x-goog-api-key"] == "from-gemini-env"
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "Using GOOGLE_API_KEY" in line], lines
    assert [line for line in lines if "engines.both sends the key in GEMINI_API_KEY" in line], lines


@pytest.mark.parametrize("stream", [False, True])
async def test_the_sdks_vertex_switch_in_the_environment_does_not_move_a_developer_api_engine(srv, monkeypatch, stream):
    # google-genai reads GOOGLE_GENAI_USE_VERTEXAI when a client is not told which API it is for: a Developer API
    # engine then sent its key to Vertex AI's paths (express mode) while reporting itself as the Developer API.
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "us-central1")
    eng = GeminiEngine("dev", {"api_key": KEY, "base_url": srv.base_url, "retry": FAST_RETRY})
    try:
        if stream:
            _ = [c async for c in eng.stream(MODEL, user("hey"))]
        else:
            await eng.generate(MODEL, user("hey"))
        eng.client.models.count_tokens(model=MODEL, contents="hey")  # the SDK's own client (sync calls) too
    finally:
        await eng.aclose()
    assert [r.path.split(":")[0] for r in srv.requests] == [f"/v1/models/{MODEL}"] * 2
    assert eng.provider == "gcp.gemini"


def test_a_missing_key_is_a_config_error_when_the_router_is_built(monkeypatch):
    # It was one at the first request only; google-genai's own Client() refuses to be made without a key.
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        Router.from_config({"engines": {"nokey": {"kind": "gemini", "api_key_env": "MY_KEY"}},
                            "backends": {"chat": {"kind": "prompt_template", "engine": "nokey", "model": MODEL}}})
    assert info.value.field == "engines.nokey.api_key_env"
    assert "MY_KEY" in info.value.message and "GOOGLE_API_KEY" in info.value.message
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google-env")  # the fallback variable is a key too
    assert GeminiEngine("nokey", {"api_key_env": "MY_KEY"})._api_key() == "from-google-env"


def test_a_key_given_as_the_name_of_its_variable_is_refused_without_being_shown(srv):
    config = {"engines": {"g": {"kind": "gemini", "api_key_env": KEY, "base_url": srv.base_url}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": MODEL}},
              "policy": {"kind": "static", "backend": "chat"}}
    with pytest.raises(ConfigError) as info:
        Router.from_config(config)
    assert info.value.field == "engines.g.api_key_env"
    assert KEY not in str(info.value) and KEY not in repr(info.value) and not srv.requests


def test_an_embedding_batch_larger_than_the_developer_api_takes_is_a_config_error():
    # The Developer API refuses a batchEmbedContents of more than 100 texts (400); Vertex AI takes 250.
    with pytest.raises(ConfigError) as info:
        GeminiEngine("g", {"api_key": "k", "embed_batch_size": 101})
    assert info.value.field == "engines.g.embed_batch_size"
    assert GeminiEngine("g", {"api_key": "k", "embed_batch_size": 100}).config.embed_batch_size == 100
    vertex = GeminiEngine("v", {"vertex": {"project": "p", "location": "l"}, "embed_batch_size": 250})
    assert vertex.config.embed_batch_size == 250


def test_config_is_validated():
    with pytest.raises(ConfigError) as err:
        GeminiEngineConfig.model_validate({"kind": "gemini", "timeout_s": 0})
    assert err.value.field == "timeout_s"
    with pytest.raises(ConfigError) as err:
        GeminiEngineConfig.model_validate({"kind": "gemini", "unknown": 1})
    assert err.value.field == "unknown"
    assert GeminiEngine.Config is GeminiEngineConfig and GeminiEngine.kind == "gemini"


@pytest.mark.parametrize(("config", "field"), [
    ({"apikey": KEY}, "engines.g.apikey"),                    # a misspelt field
    ({"api_key": "k", "vertex": KEY}, "engines.g.vertex"),    # the key in the wrong field
    # Vertex AI authenticates with Google Cloud credentials: the key was ignored, silently.
    ({"api_key": KEY, "vertex": {"project": "p", "location": "l"}}, "engines.g.api_key"),
    ({"timeout_s": -1}, "engines.g.timeout_s"),
])
def test_an_engine_built_in_code_from_a_bad_config_is_a_config_error_without_the_input(config, field):
    with pytest.raises(ConfigError) as info:
        GeminiEngine("g", config)
    assert info.value.field == field
    assert KEY not in str(info.value) and KEY not in repr(info.value)


# -- map_error and the retry layer without a server ------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (genai_errors.ClientError(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}), BackendUnavailable),
        (genai_errors.ClientError(408, {"error": {"code": 408}}), BackendUnavailable),
        (genai_errors.ClientError(404, {"error": {"code": 404}}), BackendRejected),
        (genai_errors.ServerError(502, {"error": {"code": 502}}), BackendUnavailable),
        (json.JSONDecodeError("bad", "{", 0), BackendUnavailable),
        (genai_errors.UnknownApiResponseError("bad"), BackendUnavailable),
        (ConnectionResetError(104, "reset"), BackendUnavailable),
        (TimeoutError(), BackendUnavailable),
        (ValueError("bad argument"), BackendRejected),
    ],
)
def test_map_error_table(exc, kind):
    mapped = map_error(exc, backend="b")
    assert type(mapped) is kind
    assert mapped.backend == "b"


@pytest.mark.parametrize(("status", "body", "headers", "message"), [
    (503, b"", {}, "503: the response gave no error message"),
    (413, b"", {"Content-Type": "text/html"}, "413 Request Entity Too Large: the response gave no error message"),
    (422, b"", {"Content-Type": "text/html"}, "422 Unprocessable Entity: the response gave no error message"),
    (504, b"upstream timeout", {"Content-Type": "text/plain"}, "504 Gateway Timeout: upstream timeout"),
    # A Google body whose message is empty: what it says is under "error", not the SDK's dict of it.
    (503, {"error": {"code": 503, "message": "", "status": "UNAVAILABLE"}}, {},
     "503 UNAVAILABLE: the response gave no error message"),
    (400, {"error": {"code": 400, "message": "", "status": "INVALID_ARGUMENT", "details": [{"reason": "X"}]}}, {},
     "400 INVALID_ARGUMENT: {'details': [{'reason': 'X'}]}"),
])
async def test_an_error_answer_without_a_google_error_body_says_what_it_was(srv, engine, status, body, headers,
                                                                           message):
    srv.reply_json(body, path=r".*generateContent", status=status, headers=headers, times=3)
    with pytest.raises((BackendUnavailable, BackendRejected)) as info:
        await engine.generate(MODEL, user("x"))
    assert str(info.value) == message and info.value.status == status


@pytest.mark.parametrize("status", [429, 503])
async def test_an_error_body_whose_error_is_text_is_mapped_and_retried(srv, engine, status):
    # Gateways in front of the API (a base_url proxy) answer {"error": "some text"}, not a google.rpc.Status.
    srv.reply_json({"error": "quota exceeded"}, path=r".*generateContent", status=status, times=3)
    with pytest.raises(BackendUnavailable) as info:
        await engine.generate(MODEL, user("x"))
    assert info.value.status == status and str(info.value) == f"{status}: quota exceeded"
    assert len(srv.requests) == 3


@pytest.mark.parametrize(("headers", "delay"), [({"Retry-After": "inf"}, None), ({}, "1e999s"), ({}, "nans")])
async def test_a_retry_after_that_is_not_a_finite_number_is_ignored(srv, engine, headers, delay):
    error: dict = {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}
    if delay is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
    srv.reply_json({"error": error}, path=r".*generateContent", status=429, headers=headers)
    assert (await engine.generate(MODEL, user("x"))).text == "echo: x"  # retried after the usual backoff
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None


def test_map_error_http_libraries():
    import aiohttp
    import httpx

    assert isinstance(map_error(httpx.ConnectError("refused")), BackendUnavailable)
    assert isinstance(map_error(httpx.RemoteProtocolError("eof")), BackendUnavailable)
    assert isinstance(map_error(aiohttp.ServerDisconnectedError()), BackendUnavailable)


def test_retry_info_and_redaction():
    exc = genai_errors.ClientError(429, {"error": {"code": 429, "message": f"slow down {KEY}", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3.5s"}]}})
    mapped = map_error(exc)
    assert mapped.retry_after_s == 3.5
    assert KEY not in str(mapped)
    assert redact("url?key=secret&x=1", ()) == "url?key=***&x=1"
    assert redact("token abc", ["abc"]) == "token ***"
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


async def test_call_with_retry_only_retries_unavailable():
    calls = []

    async def flaky(remaining: float) -> str:
        calls.append(remaining)
        if len(calls) < 3:
            raise BackendUnavailable("busy")
        return "done"

    config = RetryConfig.model_validate(FAST_RETRY)
    assert await call_with_retry(flaky, config) == "done"
    assert len(calls) == 3 and all(0 < r <= 10 for r in calls)

    async def rejected(remaining: float) -> str:
        calls.append(remaining)
        raise BackendRejected("no")

    calls.clear()
    with pytest.raises(BackendRejected):
        await call_with_retry(rejected, config)
    assert len(calls) == 1


async def test_call_with_retry_makes_exactly_the_configured_attempts():
    for attempts in (1, 2, 4):
        calls = 0

        async def busy(remaining: float) -> None:
            nonlocal calls
            calls += 1
            raise BackendUnavailable("busy")

        config = RetryConfig(attempts=attempts, initial_backoff_s=0.001, max_backoff_s=0.001, jitter_s=0)
        with pytest.raises(BackendUnavailable, match="busy") as caught:
            await call_with_retry(busy, config)
        assert calls == attempts
        assert not caught.value.out_of_time  # attempts ran out, not time


async def test_call_with_retry_stops_before_the_deadline():
    calls = 0

    async def busy(remaining: float) -> None:
        nonlocal calls
        calls += 1
        raise BackendUnavailable("busy", retry_after_s=0.4)

    config = RetryConfig(attempts=10, initial_backoff_s=0.001, jitter_s=0, deadline_s=30, max_retry_after_s=1)
    with pytest.raises(BackendUnavailable):
        await call_with_retry(busy, config, deadline_s=0.5)
    assert calls == 2  # 0 s, then 0.4 s; a third would start at 0.8 s, past the 0.5 s deadline


async def test_api_version_and_config_object(srv):
    config = GeminiEngineConfig(api_key=KEY, base_url=srv.base_url, api_version="v1beta")
    eng = GeminiEngine("beta", config)
    try:
        await eng.generate(MODEL, user("x"))
    finally:
        await eng.aclose()
    assert srv.requests[0].path == f"/v1beta/models/{MODEL}:generateContent"
    assert eng.config is config


def test_vertex_without_a_project_is_a_config_error(srv, monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    with pytest.raises(ConfigError) as err:
        GeminiEngine("vx", {"vertex": {"location": "europe-west4"}, "base_url": srv.base_url})
    assert err.value.field == "engines.vx.vertex.project"
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    assert GeminiEngine("vx", {"vertex": {"location": "europe-west4"}, "base_url": srv.base_url}).provider == \
        "gcp.vertex_ai"


async def test_vertex_without_credentials_is_a_config_error_and_sends_nothing(srv, monkeypatch, tmp_path):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud user credentials either
    engine = GeminiEngine("vx", {"vertex": {"project": "p", "location": "europe-west4"}, "base_url": srv.base_url})
    before = len(srv.requests)
    with pytest.raises(ConfigError) as err:
        await engine.generate(MODEL, user("x"))
    assert err.value.field == "engines.vx.vertex"
    assert len(srv.requests) == before


async def test_the_retry_log_line_names_the_error_and_the_trace_not_the_providers_message(srv, engine, caplog):
    # The retry log line carried the provider's error message, which may quote the request, and no trace id to find
    # the call's span by: it now says the error's class, its status and the current trace id.
    from opentelemetry.sdk.trace import TracerProvider

    srv.fault(Fault.status(503, message="overloaded while reading: my card number is 4111-0000"))
    srv.reply_text("ok")
    tracer = TracerProvider().get_tracer("test")
    with caplog.at_level(logging.INFO, logger="genroute.engines.retry"):
        with tracer.start_as_current_span("call") as span:
            assert (await engine.generate(MODEL, user("x"))).text == "ok"
    (line,) = [r.getMessage() for r in caplog.records if "retrying after attempt" in r.getMessage()]
    assert "4111" not in line and "overloaded" not in line, line
    assert "BackendUnavailable" in line and "status 503" in line, line
    assert f"trace {format(span.get_span_context().trace_id, '032x')}" in line, line
