"""The backend extension point: a technique that turns a request into engine calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from genroute.bounds import NOT_BOOL
from genroute.construct import one_store_init
from genroute.construct import user_content as user_content  # public here: backends use it
from genroute.engines.base import SamplingSettings
from genroute.errors import BackendUnavailable, ConfigError
from genroute.public_model import ConfigModel
from genroute.registry import KindFromConfig, described
from genroute.runtime.context import no_answer
from genroute.runtime.telemetry import block_reason, reason_name
from genroute.types import Citation, GenerateRequest, ToolCall

if TYPE_CHECKING:
    from google.genai import types

    from genroute.engines.base import Engine
    from genroute.runtime.resources import Resources
    from genroute.runtime.context import RunContext
    from genroute.runtime.pricing import Pricing


#: The response MIME types a response schema can go with (``None``: JSON, as ``to_genai`` sends it).
SCHEMA_MIME_TYPES = (None, "application/json", "text/x.enum")


def sdk_fields(value: Any, own: type[BaseModel]) -> Any:
    """``value`` as the fields genroute reads from it when it is another library's pydantic object (google-genai's
    ``types.SafetySetting``, ``types.ThinkingConfig``) rather than an ``own``: its set fields, an unset one (``None``)
    left out; anything else as it is."""
    if isinstance(value, BaseModel) and not isinstance(value, own):
        return value.model_dump(mode="json", exclude_none=True)
    return value


class SafetySetting(ConfigModel):
    """One of Gemini's safety filters and the threshold it blocks at (google-genai's ``types.SafetySetting``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    category: str = Field(description="A ``HarmCategory``, e.g. HARM_CATEGORY_HARASSMENT.")
    threshold: str = Field(description="A ``HarmBlockThreshold``, e.g. BLOCK_ONLY_HIGH, BLOCK_NONE or OFF.")

    @model_validator(mode="before")
    @classmethod
    def _sdk_setting(cls, value: Any) -> Any:
        # A ported app's list holds google-genai's own types.SafetySetting objects (one genroute does not take, such
        # as Vertex's `method`, is named).
        return sdk_fields(value, SafetySetting)

    @field_validator("category", "threshold")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        # The SDK would send any text and Gemini answer 400 at every request: refuse it when the config is read.
        from google.genai import types

        enum = types.HarmCategory if info.field_name == "category" else types.HarmBlockThreshold
        known = [member.value for member in enum if not member.value.endswith("_UNSPECIFIED")]
        if value not in known:
            raise ValueError(f"{value!r} is not one of {', '.join(known)}")
        return value


class ThinkingSettings(ConfigModel):
    """How much a Gemini 2.5 model thinks before it answers (google-genai's ``types.ThinkingConfig``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thinking_budget: Annotated[int | None, NOT_BOOL] = Field(
        default=None, ge=-1, description="Thinking tokens at most: 0 turns thinking off, -1 lets the model decide.")
    include_thoughts: bool | None = Field(
        default=None, description="Answer with the model's thought summaries too (never part of ``result.text``).")

    @model_validator(mode="before")
    @classmethod
    def _sdk_config(cls, value: Any) -> Any:
        # google-genai's own types.ThinkingConfig (one genroute does not take, such as Gemini 3's thinking_level, is
        # named).
        return sdk_fields(value, ThinkingSettings)


class GenerationSettings(SamplingSettings):
    """Sampling and output settings passed to the engine (the sampling bounds are ``SamplingSettings``')."""

    # hide_input: printing a refused alias bomb would write it out after all.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None
    safety_settings: tuple[SafetySetting, ...] = ()
    #: Gemini 2.5's thinking budget; thought tokens are billed at the output rate (``Usage.thinking_tokens``).
    thinking_config: ThinkingSettings | None = None

    @field_validator("response_schema", mode="before")
    @classmethod
    def _model_schema(cls, value: Any) -> Any:
        # google-genai takes a pydantic model as a response schema; in a config built in Python, so does genroute
        # (its JSON schema, which genroute sends as response_json_schema).
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value.model_json_schema()
        return value

    @field_validator("response_schema")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        # The SDK writes the schema out on the event loop at every request: an alias bomb must stop here.
        if value is not None:
            from genroute.bounds import SCHEMA, check

            check(value, field="", limits=SCHEMA)
            mime = info.data.get("response_mime_type")
            if mime not in SCHEMA_MIME_TYPES:
                # Gemini takes a schema only with these (its API reference), and the local engine would answer
                # JSON whatever the type said.
                raise ValueError(f"a response_schema needs response_mime_type application/json or text/x.enum "
                                 f"(or none, for JSON), not {mime!r}")
        return value

    def to_genai(self, *, system: str | None = None, **extra: Any) -> types.GenerateContentConfig:
        """The equivalent ``GenerateContentConfig`` (automatic function calling off)."""
        from google.genai import types

        kwargs: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_output_tokens": self.max_output_tokens,
            "stop_sequences": list(self.stop_sequences) or None,
            "seed": self.seed,
            "system_instruction": system,
        }
        if self.safety_settings:
            kwargs["safety_settings"] = [
                types.SafetySetting(category=types.HarmCategory(s.category),
                                    threshold=types.HarmBlockThreshold(s.threshold))
                for s in self.safety_settings]
        if self.thinking_config is not None:
            kwargs["thinking_config"] = types.ThinkingConfig(**self.thinking_config.model_dump(exclude_none=True))
        if self.response_schema is not None:
            kwargs["response_mime_type"] = self.response_mime_type or "application/json"
            kwargs["response_json_schema"] = self.response_schema
        elif self.response_mime_type:
            kwargs["response_mime_type"] = self.response_mime_type
        kwargs.update(extra)
        return types.GenerateContentConfig(**{k: v for k, v in kwargs.items() if v is not None})


class BackendConfig(ConfigModel):
    """Fields every backend config has; each kind subclasses it with ``kind: Literal[...]``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    engine: str = Field(description="Name of an engine in the config's `engines`.")
    model: str = Field(min_length=1, description="Model name (or tuned endpoint resource).")
    system: str | None = Field(default=None, description="System instruction.")
    generation: GenerationSettings = GenerationSettings()
    tasks: tuple[str, ...] = Field(default=(), description="Tasks this backend is meant for.")
    description: str | None = None


@one_store_init  # built on every request: one store, not a setattr per field
@dataclass(frozen=True)
class BackendOutput:
    """What a backend produced, before the router adds usage, cost and decision."""

    text: str
    model: str
    finish_reason: str | None = None
    citations: tuple[Citation, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    #: Set by retrieval backends when nothing relevant was found (validators may escalate on it).
    no_context: bool = False


@one_store_init  # built on every request: one store, not a setattr per field
@dataclass(frozen=True)
class Prepared:
    """One engine call a single-call backend wants made."""

    model: str
    #: The turns to send; a ``str`` is one user turn of that text, sent as it is to engines that take text
    #: (``Engine.takes_text``: the SDK builds that turn itself), as ``[user_content(text)]`` to others.
    contents: list[types.Content] | str
    config: types.GenerateContentConfig | None
    citations: tuple[Citation, ...] = ()
    no_context: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: Price the call as this model (a tuned model bills at its base model's rates).
    price_as: str | None = None


class Backend(KindFromConfig, ABC):
    """A technique: prompt template, ICL, RAG, function calling or a tuned model."""

    kind: ClassVar[str]
    Config: ClassVar[type[BackendConfig]]
    #: What the backend brings, for policies: ``tools``, ``knowledge``, ``examples``, ``tuned``.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, config: BackendConfig, resources: Resources) -> None:
        self.name = name
        self.config = config
        self.resources = resources

    @property
    def engine(self) -> Engine:
        """The engine this backend calls."""
        try:
            return self.resources.engines[self.config.engine]
        except KeyError:
            pass
        # The error names the field; building its name is for that case only (raised here: no KeyError as its context).
        return self.resources.engine(self.config.engine, field=f"backends.{self.name}.engine")

    @abstractmethod
    async def run(self, request: GenerateRequest, ctx: RunContext) -> BackendOutput:
        """Answer the request completely."""

    async def stream(self, request: GenerateRequest, ctx: RunContext) -> AsyncGenerator[str | BackendOutput, None]:
        """Yield text deltas, then the final ``BackendOutput``. Default: one chunk from ``run``."""
        output = produced(self, await self.run(request, ctx))
        if output.text:
            yield output.text
        yield output

    def stop_sequences(self) -> tuple[str, ...]:
        """The stop sequences this backend's calls carry (its ``generation``'s; a backend adding its own says so)."""
        return self.config.generation.stop_sequences

    def facts(self) -> dict[str, Any]:
        """Facts policies may read (collection name, example count, tools); must not call a model."""
        return {}

    def refresh(self) -> None:
        """Forget what the backend cached about its data (after data changed)."""

    async def reload(self) -> None:
        """Read again what ``refresh`` forgets and swap it in whole (``Router.refresh`` awaits it, so requests keep
        what the backend had until then instead of waiting for the read). Default: ``refresh()``."""
        self.refresh()

    def billed_as(self, pricing: Pricing) -> tuple[str, str]:
        """The model this backend's calls are priced as, and the config field naming it (default: its model;
        a tuned backend bills at its base model's rates unless ``pricing`` names the tuned model)."""
        return self.config.model, f"backends.{self.name}.model"

    def billed_rates(self) -> tuple[tuple[str, str], ...]:
        """``ModelPrice`` rates beyond input and output that this backend's calls are billed at, each with the config
        field that asks for it (an ICL context cache: ``cache_storage``); building the router refuses a price
        without one, as the rate would silently count 0. Default: none."""
        return ()

    def side_effects(self) -> tuple[str, ...]:
        """What running this backend again would repeat in the world (tool names); empty: safe to shadow."""
        return ()

    async def probe(self) -> str | None:
        """Check that what this backend reads besides its engine (a Chroma collection) answers now, with no model call
        (``router.health``): raise if not, else say what was checked. ``None`` (default): nothing to check. Blocking
        work that may hang belongs on ``genroute.runtime.threads.on_daemon_thread``: the process's exit joins a hung
        ``asyncio.to_thread``, and a call made while an earlier one hangs shares its thread there."""
        return None

    async def aclose(self) -> None:
        """Release anything the backend holds."""


def produced(backend: Backend, output: Any) -> BackendOutput:
    """``output``, what ``backend.run`` returned, if it is a ``BackendOutput``; else a ``ConfigError`` naming the
    backend's section and the backend (a plugin's entry point and package): a backend that returns its text as a
    ``str``, or ``None``, was an ``AttributeError`` from deep inside the router."""
    if isinstance(output, BackendOutput):
        return output
    raise ConfigError(f"{described(type(backend))} returned {type(output).__name__} from run(), not a "
                      "genroute.backends.base.BackendOutput", field=f"backends.{backend.name}")


def refuse_rerun(name: str, tools: tuple[str, ...], *, role: str, field: str) -> None:
    """``ConfigError`` naming ``field`` if backend ``name``, run as a ``role`` (a shadow, a judge) beside the served
    request, could repeat what its ``tools`` (``Backend.side_effects``) do in the world."""
    if tools:
        raise ConfigError(
            f"backend {name!r} cannot be {role}: its tools {', '.join(tools)} are not declared "
            "side-effect-free (decorate read-only tools with genroute.side_effect_free)", field=field)


class SingleCallBackend(Backend):
    """A backend that makes exactly one engine call, prepared by ``prepare``."""

    @abstractmethod
    async def prepare(self, request: GenerateRequest, ctx: RunContext) -> Prepared:
        """Build the one engine call for this request."""

    async def run(self, request: GenerateRequest, ctx: RunContext) -> BackendOutput:
        return await self.run_prepared(await self.prepare(request, ctx), ctx)

    async def run_prepared(self, prepared: Prepared, ctx: RunContext) -> BackendOutput:
        """Make the prepared call (a subclass may re-send a changed call after a failure)."""
        response = await ctx.generate(self.engine, prepared.model, prepared.contents, prepared.config,
                                      price_as=prepared.price_as)
        try:
            return self._output(prepared, *text_and_reason(response))  # a whole answer: checked to be one
        except BackendUnavailable:  # only text_and_reason raises it: named, as a plugin engine's stream may answer
            raise no_answer(self.engine, "generate") from None

    async def stream(self, request: GenerateRequest, ctx: RunContext) -> AsyncGenerator[str | BackendOutput, None]:
        prepared = await self.prepare(request, ctx)
        async with aclosing(self.stream_prepared(prepared, ctx)) as items:
            async for item in items:
                yield item

    async def stream_prepared(self, prepared: Prepared, ctx: RunContext) -> AsyncGenerator[str | BackendOutput, None]:
        """Stream the prepared call: text deltas, then the final ``BackendOutput``."""
        parts: list[str] = []
        reason = None
        stream = ctx.stream(self.engine, prepared.model, prepared.contents, prepared.config,
                            price_as=prepared.price_as)
        async with aclosing(stream) as responses:  # closed now if our consumer stops early, not by the GC
            async for response in responses:
                delta, chunk_reason = text_and_reason(response, False)
                reason = chunk_reason or reason
                if delta:
                    parts.append(delta)
                    yield delta
        yield self._output(prepared, "".join(parts), reason)

    def _output(self, prepared: Prepared, text: str, reason: str | None) -> BackendOutput:
        return BackendOutput(text=text, model=prepared.model, finish_reason=reason,
                             citations=prepared.citations, no_context=prepared.no_context)


def text_and_reason(response: types.GenerateContentResponse, whole: bool = True) -> tuple[str, str | None]:
    """The first candidate's text (its text parts joined, thought parts excluded) and its finish reason as a
    lower-case string (semconv style); a prompt the provider blocked has no candidate, and its block reason
    (``promptFeedback.blockReason``) is the finish reason.

    A ``whole`` answer (not a stream chunk, which may carry only usage) with neither candidates nor
    ``promptFeedback`` is not an answer (a ``null`` or ``[]`` body, a proxy's own JSON): ``BackendUnavailable``.
    """
    candidates = response.candidates
    if not candidates:
        # Checked here, where an answer without candidates is read anyway: a normal answer pays nothing for it.
        if whole and response.prompt_feedback is None:
            raise BackendUnavailable("malformed response body: an answer with neither candidates nor promptFeedback")
        return "", block_reason(response)
    first = candidates[0]
    reason = None if first.finish_reason is None else reason_name(first.finish_reason)
    content = first.content
    parts = None if content is None else content.parts
    if not parts:
        return "", reason
    if len(parts) == 1:  # the usual answer: one part, nothing to join
        part = parts[0]
        return (part.text if part.text and not part.thought else ""), reason
    return "".join(p.text for p in parts if p.text and not p.thought), reason


def finish_reason(response: types.GenerateContentResponse, whole: bool = True) -> str | None:
    """The first candidate's finish reason as a lower-case string (semconv style); ``whole``: as
    ``text_and_reason``."""
    return text_and_reason(response, whole)[1]
