"""Wire fidelity of the loopback Gemini server: streamed parts, cache resources, faults, error bodies."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import re
import socket

import pytest
from google import genai
from google.genai import errors, types

from genroute.testing import CacheRoutes, Fault, GeminiTestServer

MODEL = "gemini-2.5-flash"
THINKING = [{"text": "Let me think about it.", "thought": True},
            {"text": "The answer is 42.", "thoughtSignature": "c2ln"}]


@pytest.fixture
def srv(gemini_server):
    return gemini_server


@pytest.fixture
def client(srv):
    """A google-genai client of ``srv`` that does not retry."""
    with genai.Client(api_key="test-key", http_options=types.HttpOptions(
            base_url=srv.base_url, retry_options=types.HttpRetryOptions(attempts=1))) as c:
        yield c


@pytest.fixture
def cached(srv, client):
    """``srv`` with cache routes, and a client of it."""
    CacheRoutes(srv)
    return srv, client


def _call(srv: GeminiTestServer, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _parts(chunks):
    return [p for chunk in chunks for p in chunk.candidates[0].content.parts]


def _check_stream_keeps_thoughts(unary, chunks):
    assert unary.text == "The answer is 42."
    assert "".join(c.text or "" for c in chunks) == unary.text
    parts = _parts(chunks)
    assert "".join(p.text for p in parts if p.thought) == "Let me think about it."
    answer = [p for p in parts if not p.thought]
    assert answer and all(p.thought_signature == b"sig" for p in answer)


def test_stream_keeps_thought_and_signature_of_each_part(srv, client):
    srv.reply_parts(THINKING)
    unary = client.models.generate_content(model=MODEL, contents="q")
    srv.reply_parts(THINKING)
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="q"))
    assert len(chunks) == 3
    _check_stream_keeps_thoughts(unary, chunks)


def test_async_stream_keeps_thought_and_signature_of_each_part(srv, client):
    async def run():
        srv.reply_parts(THINKING)
        unary = await client.aio.models.generate_content(model=MODEL, contents="q")
        srv.reply_parts(THINKING, chunks=5)
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents="q")
        return unary, [chunk async for chunk in stream]

    unary, chunks = asyncio.run(run())
    assert len(chunks) == 5
    _check_stream_keeps_thoughts(unary, chunks)


def test_cache_resource_carries_times_and_display_name_not_ttl(cached):
    srv, client = cached
    config = types.CreateCachedContentConfig(contents=["long text " * 100], ttl="300.5s", display_name="faq")
    made = client.caches.create(model=MODEL, config=config)
    assert made.display_name == "faq"
    assert made.create_time == made.update_time
    assert made.expire_time - made.create_time == datetime.timedelta(seconds=300.5)
    got = client.caches.get(name=made.name)
    assert (got.create_time, got.expire_time, got.display_name) == (made.create_time, made.expire_time, "faq")
    status, raw = _call(srv, "GET", f"/v1beta/{made.name}")
    assert status == 200
    assert "ttl" not in json.loads(raw)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", json.loads(raw)["expireTime"])


def test_cache_expire_time_is_kept_and_default_ttl_is_an_hour(cached):
    _, client = cached
    when = datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    made = client.caches.create(model=MODEL, config=types.CreateCachedContentConfig(contents=["x"], expire_time=when))
    assert made.expire_time == when
    plain = client.caches.create(model=MODEL, config=types.CreateCachedContentConfig(contents=["x"]))
    assert plain.expire_time - plain.create_time == datetime.timedelta(hours=1)
    assert plain.display_name is None


def test_cache_bad_ttl_is_invalid_argument(cached):
    _, client = cached
    with pytest.raises(errors.ClientError) as info:
        client.caches.create(model=MODEL, config=types.CreateCachedContentConfig(contents=["x"], ttl="soon"))
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")


def test_cut_stream_sends_that_many_bytes_of_a_plain_body(srv):
    srv.reply_text("x" * 400)
    srv.fault(Fault.cut_stream(after_chunks=5))
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    with sock:
        sock.sendall(b"POST /v1/models/m:generateContent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head)[1])
    assert len(body) == 5 < length


@pytest.mark.parametrize(("seconds", "header", "delay"), [
    (2, "2", "2s"), (1234567, "1234567", "1234567s"), (0.5, None, "0.5s"), (1.000000001, None, "1.000000001s"),
])
def test_retry_after_is_whole_seconds_in_the_header_and_a_duration_in_retry_info(srv, client, seconds, header, delay):
    srv.fault(Fault.status(429, retry_after=seconds))
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents="x")
    assert info.value.response.headers.get("Retry-After") == header
    assert info.value.details["error"]["details"][0]["retryDelay"] == delay


def test_a_body_that_is_not_json_is_invalid_argument(srv, client):
    srv.reply_text("kept")
    status, raw = _call(srv, "POST", f"/v1beta/models/{MODEL}:generateContent", b"{not json")
    assert status == 400
    assert json.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"
    assert client.models.generate_content(model=MODEL, contents="x").text == "kept"  # not used up by the 400


def test_default_reply_echoes_the_last_user_text_only(srv, client):
    contents = [
        types.Content(role="user", parts=[types.Part(text="weather in Paris?")]),
        types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name="w", args={}))]),
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            name="w", response={"text": "sunny"}))]),
        types.Content(role="model", parts=[types.Part(text="model said this")]),
    ]
    assert client.models.generate_content(model=MODEL, contents=contents).text == "echo: weather in Paris?"
