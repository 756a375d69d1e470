"""Async Gemini calls on sessions that skip aiohttp's per-request reads of the environment, and the cases where
the environment must still be read (a proxy, a netrc file, ``trust_env: true``), over the wire."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.genai import types

from genroute.engines.gemini import GeminiEngine
from genroute.errors import BackendUnavailable
from genroute.testing import CacheRoutes, Fault

from .conftest import closes_everything

KEY = "AIzaSyLOOPBACK-test-key-0123456789abcdef"
MODEL = "gemini-2.5-flash"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No proxy setting and no netrc file in the environment (a home directory without one)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def engine(server: Any, **config: Any) -> GeminiEngine:
    return GeminiEngine("gem", {"api_key": KEY, "base_url": server.base_url, "retry": {"attempts": 1}, **config})


def user(text: str) -> list[types.Content]:
    return [types.Content(role="user", parts=[types.Part(text=text)])]


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A loop's default executor that counts the jobs given to it (``run_in_executor``, ``asyncio.to_thread``)."""

    jobs = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        type(self).jobs += 1
        return super().submit(*args, **kwargs)


async def calls_of_each_kind(eng: GeminiEngine) -> list[Any]:
    """An answer, a stream, embeddings, a token count and a context cache."""
    answer = await eng.generate(MODEL, user("hello"))
    chunks = [chunk async for chunk in eng.stream(MODEL, user("hello"))]
    vectors = await eng.embed("gemini-embedding-001", ["a", "b"])
    tokens = await eng.count_tokens(MODEL, user("count me"))
    cache = await eng.create_cache(MODEL, user("a long prefix"), ttl_s=60)
    return [answer.text, len(chunks), len(vectors), tokens, cache.name]


def run_counting(eng: GeminiEngine) -> tuple[list[Any], int]:
    """``calls_of_each_kind`` on a fresh loop, twice (the second time warm), and the executor jobs of the second."""
    async def main() -> tuple[list[Any], int]:
        asyncio.get_running_loop().set_default_executor(CountingExecutor(2))
        await calls_of_each_kind(eng)
        before = CountingExecutor.jobs
        got = await calls_of_each_kind(eng)
        jobs = CountingExecutor.jobs - before
        await eng.aclose()
        return got, jobs

    return asyncio.run(main())


def test_calls_make_no_trips_to_worker_threads_where_the_environment_holds_nothing(gemini_server, no_env):
    CacheRoutes(gemini_server)
    got, jobs = run_counting(engine(gemini_server))
    assert got[0] == "echo: hello" and got[1] >= 1 and got[2] == 2 and got[3] > 0 and got[4]
    assert jobs == 0
    # The SDK's own session reads netrc and the proxy settings in worker threads before each of the 5 requests.
    same, trusting = run_counting(engine(gemini_server, trust_env=True))
    assert same[:4] == got[:4] and same[4]
    assert trusting >= 2 * 5


def test_a_proxy_in_the_environment_is_used(gemini_server, no_env, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on: a proxy there refuses every connection
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    eng = engine(gemini_server)

    async def call(eng: GeminiEngine) -> str:
        try:
            return (await eng.generate(MODEL, "hello")).text
        finally:
            await eng.aclose()

    with pytest.raises(BackendUnavailable):
        asyncio.run(call(eng))
    assert gemini_server.requests == []
    # trust_env: false goes straight to the server, proxy or not.
    assert asyncio.run(call(engine(gemini_server, trust_env=False))) == "echo: hello"
    assert len(gemini_server.requests) == 1


def test_a_netrc_file_is_used(gemini_server, no_env, monkeypatch):
    netrc = no_env / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)

    async def call(eng: GeminiEngine) -> None:
        await eng.generate(MODEL, "hello")
        await eng.aclose()

    asyncio.run(call(engine(gemini_server)))  # no netrc: no credentials sent
    monkeypatch.setenv("NETRC", str(netrc))
    asyncio.run(call(engine(gemini_server)))
    without, with_netrc = gemini_server.requests
    assert "authorization" not in without.headers
    assert with_netrc.headers["authorization"].startswith("Basic ")


def test_a_loop_per_call_keeps_one_session(gemini_server, no_env):
    eng = engine(gemini_server)

    async def call() -> str:
        return (await eng.generate(MODEL, "hello")).text

    assert [asyncio.run(call()) for _ in range(4)] == ["echo: hello"] * 4
    loops = eng._loops
    assert loops is not None and len(loops._own) == 1 and len(loops.aio) == 1  # the closed loops' are let go
    (_, last), = loops._own.values()

    async def close() -> None:
        await eng.aclose()

    asyncio.run(close())  # from another loop: the last call's loop is closed, its session is marked closed
    assert last.closed and not loops._own


def test_a_loop_stopped_at_close_closes_its_session_when_it_runs_again(gemini_server, no_env):
    eng = engine(gemini_server)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(eng.generate(MODEL, "a")).text == "echo: a"
        loops = eng._loops
        assert loops is not None
        (_, session), = loops._own.values()
        asyncio.run(eng.aclose())  # from another loop, while this one is stopped
        assert not session.closed  # nothing ran on its loop since
        assert loop.run_until_complete(eng.generate(MODEL, "b")).text == "echo: b"  # on a new session
        assert session.closed  # closed on its loop as soon as that ran
        loop.run_until_complete(eng.aclose())
    finally:
        loop.close()


def test_an_engine_collected_unclosed_closes_its_session_on_its_loop(gemini_server, no_env):
    async def main() -> bool:
        eng = engine(gemini_server)
        await eng.generate(MODEL, "hello")
        assert eng._loops is not None
        (_, session), = eng._loops._own.values()
        del eng
        gc.collect()
        for _ in range(200):  # the close runs on this loop (polled: a loaded machine may take more than a moment)
            if session.closed:
                break
            await asyncio.sleep(0.05)
        return session.closed

    assert asyncio.run(main())


def test_the_key_is_read_once(gemini_server, no_env, monkeypatch):
    """Clients made for later loops send the key the engine first read (as its one SDK client did before)."""
    monkeypatch.setenv("GENROUTE_TEST_KEY", KEY)
    eng = GeminiEngine("gem", {"api_key_env": "GENROUTE_TEST_KEY", "base_url": gemini_server.base_url})

    async def call() -> str:
        return (await eng.generate(MODEL, "hello")).text

    assert asyncio.run(call()) == "echo: hello"
    monkeypatch.delenv("GENROUTE_TEST_KEY")
    assert asyncio.run(call()) == "echo: hello"  # a new loop, a new client: the same key
    assert {r.headers["x-goog-api-key"] for r in gemini_server.requests} == {KEY}


def test_retries_after_aclose_go_through_a_new_session(gemini_server, no_env):
    """``aclose`` during a retry's backoff: the next attempt takes the loop's client again (as the SDK's own session
    would be made again), for every kind of call."""
    eng = GeminiEngine("gem", {"api_key": KEY, "base_url": gemini_server.base_url, "embed_batch_size": 1,
                               "retry": {"attempts": 3, "initial_backoff_s": 0.3, "max_backoff_s": 0.3,
                                         "jitter_s": 0.0}})

    async def stream() -> str:
        return "".join([chunk.text async for chunk in eng.stream(MODEL, "hi")])

    async def embed() -> int:
        return len(await eng.embed("gemini-embedding-001", ["a", "b"]))

    async def generate() -> str:
        return (await eng.generate(MODEL, "hi")).text

    async def main() -> dict[str, Any]:
        await eng.generate(MODEL, "warm")
        out = {}
        for name, call in (("generate", generate), ("stream", stream), ("embed", embed)):
            gemini_server.fault(Fault.status(503))
            task = asyncio.create_task(call())
            await asyncio.sleep(0.1)  # the first attempt failed: the retry is in its backoff
            await eng.aclose()
            out[name] = await task
        await eng.aclose()
        return out

    assert asyncio.run(main()) == {"generate": "echo: hi", "stream": "echo: hi", "embed": 2}


def test_vertex_ai_keeps_the_sdks_own_session(gemini_server, no_env, monkeypatch):
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    eng = GeminiEngine("vx", {"vertex": {"project": "proj", "location": "europe-west4"},
                              "base_url": gemini_server.base_url}, credentials=None)
    assert eng._loops is None


def test_no_unclosed_session_is_logged_at_exit(gemini_server, no_env):
    """A router used from sync code and from loops of its own, closed or never closed, exits without aiohttp's
    "Unclosed client session" error or a task destroyed pending (sessions whose loop is gone are marked closed; one
    whose loop is only stopped when the router closes waits for that loop to close)."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        from genroute import Router
        config = {{"engines": {{"gemini": {{"kind": "gemini", "base_url": {gemini_server.base_url!r},
                                            "api_key": {KEY!r}}}}},
                   "backends": {{"chat": {{"kind": "prompt_template", "engine": "gemini", "model": {MODEL!r}}}}},
                   "policy": {{"kind": "static", "backend": "chat"}}}}
        router = Router.from_config(config)
        async def call():
            answer = (await router.agenerate("hi")).text
            if sys.argv[1] == "aclose":
                await router.aclose()
            return answer
        if sys.argv[1] == "own loop":  # a loop the caller drives and closes after the router
            loop = asyncio.new_event_loop()
            print(router.generate("hi").text, loop.run_until_complete(call()))
            router.close()
            loop.close()
        else:
            print(router.generate("hi").text, asyncio.run(call()))
        if sys.argv[1] == "close":
            router.close()
    """)
    for how in ("never", "close", "aclose", "own loop"):
        done = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["echo:", "hi", "echo:", "hi"], (how, done.stdout)
        for trouble in ("Unclosed", "Traceback", "destroyed but it is pending", "never awaited"):
            assert trouble not in done.stderr, (how, done.stderr)


def test_a_loop_per_call_closes_its_connections_before_it_closes(gemini_server, no_env):
    """``asyncio.run`` per call (a Celery task's, a script's): each loop's session is closed with its connections as
    that loop shuts down, not left open for the garbage collector (a socket held until a collection, and aiohttp's
    "unclosed transport" ResourceWarning)."""
    script = textwrap.dedent(f"""
        import asyncio, gc
        from genroute.engines.gemini import GeminiEngine
        eng = GeminiEngine("gem", {{"api_key": {KEY!r}, "base_url": {gemini_server.base_url!r}}})
        async def call():
            answers = await asyncio.gather(*(eng.generate({MODEL!r}, f"hello {{i}}") for i in range(3)))
            (_, session), = eng._loops._own.values()
            return session, [answer.text for answer in answers]
        for _ in range(3):
            session, texts = asyncio.run(call())
            print(session.closed, *texts)
            gc.collect()
    """)
    assert closes_everything(script) == ["True echo: hello 0 echo: hello 1 echo: hello 2"] * 3
