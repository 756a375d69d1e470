"""What a backend or engine of one's own (built in code, or a plugin) sees the router do with what it answers or
raises, through the sync API as through the async one."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest

from genroute import ConfigError, Router, StreamInterrupted, UsageError
from genroute.backends.base import Backend, BackendConfig, BackendOutput
from genroute.runtime.resources import Resources
from genroute_plugin_example.engine import EchoEngine, EchoEngineConfig


class Cancelling(Backend):
    """Raises ``CancelledError`` of its own (an awaited future another part of the program cancelled) on task
    ``cancel``; answers otherwise."""

    kind = "cancelling"
    Config = BackendConfig

    async def run(self, request: Any, ctx: Any) -> BackendOutput:
        if request.task == "cancel":
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # raises CancelledError here, though no one cancelled this request
        return BackendOutput(text="answered", model="echo-1")


def _router() -> Router:
    resources = Resources({"e": EchoEngine("e", EchoEngineConfig())})
    backend = Cancelling("c", BackendConfig(kind="cancelling", engine="e", model="echo-1"), resources)
    return Router({"c": backend}, resources=resources)


def test_a_backends_own_cancelled_error_is_not_reported_as_the_router_closing() -> None:
    # The sync API said "the router was closed while this request was in flight" (a UsageError), though the router
    # was open and answered the next request; the async API raised the CancelledError as it is.
    with _router() as router:
        with pytest.raises(concurrent.futures.CancelledError) as err:
            router.generate("hello", task="cancel")
        assert not isinstance(err.value, UsageError)
        with pytest.raises(concurrent.futures.CancelledError):
            list(router.stream("hello", task="cancel"))
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(router.agenerate("hello", task="cancel"))
        assert router.generate("hello").text == "answered"
    with pytest.raises(UsageError, match="the router is closed"):
        router.generate("hello")


class Afterword(Backend):
    """Streams its final output, then more text (its author's loop yielded one chunk too many)."""

    kind = "afterword"
    Config = BackendConfig

    async def run(self, request: Any, ctx: Any) -> BackendOutput:
        return BackendOutput(text="whole", model="echo-1")

    async def stream(self, request: Any, ctx: Any) -> Any:
        yield "whole"
        yield BackendOutput(text="whole", model="echo-1")
        yield " and more"


def test_a_stream_that_yields_text_after_its_final_output_is_interrupted() -> None:
    # The reader got " and more" as a chunk, and a result whose text ("whole") was not what it had read.
    resources = Resources({"e": EchoEngine("e", EchoEngineConfig())})
    backend = Afterword("a", BackendConfig(kind="afterword", engine="e", model="echo-1"), resources)
    with Router({"a": backend}, resources=resources) as router:
        chunks: list[str] = []
        with pytest.raises(StreamInterrupted, match="yielded text after its final output") as err:
            for chunk in router.stream("hello"):
                chunks.append(chunk.text)
        assert chunks == ["whole"] and err.value.backend == "a"
        assert router.generate("hello").text == "whole"  # run() is not a stream: unchanged


class Careless(EchoEngine):
    """Answers a plain str from ``generate`` and yields ``None`` from ``stream`` (not google-genai responses)."""

    async def generate(self, model: str, contents: Any, config: Any = None, *, timeout_s: Any = None) -> Any:
        return "plain text"

    async def stream(self, model: str, contents: Any, config: Any = None, *, timeout_s: Any = None) -> Any:
        yield None


def test_an_engine_answering_other_than_a_response_is_a_config_error_naming_it(otel) -> None:
    # An AttributeError ("'str' object has no attribute 'usage_metadata'") from the run context's accounting; a
    # None chunk ended the stream as if it were complete, its answer empty.
    from genroute.backends.prompt_template import PromptTemplateBackend, PromptTemplateConfig

    resources = Resources({"e": Careless("e", EchoEngineConfig())})
    backend = PromptTemplateBackend("chat", PromptTemplateConfig(engine="e", model="echo-1"), resources)
    with Router({"chat": backend}, resources=resources, **otel.providers) as router:
        for call, says in ((router.generate, "answered str from generate()"),
                           (lambda text: list(router.stream(text)), "yielded NoneType from stream()")):
            with pytest.raises(ConfigError) as err:
                call("hello")
            assert err.value.field == "engines.e" and says in err.value.message and "Careless" in err.value.message
    spans = otel.spans("generate_content echo-1")
    assert [span.attributes.get("error.type") for span in spans] == ["ConfigError", "ConfigError"]


class Silent(EchoEngine):
    """Its ``stream`` ends without yielding anything; its ``generate`` answers."""

    async def stream(self, model: str, contents: Any, config: Any = None, *, timeout_s: Any = None) -> Any:
        return
        yield


class Husks(EchoEngine):
    """Its ``stream`` yields chunks with neither candidates nor promptFeedback (one with a prompt count, one with
    usage that counts output); its ``generate`` answers."""

    async def stream(self, model: str, contents: Any, config: Any = None, *, timeout_s: Any = None) -> Any:
        from google.genai import types

        yield types.GenerateContentResponse()
        yield types.GenerateContentResponse(usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=3))
        yield types.GenerateContentResponse(usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=3, candidates_token_count=2))


class Hollow(EchoEngine):
    """Its ``generate`` answers a response with neither candidates nor promptFeedback; its ``stream`` answers."""

    async def generate(self, model: str, contents: Any, config: Any = None, *, timeout_s: Any = None) -> Any:
        from google.genai import types

        return types.GenerateContentResponse()


@pytest.mark.parametrize(("engine", "empty"), [(Silent, "stream"), (Husks, "stream"), (Hollow, "generate")])
async def test_an_engine_answering_nothing_one_way_is_refused_naming_it_as_the_other_way_would_be(
        engine: type[EchoEngine], empty: str) -> None:
    """An engine whose stream yielded nothing, or only chunks with neither candidates nor promptFeedback, gave an
    empty answer (a bench row scored 0 as if the model had said nothing, and no error) where its generate answered;
    a generate with no candidates was refused without naming the engine. Each is a BackendUnavailable naming the
    engine and its class; the other method still answers."""
    from genroute import BackendUnavailable
    from genroute.backends.prompt_template import PromptTemplateBackend, PromptTemplateConfig
    from genroute.bench import BenchRecord, arun_bench, resolve_scorer

    resources = Resources({"e": engine("e", EchoEngineConfig())})
    backend = PromptTemplateBackend("chat", PromptTemplateConfig(engine="e", model="echo-1"), resources)
    records = [BenchRecord(id="r1", input="hello", output="echo: hello")]
    async with Router({"chat": backend}, resources=resources) as router:
        with pytest.raises(BackendUnavailable) as err:
            if empty == "stream":
                async for _ in router.astream("hello"):
                    pass
            else:
                await router.agenerate("hello")
        said = f"engine 'e' ({engine.__module__}.{engine.__qualname__})"
        assert said in str(err.value) and f"{empty}()" in str(err.value)
        rows = {stream: await arun_bench(router, records, ["chat"], resolve_scorer("exact"), stream=stream,
                                         progress=False) for stream in (True, False)}
    refused, answered = (rows[True], rows[False]) if empty == "stream" else (rows[False], rows[True])
    assert [(r.ok, r.error_type) for r in refused] == [(False, "BackendUnavailable")] and said in refused[0].error
    assert [(r.ok, r.answer, r.score) for r in answered] == [(True, "echo: hello", 1.0)]


class Lingering(Backend):
    """Streams a word, then waits; when its stream is ended it takes a moment to clean up (closes a connection)."""

    kind = "lingering"
    Config = BackendConfig
    events: list[str] = []

    async def run(self, request: Any, ctx: Any) -> BackendOutput:
        return BackendOutput(text="whole", model="echo-1")

    async def stream(self, request: Any, ctx: Any) -> Any:
        try:
            yield "one"
            yield BackendOutput(text="one", model="echo-1")
        finally:
            await asyncio.sleep(0.5)  # well inside the close's UNWIND_S
            self.events.append("stream cleaned up")

    async def aclose(self) -> None:
        self.events.append("backend closed")
        await super().aclose()


async def test_the_close_ends_a_stream_left_open_before_it_closes_its_backend() -> None:
    # The close asked the stream's loop to end an idle stream, then at once found nothing left to wait for (that
    # request had not run yet) and went on to close the backends, engines and state store under the stream's
    # unwinding: its clean-up and budget settlement ran after them, or (a sync router's loop thread stopped) never.
    resources = Resources({"e": EchoEngine("e", EchoEngineConfig())})
    backend = Lingering("l", BackendConfig(kind="lingering", engine="e", model="echo-1"), resources)
    router = Router({"l": backend}, resources=resources)
    stream = router.astream("hello")
    assert (await anext(stream)).text == "one"
    await router.aclose(drain_s=0)
    assert backend.events == ["stream cleaned up", "backend closed"]
    with pytest.raises(UsageError, match="closed while this stream was open"):
        await anext(stream)


def test_a_stream_whose_loop_closed_after_the_close_asked_it_is_ended_by_the_closing_loop() -> None:
    # The close asked the stream's loop (a loop of the caller's, not running) to end it; that loop was then closed
    # without running the request, so nothing ever ended the stream: its clean-up never ran, and the close waited
    # out UNWIND_S for it. The closing loop now ends it, as it does a stream whose loop was closed before the close.
    resources = Resources({"e": EchoEngine("e", EchoEngineConfig())})
    backend = Lingering("l", BackendConfig(kind="lingering", engine="e", model="echo-1"), resources)
    backend.events = []  # its own (the class's list is another test's)
    router = Router({"l": backend}, resources=resources)
    theirs = asyncio.new_event_loop()
    stream = router.astream("hello")
    assert theirs.run_until_complete(anext(stream)).text == "one"

    async def close_theirs_once_asked() -> None:
        while not router._inflight.closed:  # the close has asked that loop to end the stream
            await asyncio.sleep(0)
        theirs.close()

    async def main() -> None:
        await asyncio.gather(router.aclose(drain_s=0), close_theirs_once_asked())

    asyncio.run(main())
    assert backend.events == ["stream cleaned up", "backend closed"]
    assert stream.closed_by_router and stream.ending is not None and stream.ending.done()


def test_the_close_waits_for_no_stream_that_had_already_ended() -> None:
    # A stream read to its end, still held by its caller, on a loop of theirs that is not running: the close asked
    # that loop to end it too and waited (up to UNWIND_S) for a call that loop would run only when run again, though
    # there was nothing left to end.
    resources = Resources({"e": EchoEngine("e", EchoEngineConfig())})
    backend = Lingering("l", BackendConfig(kind="lingering", engine="e", model="echo-1"), resources)
    router = Router({"l": backend}, resources=resources)
    theirs = asyncio.new_event_loop()
    try:
        stream = router.astream("hello")

        async def read_all() -> list[Any]:
            return [chunk async for chunk in stream]

        assert theirs.run_until_complete(read_all())
        assert stream.finished
        asyncio.run(router.aclose(drain_s=0))
        assert not router._inflight._unreached  # the close went on at once: no stream was left to reach
    finally:
        theirs.close()
