"""Wire fidelity of the loopback Gemini server: streamed parts, cache resources, faults, error bodies."""

from __future__ import annotations

import asyncio

import pytest
from google import genai
from google.genai import types

from genroute.testing import GeminiTestServer

MODEL = "gemini-2.5-flash"
THINKING = [{"text": "Let me think about it.", "thought": True},
            {"text": "The answer is 42.", "thoughtSignature": "c2ln"}]


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
