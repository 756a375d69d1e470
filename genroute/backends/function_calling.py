"""The function-calling backend: genroute runs the tool loop (the SDK's automatic calling stays off).

Each model turn may ask for tools; allowlisted ones run concurrently with validated arguments, a per-tool
timeout and the request deadline, and every outcome (result, error, timeout, invalid or disallowed call)
goes back to the model as a ``function_response`` so a bad tool never crashes the request.

A call to a tool that is not on the backend's allowlist is never run, whatever the model was told
(including by a tool's own output); the model gets an error naming the tools it may use::

    backends:
      assistant:
        kind: function_calling
        engine: gemini
        model: gemini-2.5-flash
        tools: [get_weather]          # allowlist: names from Router.from_config(..., tools={...})
        max_steps: 4                  # model turns whose tool calls are run
        tool_timeout_s: 5
        max_tool_calls: 32            # calls asked for in one request, all steps together
        deadline_s: 20                # the whole loop, model turns included
        on_max_steps: answer          # or raise ToolLoopExceeded

The loop stops with ``ToolLoopExceeded`` (its ``tool_calls`` list the calls made so far) at ``deadline_s``
or shortly before the request's own deadline, whichever comes first, so that a caller with a deadline
learns what the tools did rather than getting a bare timeout. Sync tools run on the backend's own pool of
``max_parallel`` threads: a hung tool keeps its thread, and on a shared pool it would starve unrelated work. One turn's
calls are run by ``genroute.backends.tool_runner``; this module is the loop around them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field, model_validator

from genroute.backends.base import Backend, BackendConfig, BackendOutput, user_content
from genroute.backends.model_turn import ModelTurn
from genroute.backends.tool_runner import ToolRunner
from genroute.errors import BackendError, ConfigError, ToolLoopExceeded
from genroute.runtime.deadlines import deadline_at
from genroute.tools import Tool, tool_from_callable
from genroute.types import GenerateRequest, ToolCall

if TYPE_CHECKING:
    from google.genai import types

    from genroute.runtime.resources import Resources
    from genroute.runtime.context import RunContext

_T = TypeVar("_T")

#: How long before the request's deadline the loop gives up: the router enforces that deadline by cancelling
#: the request, and the loop must stop first for its ToolLoopExceeded (with the calls made) to reach the caller.
#: Wide enough that an event loop stalled by a busy machine still runs the loop's timer before the router's.
_DEADLINE_MARGIN_S = 1.0
_DEADLINE_MARGIN_FRACTION = 0.25


class FunctionCallingConfig(BackendConfig):
    """A model that may call the allowlisted tools, in a bounded loop."""

    kind: Literal["function_calling"] = "function_calling"
    tools: tuple[str, ...] = Field(min_length=1, description="Allowlist: names of tools this backend may run.")
    max_steps: int = Field(default=5, ge=1, description="Most model turns whose tool calls are run.")
    tool_timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False, description="Limit for one tool call.")
    deadline_s: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Limit for the whole loop (model turns and tools); the request's "
        "own deadline applies too.",
    )
    max_parallel: int = Field(
        default=8, ge=1,
        description="Most tool calls of one turn running at once; also the size of the backend's thread pool "
        "for sync tools (shared by concurrent requests; waiting for a thread counts against a call's timeout).",
    )
    max_tool_calls: int = Field(
        default=32, ge=1, description="Most tool calls a request's model may ask for, all steps together (refused "
        "and invalid ones count too); later ones are not run (outcome not_allowed) and the model is told so.",
    )
    max_result_chars: int = Field(
        default=20_000, gt=0, description="Longer tool results (JSON text) and errors reach the model cut short."
    )
    on_max_steps: Literal["raise", "answer"] = Field(
        default="raise",
        description="At the step limit: raise ToolLoopExceeded, or ask once more with tools disabled.",
    )
    tool_mode: Literal["auto", "any"] = Field(
        default="auto", description="`any` forces a tool call on every turn but the final answer turn."
    )

    @model_validator(mode="after")
    def _any_needs_a_final_answer(self) -> FunctionCallingConfig:
        if self.tool_mode == "any" and self.on_max_steps == "raise":
            # Every turn would call a tool, so the loop could only ever end by raising.
            raise ValueError("tool_mode 'any' needs on_max_steps: answer")
        return self


class FunctionCallingBackend(Backend):
    """Answers with a model that calls allowlisted Python tools until it has a final answer."""

    kind = "function_calling"
    Config = FunctionCallingConfig
    capabilities = frozenset({"tools"})
    config: FunctionCallingConfig

    def __init__(self, name: str, config: FunctionCallingConfig, resources: Resources) -> None:
        super().__init__(name, config, resources)
        field = f"backends.{name}.tools"
        if len(set(config.tools)) != len(config.tools):
            raise ConfigError("tool names must be unique", field=field)
        self.tools: dict[str, Tool] = {
            tool_name: tool_from_callable(resources.tool(tool_name, field=field), name=tool_name, field=field)
            for tool_name in config.tools
        }
        self._configs: dict[bool, types.GenerateContentConfig] = {}
        self._runner = ToolRunner(name, self.tools, max_parallel=config.max_parallel,
                                  tool_timeout_s=config.tool_timeout_s, max_result_chars=config.max_result_chars)

    def facts(self) -> dict[str, Any]:
        return {"tools": list(self.tools), "max_steps": self.config.max_steps}

    def side_effects(self) -> tuple[str, ...]:
        """The allowlisted tools not declared side-effect-free (``genroute.side_effect_free``)."""
        return tuple(name for name, tool in self.tools.items() if not tool.side_effect_free)

    async def aclose(self) -> None:
        """Stop the tool threads; a hung tool cannot be stopped, so close does not wait for it."""
        self._runner.close()

    def generate_config(self, *, final: bool = False) -> types.GenerateContentConfig:
        """The engine config: declarations of allowlisted tools only; ``final`` forbids further calls."""
        from google.genai import types

        # Built once per kind: the same (unmodified) config serves every request.
        cached = self._configs.get(final)
        if cached is not None:
            return cached
        if final:
            mode = types.FunctionCallingConfigMode.NONE
        else:
            mode = types.FunctionCallingConfigMode(self.config.tool_mode.upper())
        config = self.config.generation.to_genai(
            system=self.config.system,
            tools=[types.Tool(function_declarations=[t.declaration() for t in self.tools.values()])],
            tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode=mode)),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        self._configs[final] = config
        return config

    async def run(self, request: GenerateRequest, ctx: RunContext) -> BackendOutput:
        async with aclosing(self._loop(request, ctx, stream=False)) as items:
            async for item in items:
                if isinstance(item, BackendOutput):
                    return item
        raise AssertionError("unreachable")  # pragma: no cover - the loop always ends with an output

    async def stream(self, request: GenerateRequest, ctx: RunContext) -> AsyncGenerator[str | BackendOutput, None]:
        async with aclosing(self._loop(request, ctx, stream=True)) as items:
            async for item in items:
                yield item

    async def _loop(self, request: GenerateRequest, ctx: RunContext, *,
                    stream: bool) -> AsyncGenerator[str | BackendOutput, None]:
        """The tool loop; yields text as the model says it (streamed or whole), then the output."""
        from google.genai import types

        contents: list[types.Content] = [user_content(request.input)]
        calls_made: list[ToolCall] = []
        said: list[str] = []  # text of every turn, including any preamble before a tool call
        ran = 0
        deadline = self._deadline(ctx)
        try:
            steps = self.config.max_steps
            for step in range(steps + 1):
                final = step == steps and self.config.on_max_steps == "answer"
                if deadline is not None and time.monotonic() >= deadline:
                    cut = ", ".join(sorted({c.name for c in calls_made[ran:] if c.outcome == "timeout"}))
                    raise self._exceeded(f"deadline reached after {step} tool step(s)"
                                         + (f", while tool(s) {cut} ran (timed out)" if cut else ""), calls_made)
                config = self.generate_config(final=final)
                turn = ModelTurn(separator="\n\n" if said else "")
                if stream:
                    async with aclosing(ctx.stream(self.engine, self.config.model, contents, config)) as chunks:
                        # Bounded chunk by chunk: a deadline scope must not stay open across a yield to our caller.
                        while (chunk := await self._until(deadline, anext(chunks, None), step,
                                                          calls_made)) is not None:
                            for delta in turn.add(chunk, False):
                                held = time.monotonic()
                                yield delta
                                deadline = _moved_on(deadline, held)
                else:
                    response = await self._until(
                        deadline, ctx.generate(self.engine, self.config.model, contents, config), step, calls_made
                    )
                    for delta in turn.add(response, True):
                        held = time.monotonic()
                        yield delta
                        deadline = _moved_on(deadline, held)
                if turn.text:
                    said.append(turn.text)
                if not turn.calls or final:
                    yield BackendOutput(text="\n\n".join(said), model=self.config.model, finish_reason=turn.finish,
                                        tool_calls=tuple(calls_made))
                    return
                if step == steps:
                    raise self._exceeded(f"the model still asked for tools after {steps} step(s) (max_steps)",
                                         calls_made)
                # The model's own turn goes back verbatim (with any thought signatures it carries).
                contents.append(types.Content(role="model", parts=turn.parts))
                limit = self.config.max_tool_calls
                results = await self._runner.run(turn.calls, step, ctx, deadline, self.engine.provider,
                                                 room=limit - len(calls_made), limit=limit)
                ran = len(calls_made)  # where this step's calls start
                calls_made.extend(record for record, _ in results)
                contents.append(types.Content(role="user", parts=[part for _, part in results]))
        except BackendError as exc:  # the caller must know which tools ran (and may have had side effects)
            if calls_made and not exc.tool_calls:
                exc.tool_calls = tuple(calls_made)
            raise

    def _deadline(self, ctx: RunContext) -> float | None:
        """When the loop stops (``time.monotonic``): ``deadline_s`` from now, or just before the request's."""
        now = time.monotonic()
        limits = [] if self.config.deadline_s is None else [now + self.config.deadline_s]
        remaining = ctx.remaining_s()
        if remaining is not None:
            limits.append(now + remaining - min(_DEADLINE_MARGIN_S, remaining * _DEADLINE_MARGIN_FRACTION))
        return min(limits, default=None)

    def _exceeded(self, message: str, calls_made: list[ToolCall]) -> ToolLoopExceeded:
        return ToolLoopExceeded(message, backend=self.name, tool_calls=tuple(calls_made))

    async def _until(self, deadline: float | None, awaitable: Awaitable[_T], step: int,
                     calls_made: list[ToolCall]) -> _T:
        """Await a model call (or chunk) until the loop's deadline; past it, ``ToolLoopExceeded``."""
        try:
            with deadline_at(deadline) as scope:
                return await awaitable
        except TimeoutError:
            if not scope.expired():
                raise
            raise self._exceeded(f"deadline reached waiting for the model after {step} tool step(s)",
                                 calls_made) from None



def _moved_on(deadline: float | None, held: float) -> float | None:
    """``deadline`` moved on by the time since ``held``: what the reader of a stream held a chunk for is not the
    loop's time, as it is not the request's (the router moves the request's deadline on as much)."""
    return None if deadline is None else deadline + (time.monotonic() - held)
