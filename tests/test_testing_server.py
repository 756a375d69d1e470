"""The loopback Gemini server, exercised through the real google-genai client and raw HTTP."""

from __future__ import annotations

import http.client
import json
import os

import pytest
from google import genai
from google.genai import errors, types

from genroute.testing import Fault, GeminiTestServer, Response, fake_embedding

MODEL = "gemini-2.5-flash"


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
def client(srv):
    c = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=srv.base_url, retry_options=types.HttpRetryOptions(attempts=1)),
    )
    yield c
    c.close()


@pytest.fixture
def vertex_client(srv, monkeypatch):
    from google.oauth2.credentials import Credentials

    monkeypatch.setenv("NO_GCE_CHECK", "true")
    c = genai.Client(
        vertexai=True, project="proj", location="us-central1", credentials=Credentials(token="tok"),
        http_options=types.HttpOptions(base_url=srv.base_url, retry_options=types.HttpRetryOptions(attempts=1)),
    )
    yield c
    c.close()


def _post(srv: GeminiTestServer, path: str, body: object) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_text_reply_with_usage_and_request_record(srv, client):
    srv.reply_text("Hello!", usage=(10, 3))
    config = types.GenerateContentConfig(system_instruction="be terse", temperature=0.2)
    result = client.models.generate_content(model=MODEL, contents="hi there", config=config)
    assert result.text == "Hello!"
    assert result.usage_metadata.prompt_token_count == 10
    assert result.usage_metadata.candidates_token_count == 3
    assert result.usage_metadata.total_token_count == 13
    (req,) = srv.requests
    assert (req.method, req.path, req.action, req.model) == ("POST", f"/v1/models/{MODEL}:generateContent",
                                                             "generateContent", f"models/{MODEL}")
    assert req.headers["x-goog-api-key"] == "test-key"
    assert req.body["contents"][0]["parts"][0]["text"] == "hi there"
    assert req.body["generationConfig"]["temperature"] == 0.2
    assert req.body["systemInstruction"]["parts"][0]["text"] == "be terse"


def test_default_reply_echoes_with_estimated_usage(srv, client):
    result = client.models.generate_content(model=MODEL, contents="what is the capital of France?")
    assert result.text == "echo: what is the capital of France?"
    assert result.usage_metadata.prompt_token_count > 0
    assert result.usage_metadata.candidates_token_count > 0
    assert result.candidates[0].finish_reason == types.FinishReason.STOP


def test_stream_is_split_into_chunks_with_usage_last(srv, client):
    srv.reply_text("one two three four five six", usage=(7, 6), chunks=3)
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="go"))
    assert len(chunks) == 3
    assert "".join(c.text for c in chunks) == "one two three four five six"
    assert chunks[-1].usage_metadata.candidates_token_count == 6
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[0].candidates[0].finish_reason is None
    assert srv.requests[0].query == {"alt": "sse"}
    assert srv.requests[0].stream


def test_function_call_reply(srv, client):
    srv.reply_function_call("get_weather", {"city": "Paris"}, call_id="c1")
    result = client.models.generate_content(model=MODEL, contents="weather?")
    (call,) = result.function_calls
    assert (call.name, call.args, call.id) == ("get_weather", {"city": "Paris"}, "c1")


def test_raw_json_reply_and_list_of_events(srv, client):
    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": "raw"}]}, "finishReason": "MAX_TOKENS"}]}
    srv.reply_json(body)
    result = client.models.generate_content(model=MODEL, contents="x")
    assert result.text == "raw"
    assert result.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "a"}]}}]}
    srv.reply_json([first, body])
    assert [c.text for c in client.models.generate_content_stream(model=MODEL, contents="x")] == ["a", "raw"]


def test_vertex_and_tuned_endpoint_paths_use_bearer(srv, vertex_client):
    vertex_client.models.generate_content(model=MODEL, contents="x")
    endpoint = "projects/proj/locations/us-central1/endpoints/123"
    vertex_client.models.generate_content(model=endpoint, contents="x")
    paths = [r.path for r in srv.requests]
    assert paths == [
        f"/v1beta1/projects/proj/locations/us-central1/publishers/google/models/{MODEL}:generateContent",
        f"/v1beta1/{endpoint}:generateContent",
    ]
    assert all(r.headers["authorization"] == "Bearer tok" for r in srv.requests)


def test_count_tokens(srv, client):
    result = client.models.count_tokens(model=MODEL, contents="a" * 40)
    assert result.total_tokens == 10
    assert srv.requests[0].action == "countTokens"


def test_embeddings_are_deterministic_and_sized(srv, client, vertex_client):
    dev = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert [e.values for e in dev.embeddings] == [fake_embedding("a", 768), fake_embedding("b", 768)]
    assert srv.requests[-1].action == "batchEmbedContents"
    small = client.models.embed_content(model="gemini-embedding-001", contents=["a"],
                                        config=types.EmbedContentConfig(output_dimensionality=8))
    assert small.embeddings[0].values == fake_embedding("a", 8)
    vx = vertex_client.models.embed_content(model="text-embedding-005", contents=["a", "b", "c"])
    assert srv.requests[-1].action == "predict"
    assert [e.values for e in vx.embeddings] == [fake_embedding(t, 768) for t in "abc"]
    one = vertex_client.models.embed_content(model="gemini-embedding-001", contents=["z"])
    assert srv.requests[-1].action == "embedContent"
    assert one.embeddings[0].values == fake_embedding("z", 768)


def test_snake_case_request_keys_are_accepted(srv):
    status, raw = _post(srv, "/v1beta/models/m:batchEmbedContents",
                        {"requests": [{"content": {"parts": [{"text": "q"}]}, "output_dimensionality": 4}]})
    assert status == 200
    assert json.loads(raw)["embeddings"][0]["values"] == fake_embedding("q", 4)
    status, raw = _post(srv, "/v1beta/models/m:countTokens",
                        {"generate_content_request": {"contents": [{"parts": [{"text": "abcdefgh"}]}]}})
    assert json.loads(raw) == {"totalTokens": 2}


def test_scripted_json_for_any_path_and_custom_routes(srv):
    srv.reply_json({"name": "batches/1", "state": "PENDING"}, path=r"/v1beta1/.*/batchJobs", method="POST")
    status, raw = _post(srv, "/v1beta1/projects/p/locations/l/batchJobs", {"model": "m"})
    assert (status, json.loads(raw)["state"]) == (200, "PENDING")
    status, _ = _post(srv, "/v1beta1/projects/p/locations/l/batchJobs", {})
    assert status == 404  # the scripted answer was used up and no route serves that path

    def handler(server, request, match):
        return Response(status=201, body={"job": match["job"], "seen": request.body})

    srv.route("POST", r"/v1/jobs/(?P<job>\w+)", handler)
    status, raw = _post(srv, "/v1/jobs/abc", {"k": 1})
    assert (status, json.loads(raw)) == (201, {"job": "abc", "seen": {"k": 1}})


def test_status_fault_with_retry_after_then_reply(srv, client):
    srv.fault(Fault.status(429, retry_after=2))
    srv.reply_text("after")
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents="x")
    assert info.value.code == 429
    assert info.value.response.headers["Retry-After"] == "2"
    assert info.value.details["error"]["details"][0]["retryDelay"] == "2s"
    assert client.models.generate_content(model=MODEL, contents="x").text == "after"
    assert len(srv.requests) == 2


@pytest.mark.parametrize("code", [500, 503])
def test_server_error_faults(srv, client, code):
    srv.fault(Fault.status(code))
    with pytest.raises(errors.ServerError) as info:
        client.models.generate_content(model=MODEL, contents="x")
    assert info.value.code == code


def test_malformed_json_fault(srv, client):
    srv.fault(Fault.malformed_json())
    with pytest.raises(ValueError):  # json.JSONDecodeError from the SDK's json.loads
        client.models.generate_content(model=MODEL, contents="x")


def test_malformed_json_fault_with_an_error_status(srv, client):
    srv.fault(Fault.malformed_json(status=503))
    with pytest.raises(errors.ServerError) as info:  # the sync (httpx) client reads a body that is not JSON as text
        client.models.generate_content(model=MODEL, contents="x")
    assert info.value.code == 503 and info.value.message.startswith('{"error": {"code": 503')
    with pytest.raises(ValueError):
        json.loads(info.value.message)


def test_cut_stream_never_looks_complete(srv, client):
    srv.fault(Fault.cut_stream(after_chunks=1))
    srv.reply_text("one two three", chunks=3)
    seen = []
    with pytest.raises(Exception) as info:
        for chunk in client.models.generate_content_stream(model=MODEL, contents="x"):
            seen.append(chunk.text)
    assert seen == ["one "]
    assert not isinstance(info.value, StopIteration)


def test_stream_error_event_mid_way(srv, client):
    srv.fault(Fault.status(500, after_chunks=1))
    srv.reply_text("one two three", chunks=3)
    seen = []
    with pytest.raises(errors.ServerError):
        for chunk in client.models.generate_content_stream(model=MODEL, contents="x"):
            seen.append(chunk.text)
    assert seen == ["one "]


def test_reset_fault_is_a_transport_error(srv, client):
    srv.fault(Fault.reset())
    with pytest.raises(Exception) as info:
        client.models.generate_content(model=MODEL, contents="x")
    assert not isinstance(info.value, errors.APIError)
    assert len(srv.requests) == 1


def test_stop_drops_the_connections_clients_keep_alive():
    # stop() used to close only the listening socket: a client's kept-alive connection was still served by its
    # handler thread, so a "stopped" server went on answering the clients that had called it before.
    stopping = GeminiTestServer().start()
    conn = http.client.HTTPConnection("127.0.0.1", stopping.port, timeout=5)
    body = json.dumps({"contents": [{"parts": [{"text": "x"}]}]})
    path = f"/v1beta/models/{MODEL}:generateContent"
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        assert conn.getresponse().read() and conn.sock is not None  # answered, connection kept alive
        stopping.stop()
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
    finally:
        conn.close()
    assert len(stopping.requests) == 1  # the second request was never served


def test_api_key_check(srv):
    guarded = GeminiTestServer(api_key="right")
    with guarded:
        c = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=guarded.base_url))
        with pytest.raises(errors.ClientError) as info:
            c.models.generate_content(model=MODEL, contents="x")
        assert info.value.code == 400


def test_env_base_url_reaches_the_server(srv, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", srv.base_url)
    c = genai.Client(api_key="k")
    assert c.models.generate_content(model=MODEL, contents="env").text == "echo: env"
    assert os.environ["GOOGLE_GEMINI_BASE_URL"] == srv.base_url



def test_routes_extend_the_server_for_tuning_jobs(srv, vertex_client):
    import warnings

    from genroute.testing.tuning_routes import TuningRoutes

    TuningRoutes(srv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK marks tuning as experimental
        job = vertex_client.tunings.tune(
            base_model=MODEL, training_dataset=types.TuningDataset(gcs_uri="gs://bucket/train.jsonl"))
    assert srv.requests[-1].path == "/v1beta1/projects/proj/locations/us-central1/tuningJobs"
    states = [vertex_client.tunings.get(name=job.name).state for _ in range(3)]
    assert states[-1] == types.JobState.JOB_STATE_SUCCEEDED
