"""An inference span's starting attributes: the call's own, the request's settings as the GenAI semantic
conventions name them (``gen_ai.request.*``, ``gen_ai.output.type``), and whether it streams.

Only the settings a ``GenerateContentConfig`` sets are looked at, and the call's attributes are copied only when one
is added: built on every engine call (``RunContext.generate``/``stream``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.genai import types


def span_attributes(attrs: dict[str, Any], config: types.GenerateContentConfig | None, *,
                    stream: bool = False) -> dict[str, Any]:
    """An inference span's starting attributes: the call's own, the request's settings, streaming."""
    span_attrs = attrs
    if config is not None:
        fields = config.model_fields_set  # only what the config sets is looked at
        for key in fields & _SETTING_KEYS:
            value = getattr(config, key)
            if value is not None:
                if span_attrs is attrs:
                    span_attrs = dict(attrs)
                span_attrs[_REQUEST_SETTINGS[key]] = value
        if "response_mime_type" in fields:
            output_type = _output_type(config.response_mime_type)
            if output_type is not None:
                span_attrs = {**span_attrs, "gen_ai.output.type": output_type}
    if stream:
        span_attrs = {**span_attrs, "genroute.stream": True}
    return span_attrs


_REQUEST_SETTINGS = {"temperature": "gen_ai.request.temperature", "max_output_tokens": "gen_ai.request.max_tokens",
                     "top_p": "gen_ai.request.top_p", "top_k": "gen_ai.request.top_k",
                     "seed": "gen_ai.request.seed", "stop_sequences": "gen_ai.request.stop_sequences"}
_SETTING_KEYS = frozenset(_REQUEST_SETTINGS)


def _output_type(mime_type: str | None) -> str | None:
    """``gen_ai.output.type`` for a requested response MIME type (None: not a type the conventions name)."""
    if mime_type == "application/json":
        return "json"
    return "text" if mime_type is not None and mime_type.startswith("text/") else None
