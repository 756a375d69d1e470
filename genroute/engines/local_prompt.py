"""google-genai request types → a prompt, sampling settings and an optional JSON schema for llama.cpp.

Pure functions (no model needed but for ``tokenize``'s tokenizer), so the translation is testable on its own.

The bundled Gemma 3 270M is a *base* model: it continues text and does not follow the Gemma chat
template (measured: the template produced unrelated text, a ``User:``/``Assistant:`` transcript gave
"The capital of France is Paris."). ``plain`` (the default) renders that transcript; ``gemma`` renders
the chat template for instruction-tuned GGUFs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from genroute.errors import UsageError
from genroute.tools import inline_refs

if TYPE_CHECKING:
    from google.genai import types

PromptFormat = Literal["plain", "gemma"]
#: The Gemma chat template's turn markers (control tokens of its vocabulary).
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
#: In AUTO function-calling mode: ``choose`` lets the model call a function or answer in text (one schema
#: covers both); ``always`` forces a call unless a function result just came back (then text).
AutoCalls = Literal["choose", "always"]

#: llama.cpp takes a seed as an unsigned 32-bit number and reads 2**32 - 1 as "a random seed".
MAX_SEED = 2**32 - 2

#: Gemini's MIME type for an answer that is one value of the schema's enum, written bare.
ENUM_MIME_TYPE = "text/x.enum"

#: The text answer the model may give instead of a call in AUTO mode.
ANSWER_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"answer": {"type": "string"}},
                                 "required": ["answer"], "additionalProperties": False}
#: Shown in AUTO ``choose`` mode: one reply of each kind, with functions that are not on offer (a base model
#: copies the format it is shown; with only instructions the 270M model called a function for everything).
CHOICE_EXAMPLES = (
    '\nReply with {"name": ..., "args": {...}} to call a function, or {"answer": "..."} when no function fits.\n'
    "Examples with other functions:\n"
    'User: Who painted the Mona Lisa?\nAssistant: {"answer": "Leonardo da Vinci."}\n'
    'User: What is the stock price of Apple?\nAssistant: {"name": "get_stock_price", "args": {"symbol": "AAPL"}}'
)


@dataclass(frozen=True)
class Sampling:
    """llama.cpp sampling settings for one call."""

    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    seed: int
    stop: tuple[str, ...] = ()


#: A piece of the prompt and whether it is one of the format's own control tokens (``<start_of_turn>``):
#: only those are tokenized as control tokens; every text (request, document, example) is plain text.
Piece = tuple[str, bool]


@dataclass(frozen=True)
class Prepared:
    """Everything the worker thread needs: the prompt, sampling, and the output constraint."""

    pieces: tuple[Piece, ...]
    sampling: Sampling
    #: JSON schema the output must match (JSON mode or a function call), or ``None`` for free text.
    schema: dict[str, Any] | None = None
    #: The request field ``schema`` comes from, for errors.
    schema_field: str = "config"
    #: MIME type ``text/x.enum``: the output is one of the schema's enum strings, bare (no JSON quotes).
    bare_enum: bool = False
    #: Whether the constrained output is a ``{"name", "args"}`` function call (or, with ``may_answer``,
    #: either that or ``{"answer": text}``).
    function_call: bool = False
    may_answer: bool = False
    #: Added to the log-odds of calling over answering where the model chooses (``may_answer``).
    call_bias: float = 0.0
    function_names: tuple[str, ...] = field(default=())

    @property
    def prompt(self) -> str:
        """The prompt as one string (control tokens written out)."""
        return "".join(text for text, _ in self.pieces)


@dataclass(frozen=True)
class Defaults:
    """Engine-level defaults used where the request leaves a setting unset."""

    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 64
    max_output_tokens: int = 256
    seed: int = 0
    prompt_format: PromptFormat = "plain"
    auto_calls: AutoCalls = "choose"
    call_bias: float = 0.0


def to_json_schema(schema: Any, *, field_name: str) -> dict[str, Any]:
    """A JSON schema from a ``types.Schema``, a dict (OpenAPI-style or JSON Schema) or a pydantic type."""
    from google.genai import types

    if isinstance(schema, types.Schema):
        return schema.json_schema.model_dump(mode="json", exclude_none=True, by_alias=True)
    if isinstance(schema, dict):
        try:  # Gemini's OpenAPI subset ("type": "OBJECT", nullable...) → JSON Schema
            return to_json_schema(types.Schema.model_validate(schema), field_name=field_name)
        except Exception:  # noqa: BLE001 - not that subset: take it as JSON Schema
            return schema
    try:
        from pydantic import TypeAdapter

        return TypeAdapter(schema).json_schema()
    except Exception as exc:  # noqa: BLE001 - anything else is a caller mistake
        raise UsageError(f"cannot turn {schema!r} into a JSON schema: {exc}", field=field_name) from exc


def _declarations(config: types.GenerateContentConfig) -> list[types.FunctionDeclaration]:
    from google.genai import types

    decls: list[types.FunctionDeclaration] = []
    for i, tool in enumerate(config.tools or ()):
        if not isinstance(tool, types.Tool):
            raise UsageError("the local engine takes types.Tool entries with function_declarations",
                             field=f"config.tools[{i}]")
        for j, decl in enumerate(tool.function_declarations or ()):
            if not decl.name:  # the model would be asked to call a function named null
                raise UsageError("a function declaration needs a name",
                                 field=f"config.tools[{i}].function_declarations[{j}].name")
            decls.append(decl)
    return decls


def _parameters_schema(decl: types.FunctionDeclaration) -> dict[str, Any]:
    # Nested under "args" of the call schema, a "#/$defs/..." would point at the call schema's root, where no
    # $defs are: the refs are inlined here (a recursive schema cannot be, and no grammar is built for it).
    for attr in ("parameters_json_schema", "parameters"):
        if getattr(decl, attr) is not None:
            field = f"tools.{decl.name}.{attr}"
            try:
                return inline_refs(to_json_schema(getattr(decl, attr), field_name=field))
            except (ValueError, KeyError) as exc:
                raise UsageError(f"cannot use this schema in the local engine's grammar: {exc}",
                                 field=field) from None
    return {"type": "object", "properties": {}}


def function_call_schema(decls: list[types.FunctionDeclaration]) -> dict[str, Any]:
    """``{"name": <const>, "args": <parameters>}`` for each function, as a ``oneOf``.

    A ``oneOf`` keyed by a ``const`` name ties the arguments to the chosen function, so the grammar
    only admits valid calls (an enum name with free-form args let the model mix up arguments).
    """
    options = [
        {"type": "object", "properties": {"name": {"const": d.name}, "args": _parameters_schema(d)},
         "required": ["name", "args"], "additionalProperties": False}
        for d in decls
    ]
    return options[0] if len(options) == 1 else {"oneOf": options}


def _describe(decl: types.FunctionDeclaration) -> str:
    params = _parameters_schema(decl).get("properties", {})
    args = ", ".join(f'"{k}": {v.get("type", "value")}' for k, v in params.items())
    about = f": {decl.description}" if decl.description else ""
    return f"- {decl.name}{about}. Arguments: {{{args}}}"


def _part_text(part: types.Part, turn: int, index: int) -> str:
    """``part`` (``contents[turn].parts[index]``) as prompt text."""
    # Media first: a part holding text and audio alike would otherwise lose its audio without a word.
    media = part.inline_data if part.inline_data is not None else part.file_data
    if media is not None:
        kind = "inline_data" if part.inline_data is not None else "file_data"
        raise UsageError(f"the local engine reads text only, not {media.mime_type or 'media'} (send audio, images, "
                         f"video and files to a Gemini engine)", field=f"contents[{turn}].parts[{index}].{kind}")
    if part.text is not None:
        return part.text
    if part.function_call is not None:
        return "Function call: " + json.dumps({"name": part.function_call.name, "args": part.function_call.args or {}})
    if part.function_response is not None:
        result = json.dumps(part.function_response.response or {}, default=str)
        return f"Function result ({part.function_response.name}): {result}"
    raise UsageError("the local engine handles text, function_call and function_response parts only",
                     field=f"contents[{turn}].parts[{index}]")


def _system_text(config: types.GenerateContentConfig) -> str:
    from google.genai import types

    system = config.system_instruction
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    parts = (system.parts or []) if isinstance(system, types.Content) else \
        system if isinstance(system, list) else [system]
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, types.Part) and _text_only(part):
            texts.append(part.text or "")
        else:  # a file or an image (a types.File, or a part holding one): the local model reads text only
            raise UsageError("the local engine takes a system instruction of text", field="config.system_instruction")
    return "\n".join(t for t in texts if t) if isinstance(system, types.Content) else "\n".join(texts)


def _text_only(part: types.Part) -> bool:
    """Whether ``part`` holds text or nothing: no image, file or call, which a system instruction would drop."""
    return not part.model_dump(exclude_none=True).keys() - {"text", "thought", "thought_signature"}


def render(contents: list[types.Content], config: types.GenerateContentConfig, fmt: PromptFormat,
           tools_text: str, answer_label: str) -> tuple[tuple[Piece, ...], tuple[str, ...]]:
    """The prompt's pieces and the stop sequences that end the model's turn."""
    preamble = "\n\n".join(t for t in (_system_text(config), tools_text) if t)
    turns = [(c.role or "user", "\n".join(_part_text(p, i, j) for j, p in enumerate(c.parts or ())))
             for i, c in enumerate(contents)]
    if fmt == "gemma":
        pieces: list[Piece] = []
        for i, (role, text) in enumerate(turns):
            head = f"{'model' if role == 'model' else 'user'}\n"
            if i == 0 and preamble:  # whatever the first turn's role: system text and functions must reach the model
                head += f"{preamble}\n\n"
            pieces += [(START_OF_TURN, True), (head + text, False), (END_OF_TURN, True), ("\n", False)]
        return (*pieces, (START_OF_TURN, True), ("model\n", False)), (END_OF_TURN,)
    lines = [preamble + "\n"] if preamble else []
    lines += [f"{'Assistant' if r == 'model' else 'User'}: {t}" for r, t in turns]
    # A base model keeps writing the transcript: stop where it starts the next turn.
    return (("\n".join(lines) + f"\n{answer_label}:", False),), ("\nUser:", "\nAssistant:", "\nFunction result")


def tokenize(llm: Any, pieces: tuple[Piece, ...], *, bos: bool = True) -> list[int]:
    """The token ids of ``pieces`` (after BOS if ``bos``) with ``llm``'s tokenizer. Only the format's own markers
    become control tokens: a request, document or example that writes ``<start_of_turn>`` or ``<eos>`` reaches
    the model as those characters, never as the token (the same split llama.cpp makes around special tokens)."""
    tokens: list[int] = []
    for i, (text, control) in enumerate(pieces):
        tokens += llm.tokenize(text.encode("utf-8"), add_bos=bos and i == 0, special=control)
    return tokens


def _call_mode(config: types.GenerateContentConfig, contents: list[types.Content],
               auto_calls: AutoCalls) -> Literal["call", "choose", "text"]:
    """Whether the output must be a call, may be a call or a text answer, or must be text."""
    from google.genai import types

    fc = config.tool_config.function_calling_config if config.tool_config else None
    mode = fc.mode if fc and fc.mode else types.FunctionCallingConfigMode.AUTO
    if mode == types.FunctionCallingConfigMode.NONE:
        return "text"
    if mode in (types.FunctionCallingConfigMode.ANY, types.FunctionCallingConfigMode.VALIDATED):
        return "call"
    if auto_calls == "choose":
        return "choose"
    # ``always``: call unless a function result just came back — then answer in text, ending the loop.
    return "text" if _after_result(contents) else "call"


def _after_result(contents: list[types.Content]) -> bool:
    """Whether a function result just came back (the last turn carries one)."""
    last = contents[-1] if contents else None
    return bool(last and any(p.function_response is not None for p in last.parts or ()))


#: Why the local engine refuses a safety setting that would block (``blocks``).
NO_SAFETY_FILTER = "the local engine has no safety filter: a safety setting can only be OFF or BLOCK_NONE here"
#: Why it refuses a ``thinking_config``: a budget it would silently not spend.
NO_THINKING = "the local model does not think: a thinking_config is for Gemini 2.5 models"


def blocks(setting: types.SafetySetting | Any) -> bool:
    """Whether ``setting`` asks for content to be blocked (any threshold but OFF and BLOCK_NONE)."""
    threshold = setting.threshold
    return threshold is not None and getattr(threshold, "value", threshold) not in ("OFF", "BLOCK_NONE")


def check_sampling(config: types.GenerateContentConfig) -> None:
    """Refuse sampling settings out of genroute's bounds (``SamplingSettings``): a direct call, or a backend built
    in code, reaches the engine without a ``generation`` config's check."""
    from pydantic import ValidationError

    from genroute.config_errors import config_error, pydantic_validated
    from genroute.engines.base import SamplingSettings

    try:
        pydantic_validated(SamplingSettings, {
            "temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k,
            "max_output_tokens": config.max_output_tokens, "stop_sequences": tuple(config.stop_sequences or ())})
    except ValidationError as exc:
        error = config_error(exc, "config")
        raise UsageError(error.message, field=error.field) from None


def prepare(contents: list[types.Content], config: types.GenerateContentConfig | None,
            defaults: Defaults) -> Prepared:
    """Translate one request; raises ``UsageError`` for settings the local engine cannot honour."""
    from google.genai import types

    config = config or types.GenerateContentConfig()
    if not contents:
        raise UsageError("must not be empty", field="contents")
    if config.candidate_count not in (None, 1):
        raise UsageError("the local engine produces one candidate", field="config.candidate_count")
    if any(blocks(setting) for setting in config.safety_settings or ()):
        # Sent on as if honoured, a Gemini filter the application relies on would be dropped without a word.
        raise UsageError(NO_SAFETY_FILTER, field="config.safety_settings")
    if config.thinking_config is not None:
        raise UsageError(NO_THINKING, field="config.thinking_config")
    check_sampling(config)
    if config.response_mime_type not in (None, "text/plain", "application/json", ENUM_MIME_TYPE):
        raise UsageError(f"the local engine writes text/plain, application/json or {ENUM_MIME_TYPE}, not "
                         f"{config.response_mime_type!r}", field="config.response_mime_type")
    schema_given = config.response_schema is not None or config.response_json_schema is not None
    if config.response_mime_type == "text/plain" and schema_given:
        # Gemini takes a schema only with a JSON or enum answer; a schema here would make the answer JSON.
        raise UsageError("a response schema needs application/json or text/x.enum, not text/plain",
                         field="config.response_mime_type")
    if config.seed is not None and not 0 <= config.seed <= MAX_SEED:  # -1 would sample with a random seed
        raise UsageError(f"the local engine takes a seed from 0 to {MAX_SEED}", field="config.seed")
    decls = _declarations(config)
    fc = config.tool_config.function_calling_config if config.tool_config else None
    if fc and fc.allowed_function_names:
        decls = [d for d in decls if d.name in fc.allowed_function_names]
    schema: dict[str, Any] | None = None
    mode = _call_mode(config, contents, defaults.auto_calls) if decls else "text"
    call = mode != "text"
    tools_text = ""
    if decls:
        tools_text = "Available functions:\n" + "\n".join(_describe(d) for d in decls)
    schema_field = "config.tools" if call else "config.response_mime_type"
    if mode == "choose":
        tools_text += CHOICE_EXAMPLES
        calls = function_call_schema(decls)
        schema = {"anyOf": [*calls.get("oneOf", [calls]), ANSWER_SCHEMA]}
    elif call:
        schema = function_call_schema(decls)
    elif config.response_json_schema is not None:
        schema_field = "config.response_json_schema"
        schema = to_json_schema(config.response_json_schema, field_name=schema_field)
    elif config.response_schema is not None:
        schema_field = "config.response_schema"
        schema = to_json_schema(config.response_schema, field_name=schema_field)
    elif config.response_mime_type == "application/json":
        schema = {}  # any JSON value
    bare_enum = not call and config.response_mime_type == ENUM_MIME_TYPE
    if bare_enum and schema is None:
        raise UsageError(f"{ENUM_MIME_TYPE} needs a response_schema listing the values", field="config.response_schema")
    pieces, format_stops = render(contents, config, defaults.prompt_format, tools_text,
                                  "Function call" if mode == "call" else "Assistant")
    # Under a schema the grammar decides where the output ends, and any stop sequence (the caller's, or a
    # turn marker) can occur inside valid JSON: JSON allows newlines between tokens and any text in
    # strings, so a backend's stop "\n" cut function calls short (MALFORMED_FUNCTION_CALL). Stops are
    # for free text only.
    sampling = Sampling(
        temperature=defaults.temperature if config.temperature is None else config.temperature,
        top_p=defaults.top_p if config.top_p is None else config.top_p,
        top_k=defaults.top_k if config.top_k is None else int(config.top_k),
        max_tokens=defaults.max_output_tokens if config.max_output_tokens is None else config.max_output_tokens,
        seed=defaults.seed if config.seed is None else config.seed,
        stop=() if schema is not None else tuple(config.stop_sequences or ()) + format_stops,
    )
    return Prepared(pieces=pieces, sampling=sampling, schema=schema, schema_field=schema_field, bare_enum=bare_enum,
                    function_call=call,
                    may_answer=mode == "choose", call_bias=0.0 if _after_result(contents) else defaults.call_bias,
                    function_names=tuple(d.name for d in decls if d.name))
