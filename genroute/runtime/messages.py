"""What a model was sent and answered, as the GenAI semantic conventions' message JSON.

``gen_ai.input.messages``, ``gen_ai.system_instructions`` and ``gen_ai.output.messages`` (Opt-In attributes of
an inference span) must follow the conventions' JSON schemas: messages of ``{"role", "parts"}``, each part typed
(``text``, ``tool_call``, ``tool_call_response``, ``reasoning``, ``blob``, ``uri``). Only content capture calls
this module: with capture off none of it runs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from genroute.runtime.telemetry import reason_name

if TYPE_CHECKING:
    from google.genai import types

#: Gemini's roles as the conventions name them (a turn of tool results is the ``tool``'s).
_ROLES = {"model": "assistant", "user": "user"}


def request_attributes(contents: list[types.Content] | str, config: types.GenerateContentConfig | None
                       ) -> dict[str, str]:
    """``gen_ai.input.messages`` for ``contents`` as sent, and ``gen_ai.system_instructions`` if the config has
    any (RAG context and ICL examples included, wherever the backend put them)."""
    try:
        attrs = {"gen_ai.input.messages": _json(input_messages(contents))}
        system = None if config is None else config.system_instruction
        if system is not None:
            attrs["gen_ai.system_instructions"] = _json(_parts(_system_parts(system)))
    except Exception:  # content capture must never break a request
        return {}
    return attrs


def input_messages(contents: list[types.Content] | str) -> list[dict[str, Any]]:
    """The turns sent to a model, as input messages."""
    if isinstance(contents, str):
        return [{"role": "user", "parts": [_text(contents)]}]
    return [_message(content) for content in contents]


def output_messages(candidates: Sequence[types.Candidate] | None) -> str:
    """A response's candidates as ``gen_ai.output.messages`` JSON (adjacent text parts joined: a stream's
    chunks are one answer)."""
    try:
        return _json([{"role": "assistant",
                       "parts": _parts(c.content.parts if c.content is not None else None, join=True),
                       "finish_reason": reason_name(c.finish_reason) if c.finish_reason is not None else ""}
                      for c in candidates or ()])
    except Exception:  # content capture must never break a request
        return "[]"


def _message(content: types.Content) -> dict[str, Any]:
    parts = content.parts or []
    if parts and all(p.function_response is not None for p in parts):
        role = "tool"
    else:
        role = _ROLES.get(content.role or "user", content.role or "user")
    return {"role": role, "parts": _parts(parts)}


def _system_parts(system: Any) -> list[Any]:
    """A ``system_instruction`` (a str, a Part, a Content, or a list of str and Parts) as a list of parts."""
    if isinstance(system, list):
        return system
    if hasattr(system, "role"):  # a Content
        return system.parts or []
    return [system]


def _parts(parts: Sequence[Any] | None, *, join: bool = False) -> list[dict[str, Any]]:
    """``parts`` converted; with ``join``, adjacent text (or reasoning) parts as one (a stream's chunks)."""
    out: list[dict[str, Any]] = []
    for part in parts or ():
        converted = _part(part)
        last = out[-1] if join and out else None
        if last is not None and converted["type"] == last["type"] in ("text", "reasoning"):
            last["content"] += converted["content"]
        else:
            out.append(converted)
    return out


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "content": text}


def _part(part: Any) -> dict[str, Any]:
    """One part (an SDK ``Part``, or the ``str`` a system instruction may be) in the conventions' shape."""
    if isinstance(part, str):
        return _text(part)
    if part.text is not None:
        return {"type": "reasoning", "content": part.text} if part.thought else _text(part.text)
    if (call := part.function_call) is not None:
        return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.args}
    if (result := part.function_response) is not None:
        return {"type": "tool_call_response", "id": result.id, "response": result.response}
    if (blob := part.inline_data) is not None:
        return {"type": "blob", "mime_type": blob.mime_type, "modality": _modality(blob.mime_type),
                "content": base64.b64encode(blob.data or b"").decode("ascii")}
    if (file := part.file_data) is not None:
        return {"type": "uri", "mime_type": file.mime_type, "modality": _modality(file.mime_type),
                "uri": file.file_uri}
    # Anything else (executable code, its result, …) by its own field name, as the schema's generic part.
    fields = part.model_dump(exclude_none=True, mode="json")
    kind = next(iter(fields), "unknown")
    return {"type": kind, **fields}


def _modality(mime_type: str | None) -> str:
    kind = (mime_type or "").split("/", 1)[0]
    return kind if kind in ("image", "video", "audio") else "file"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
