"""The tool calls of one model turn, as the function-calling backend runs them: only allowlisted tools, with validated
arguments, a per-call timeout and the loop's deadline, each inside an ``execute_tool`` span; every outcome (result,
error, timeout, invalid or disallowed call) becomes a ``function_response`` for the model, cut to a bounded size, so a
bad tool never crashes the request. Sync tools run on the runner's own pool of ``max_parallel`` threads."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from genroute.runtime.forks import forget_at_fork
from genroute.runtime.telemetry import clip_captured
from genroute.tools import InvalidToolArgs, Tool, ToolTimedOut, failure_text, jsonable
from genroute.types import ToolCall

if TYPE_CHECKING:
    from google.genai import types

    from genroute.runtime.context import RunContext

#: The backend's logger: a tool's warnings are the function-calling backend's.
_log = logging.getLogger("genroute.backends.function_calling")

#: What metrics and span names record for a tool name that is not on the allowlist (OTel's value for "other").
_OTHER = "_OTHER"
_MAX_NAME = 64


class ToolRunner:
    """Runs the tool calls of the backend ``backend`` (``tools``: its allowlist, by name)."""

    def __init__(self, backend: str, tools: Mapping[str, Tool], *, max_parallel: int, tool_timeout_s: float,
                 max_result_chars: int) -> None:
        self.backend = backend
        self.tools = tools
        self.max_parallel = max_parallel
        self.tool_timeout_s = tool_timeout_s
        self.max_result_chars = max_result_chars
        self._forget_parent()  # threads start on demand, so a backend with only async tools never starts one
        forget_at_fork(self)

    def _forget_parent(self) -> None:
        """A pool of its own (also in a forked child, where the parent's, counting its threads idle, started none)."""
        self._pool = ThreadPoolExecutor(self.max_parallel, thread_name_prefix=f"genroute-tool-{self.backend}")

    def close(self) -> None:
        """Stop the tool threads; a hung tool cannot be stopped, so close does not wait for it."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, calls: list[types.FunctionCall], step: int, ctx: RunContext, deadline: float | None,
                  provider: str, *, room: int, limit: int) -> list[tuple[ToolCall, types.Part]]:
        """Run one turn's calls concurrently, at most ``max_parallel`` at a time; results in call order.
        ``provider``: the engine's that asked for them (every duration metric point names one). Only the first
        ``room`` calls may run: the request's ``limit`` (``max_tool_calls``) leaves no room for the others."""
        gate = asyncio.Semaphore(self.max_parallel)

        async def gated(call: types.FunctionCall, call_id: str, over: int | None) -> tuple[ToolCall, types.Part]:
            async with gate:
                return await self._execute(call, call_id, ctx, deadline, provider, over)

        try:
            # A TaskGroup rather than gather: an unexpected failure cancels the sibling calls at once.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(gated(call, f"call_{step}_{i}", None if i < room else limit))
                         for i, call in enumerate(calls)]
        except BaseExceptionGroup as errors:
            # Tool failures are outcomes, never raised; what arrives here is unexpected: surface it as it is.
            raise errors.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _execute(self, call: types.FunctionCall, fallback_id: str, ctx: RunContext,
                       deadline: float | None, provider: str, over: int | None) -> tuple[ToolCall, types.Part]:
        """Run one call (or refuse it) inside an ``execute_tool`` span; never raises for tool failures. ``over``:
        the request's limit of tool calls, when this call is past it (and so refused)."""
        from google.genai import types

        name = call.name or ""
        args = dict(call.args or {})
        call_id = call.id or fallback_id
        tool = self.tools.get(name)
        # A name the model made up is not on the allowlist: it could be anything, of any length, so metrics and
        # span names get one fixed value (bounded cardinality) and the span a bounded copy.
        known = name if tool is not None else _OTHER
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name if tool is not None else _clipped(name),
            "gen_ai.tool.call.id": _clipped(call_id),
            "gen_ai.tool.type": "function",
        }
        if tool is not None and tool.description:
            attrs["gen_ai.tool.description"] = tool.description
        if ctx.capture_content:
            attrs["gen_ai.tool.call.arguments"] = clip_captured(_dumps(args), ctx.telemetry.capture_max_chars)
        # Every gen_ai.client.operation.duration point requires a provider: the engine's that asked for the call.
        metric_attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.provider.name": provider,
                        "gen_ai.tool.name": known}
        start = time.perf_counter()
        with ctx.tracer.start_as_current_span(
            f"execute_tool {known}", kind=SpanKind.INTERNAL, attributes=attrs,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                record, error_kind = await self._outcome(tool, name, args, call_id, deadline, over)
            except asyncio.CancelledError:
                # The request was cancelled (its deadline, the caller, or a failing sibling call).
                span.set_attributes({"error.type": "cancelled", "genroute.tool.outcome": "cancelled"})
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
                ctx.telemetry.duration.record(time.perf_counter() - start, {**metric_attrs, "error.type": "cancelled"})
                raise
            duration = time.perf_counter() - start
            span.set_attribute("genroute.tool.outcome", record.outcome)
            span.set_attribute("genroute.tool.duration_s", duration)
            if error_kind is not None:
                span.set_attribute("error.type", error_kind)
                span.set_status(Status(StatusCode.ERROR, error_kind))
                metric_attrs["error.type"] = error_kind
            elif ctx.capture_content:
                span.set_attribute("gen_ai.tool.call.result",
                                   clip_captured(_dumps(record.result), ctx.telemetry.capture_max_chars))
            ctx.telemetry.duration.record(duration, metric_attrs)
        if record.outcome == "ok":
            payload = {"output": _bounded(record.result, self.max_result_chars)}
        else:
            payload = {"error": _cut(record.error or "", self.max_result_chars)}
        part = types.Part(function_response=types.FunctionResponse(id=call.id, name=name, response=payload))
        return record, part

    async def _outcome(self, tool: Tool | None, name: str, args: dict[str, Any], call_id: str,
                       deadline: float | None, over: int | None) -> tuple[ToolCall, str | None]:
        """The call's record and its ``error.type`` (None when it succeeded)."""

        def done(outcome: str, error_kind: str | None = None, **kwargs: Any) -> tuple[ToolCall, str | None]:
            record = ToolCall(name=name, args=args, outcome=outcome,
                              call_id=call_id, **kwargs)
            return record, error_kind

        if tool is None:
            # Whatever the model was told (including by a tool's own output), only the allowlist runs.
            allowed = ", ".join(self.tools)
            return done("not_allowed", "tool_not_allowed",
                        error=f"tool {_clipped(name)!r} is not available; available tools: {allowed}")
        if over is not None:  # however many calls the model (or a text it read) asks for, a request runs `over`
            return done("not_allowed", "tool_call_limit",
                        error=f"tool {name} was not run: a request runs at most {over} tool calls (max_tool_calls)")
        try:
            kwargs = tool.validate(args)
        except InvalidToolArgs as exc:
            return done("invalid_args", "invalid_arguments", error=f"invalid arguments for {name}: {exc}")
        timeout = self.tool_timeout_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:  # its turn (max_parallel) came after the loop's deadline: started now, a sync tool would
                # still run to its end on a free thread, an async one up to its first await, while reported timed out
                return done("timeout", "timeout", error=f"tool {name} was not run: the tool loop's deadline passed "
                                                        "before its turn came")
        try:
            result = await tool.call(kwargs, timeout_s=timeout, executor=self._pool)
        except ToolTimedOut as exc:
            if exc.still_running:  # the request goes on (or fails) without it; its thread does not stop
                _log.warning("tool %s of backend %s timed out and is still running in its thread (Python cannot "
                             "stop a thread): it runs to its end, its result unused; an async tool is cancelled",
                             name, self.backend)
            return done("timeout", "timeout", error=str(exc))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # the request is being cancelled: let it go
                raise
            return done("error", type(exc).__qualname__, error=failure_text(exc))  # the tool's own
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a failing tool is reported to the model:
            # even one that exits, which would otherwise end the router's loop thread and hang every caller
            return done("error", type(exc).__qualname__, error=failure_text(exc))
        return done("ok", result=jsonable(result))


def _clipped(name: str) -> str:
    """``name`` cut to the longest a tool name may be (and a little): what telemetry and the model get back of a
    name the model made up."""
    return name if len(name) <= _MAX_NAME else f"{name[:_MAX_NAME]}..."


def _bounded(result: Any, limit: int) -> Any:
    """``result``, or its JSON text cut to ``limit`` characters: one huge tool answer must not flood the
    model's context (and the bill); the caller still gets the whole result in ``tool_calls``."""
    text = _dumps(result)
    return result if len(text) <= limit else _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many more there were (an error, as long as any result)."""
    return text if len(text) <= limit else f"{text[:limit]}... [truncated: {len(text) - limit} more characters]"


def _dumps(value: Any) -> str:
    try:
        return json.dumps(jsonable(value), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
