"""What a backend of one's own (built in code, or a plugin) sees the router do with what it raises, through the sync
API as through the async one."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest

from genroute import Router, StreamInterrupted, UsageError
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
