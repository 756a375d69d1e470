"""Public request, result and decision types (pydantic v2, frozen)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypedDict

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from genroute.construct import builder, user_content
from genroute.public_model import PublicModel

if TYPE_CHECKING:
    from google.genai import types


class _Frozen(PublicModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GenerationFields(PublicModel):
    """The sampling and output settings of one model call, within the bounds genroute accepts: one definition for a
    backend's ``generation`` config (``GenerationSettings``), the local engine's check of a direct call
    (``SamplingSettings``) and a request's override (``RequestGeneration``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _no_empty_stop(cls, stops: tuple[str, ...]) -> tuple[str, ...]:
        if "" in stops:  # it matches before the first character: every answer would come back empty
            raise ValueError("a stop sequence must not be empty")
        return stops


class RequestGeneration(GenerationFields, _Frozen):
    """A request's own generation settings: each field given replaces the chosen backend's (its ``generation``) for
    this request only, on every rung, shadow and challenger; a field not given keeps the backend's. A given
    ``stop_sequences`` replaces the backend's list (``()``: none); ``None`` for a number is the provider's default."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)

    def given(self) -> dict[str, Any]:
        """The fields the caller set, as ``GenerateContentConfig`` names them (the same names)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class Turn(PublicModel):
    """One earlier turn of a conversation: what the user said (``user``) or the model answered (``model``), as
    google-genai's ``Content(role=..., parts=[Part(text=...)])`` sends it in ``contents``."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    role: Literal["user", "model"]
    #: Not empty; a lone surrogate (no UTF-8 text) is refused by pydantic's own str check.
    text: str = Field(min_length=1)


def with_history(history: Sequence[Turn], contents: list[types.Content] | str) -> list[types.Content]:
    """``history``'s turns, then ``contents`` (the turns a backend built, or one user turn of a ``str``): what
    google-genai sends for a chat's earlier turns followed by the new ones."""
    from google.genai import types

    turns = [types.Content(role=turn.role, parts=[types.Part(text=turn.text)]) for turn in history]
    return [*turns, user_content(contents)] if isinstance(contents, str) else [*turns, *contents]


class GenerateRequest(_Frozen):
    """One request to the router."""

    # hide_input: printing refused metadata (a shared-reference bomb) would write it out after all.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    input: str = Field(min_length=1, description="The user's input text.")
    task: str | None = Field(default=None, description="Task name policies and templates key on.")
    backend: str | None = Field(default=None, description="Run this backend alone: the policy is skipped, and with it "
                                "its validators, fallback rungs and shadows (docs/requests.md).")
    variables: dict[str, Any] = Field(default_factory=dict, description="Template variables.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form routing metadata.")
    key: str | None = Field(default=None, description="Stable request key (A/B splits, budgets, tenants).")
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="Per-request deadline in seconds.")
    generation: RequestGeneration | None = Field(default=None, description="Generation settings over the chosen "
                                                 "backend's, for this request only (temperature, max_output_tokens...).")
    history: list[Turn] | None = Field(default=None, description="The conversation's earlier turns, oldest first, "
                                       "sent before the chosen backend's prompt (whichever backend it is).")

    def __hash__(self) -> int:
        # Frozen, so hashable (a cache key, a set member); its dict fields are not, and are left out: equal
        # requests still hash alike.
        return hash((self.input, self.task, self.backend, self.key, self.timeout_s))

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must not be blank")
        return value

    @field_validator("generation")
    @classmethod
    def _settings_given(cls, value: RequestGeneration | None) -> RequestGeneration | None:
        # `generation={}` gives nothing: the request is one without settings of its own (nothing copied per call,
        # no extra hold, no `generation` in its outcome record).
        return value if value is None or value.model_fields_set else None

    @field_validator("history")
    @classmethod
    def _no_empty_history(cls, value: list[Turn] | None) -> list[Turn] | None:
        # `history=[]` is no conversation yet: the request is the one turn it was (nothing prepended, recorded, held).
        return value or None

    @field_validator("timeout_s", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        # To pydantic's lax mode True is 1.0 s and "5" is 5.0 s; to a caller neither is a deadline (a flag or a
        # text passed where the seconds go), as Router.drain's and feedback's numbers refuse them.
        if isinstance(value, bool | str | bytes):
            raise ValueError(f"must be a number of seconds > 0, not {type(value).__name__} {value!r:.40}")
        return value

    @field_validator("task", "backend", "key", "variables", "metadata")
    @classmethod
    def _valid_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        # Templates put these into prompts and spans: a lone surrogate would fail later, at the provider
        # or the exporter, without naming the field.
        if isinstance(value, dict):
            # Templates write these out on the event loop: shared references must not multiply them unbounded.
            from genroute.bounds import REQUEST, check

            check(value, field="", limits=REQUEST)
        where = invalid_text(value, info.field_name or "")
        if where is not None:
            raise ValueError(f"{where} is not valid Unicode text (it holds a lone surrogate)")
        return value


class RequestFields(TypedDict, total=False):
    """``GenerateRequest``'s fields as keywords of ``Router.generate`` and its twins (``**fields``), so that a type
    checker catches a misspelt or mistyped one."""

    input: str
    task: str | None
    backend: str | None
    variables: dict[str, Any]
    metadata: dict[str, Any]
    key: str | None
    timeout_s: float | None
    #: Wider than the request's field, as history: a dict of settings (``{"temperature": 0}``) validates too.
    generation: RequestGeneration | Mapping[str, Any] | None
    #: Wider than the request's field: turns as a chat app keeps them (``{"role": "user", "text": ...}`` dicts, in a
    #: list or a tuple) type-check as they validate, into ``Turn``s.
    history: Sequence[Turn | Mapping[str, str]] | None


#: What ``Router.generate`` and its twins take first: the input text, a whole request, or nothing (``input=`` then).
RequestInput = str | GenerateRequest | None


def invalid_text(value: Any, path: str) -> str | None:
    """The path of the first string in ``value`` that cannot be encoded as UTF-8, else ``None``."""
    stack, seen = [(value, path)], set()
    while stack:  # a loop, not recursion: metadata may be deeply nested or even hold itself
        item, where = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return where
        elif isinstance(item, dict | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            if isinstance(item, dict):
                for key, inner in item.items():
                    stack += [(inner, f"{where}[{key!r}]"), (key, f"{where}[{key!r}] (its key)")]
            else:
                stack += [(inner, f"{where}[{index}]") for index, inner in enumerate(item)]
    return None


class Usage(_Frozen):
    """Token counts summed over every model call a request made."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    #: Thought tokens (Gemini's ``thoughtsTokenCount``), apart from ``output_tokens`` and billed at the output rate.
    thinking_tokens: int = 0
    #: The audio part of ``input_tokens`` (cached audio included) and of ``cached_input_tokens``, as the provider
    #: split them by modality: priced at the model's audio rates where it has them.
    audio_input_tokens: int = 0
    cached_audio_input_tokens: int = 0
    #: The audio part of ``output_tokens`` (a speech or native-audio model's answer), as the provider split it by
    #: modality: priced at the model's ``audio_output`` rate where it has one.
    audio_output_tokens: int = 0

    @property
    def billed_output_tokens(self) -> int:
        """Output tokens as billed: the answer's and the thoughts' (``gen_ai.usage.output_tokens`` on a span)."""
        return self.output_tokens + self.thinking_tokens

    @property
    def is_zero(self) -> bool:
        """Whether no token of any kind was counted."""
        return not (self.input_tokens or self.output_tokens or self.cached_input_tokens or self.thinking_tokens)

    def __add__(self, other: Usage) -> Usage:
        # Most sums add a zero (a rung or a call that spent nothing): frozen, so either side can be the sum.
        if other.is_zero:
            return self
        if self.is_zero:
            return other
        return built_usage(  # sums of ints
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            thinking_tokens=self.thinking_tokens + other.thinking_tokens,
            audio_input_tokens=self.audio_input_tokens + other.audio_input_tokens,
            cached_audio_input_tokens=self.cached_audio_input_tokens + other.cached_audio_input_tokens,
            audio_output_tokens=self.audio_output_tokens + other.audio_output_tokens,
        )


#: Usage is frozen: the one zero every rung, ledger and sum that has not spent anything yet starts from.
NO_USAGE = Usage()


#: ``Usage`` from counts already checked (ints), built without validating them again (``genroute.construct``).
built_usage = builder(Usage)


class Citation(_Frozen):
    """A retrieved chunk an answer was grounded on: where it is (``source``; ``start``/``end``, character offsets
    for chunks ``genroute ingest`` stored: into a text or Markdown file as it is, a JSONL record's text (the record
    ``doc_id`` names) or a PDF page's extracted text (``section``)) and how close it was (``score``)."""

    chunk_id: str
    source: str
    score: float
    title: str | None = None
    #: The document's own id (a JSONL record's ``id``), its Markdown section or PDF page, and its offsets.
    doc_id: str | None = None
    section: str | None = None
    start: int | None = None
    end: int | None = None


class ToolCall(_Frozen):
    """One tool call made during a function-calling loop."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    outcome: Literal["ok", "error", "timeout", "invalid_args", "not_allowed"] = "ok"
    result: Any = None
    error: str | None = None
    call_id: str | None = None

    def __hash__(self) -> int:
        # ``args`` and a JSON ``result`` are dicts or lists: left out, so a result that made tool calls (and its
        # decision record) can be hashed as every other frozen result can.
        return hash((self.name, self.outcome, self.error, self.call_id))


class Rung(_Frozen):
    """One step of a decision: a backend and the validators its answer must pass to be accepted."""

    #: A backend's name, as a config's ``backends`` names it: never empty.
    backend: str = Field(min_length=1)
    validators: tuple[str, ...] = ()
    fall_through_on_rejected: bool = False


class Decision(_Frozen):
    """What a policy decided: ordered rungs, why, and backends to shadow."""

    policy: str
    rungs: tuple[Rung, ...] = Field(min_length=1)
    reason: str
    shadow: tuple[str, ...] = ()
    shadow_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    shadow_rates: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict, description="A shadow's own rate, over `shadow_rate` (a challenger's share).")
    budget_key: str | None = None
    cost_usd: float = Field(default=0.0, ge=0.0, description="What deciding cost (a semantic or learned policy "
                            "embeds the request), set by ``Router.decide``; a request's is in its result's cost.")
    cost_estimated: bool = Field(default=False, description="Part of ``cost_usd`` is genroute's estimate.")
    explore: Literal["explored", "exploited", "outside_share"] | None = Field(
        default=None, description="What an `explore` policy did: its draw picked another backend (run first), kept "
        "the nested policy's, or the request was outside its share (no draw); None without one.")

    def __hash__(self) -> int:
        # ``shadow_rates`` is a dict: hashed as its items, so a decision stays hashable as every frozen model is.
        return hash(tuple((key, tuple(sorted(value.items())) if isinstance(value, dict) else value)
                          for key, value in self.__dict__.items()))

    @classmethod
    def single(cls, policy: str, backend: str, reason: str, **kwargs: Any) -> Decision:
        """A decision with one rung."""
        return cls(policy=policy, rungs=(Rung(backend=backend),), reason=reason, **kwargs)


class RungAttempt(_Frozen):
    """How one rung went: its outcome, latency and cost (a failed or cancelled rung's too)."""

    backend: str
    outcome: Literal["ok", "error", "rejected_by_validator", "skipped", "cancelled"]
    error_type: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    cost_usd: float = 0.0
    usage: Usage = Usage()
    cost_estimated: bool = Field(default=False, description="Part of the cost is genroute's estimate, not "
                                 "the provider's final usage (a call timed out, was cancelled or cut short).")
    tool_calls: tuple[ToolCall, ...] = Field(default=(), description="Tool calls a failed rung made before it "
                                             "failed (their side effects happened even if another rung answered).")


class DecisionRecord(_Frozen):
    """The decision as carried out: the policy's reason plus every rung tried."""

    policy: str
    reason: str
    rungs_tried: tuple[RungAttempt, ...] = ()
    shadow: tuple[str, ...] = ()


class GenerateResult(_Frozen):
    """The answer to a request, with what it cost and how it was decided."""

    text: str
    backend: str
    model: str
    usage: Usage = Usage()
    cost_usd: float = Field(default=0.0, description="USD over every rung tried, failed ones included.")
    cost_estimated: bool = Field(default=False, description="Part of ``cost_usd`` is genroute's estimate: some "
                                 "call timed out, was cancelled or cut short before the provider reported usage.")
    cache_storage_cost_usd: float = Field(default=0.0, description="Part of ``cost_usd``: context-cache storage "
                                          "this request paid for (tokens x TTL hours) when it created a cache.")
    cloud_equivalent_cost_usd: float | None = None
    latency_s: float = 0.0
    time_to_first_token_s: float | None = None
    finish_reason: str | None = None
    decision: DecisionRecord
    citations: tuple[Citation, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    trace_id: str | None = None
    #: What ``Router.feedback`` takes: the trace id, or (untraced) a random id; set when outcomes are recorded.
    outcome_id: str | None = None


class GenerateChunk(_Frozen):
    """A piece of a streamed answer; the last chunk has ``done=True`` and carries the full result."""

    text: str = ""
    done: bool = False
    result: GenerateResult | None = None
