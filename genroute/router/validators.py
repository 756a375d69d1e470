"""Answer validators a rung can require; a failing validator makes the executor try the next rung."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

from genroute.backends.base import BackendOutput
from genroute.errors import ConfigError
from genroute.types import GenerateRequest

#: A validator returns ``None`` when the answer is acceptable, otherwise the reason it is not.
Validator = Callable[[GenerateRequest, BackendOutput], "str | None"]


def nonempty(request: GenerateRequest, output: BackendOutput) -> str | None:
    """The answer has some non-whitespace text."""
    return None if output.text.strip() or output.tool_calls else "empty answer"


def is_json(request: GenerateRequest, output: BackendOutput) -> str | None:
    """The answer parses as JSON."""
    try:
        json.loads(output.text)
    except ValueError as exc:
        return f"answer is not JSON: {exc}"
    return None


def has_context(request: GenerateRequest, output: BackendOutput) -> str | None:
    """Retrieval found relevant context for the answer."""
    return "retrieval found nothing relevant" if output.no_context else None


BUILTIN: dict[str, Validator] = {"nonempty": nonempty, "json": is_json, "has_context": has_context}


def resolve(name: str, custom: Mapping[str, Validator], *, field: str) -> Validator:
    """The validator called ``name``: custom, built-in, or ``regex:<pattern>``."""
    if name in custom:
        return custom[name]
    if name in BUILTIN:
        return BUILTIN[name]
    if name.startswith("regex:"):
        try:
            pattern = re.compile(name.removeprefix("regex:"))
        except re.error as exc:
            raise ConfigError(f"invalid regex: {exc}", field=field) from None
        return lambda _request, output: None if pattern.search(output.text) else f"answer does not match {pattern.pattern!r}"
    known = ", ".join(sorted({*BUILTIN, *custom})) + ", regex:<pattern>"
    raise ConfigError(f"unknown validator {name!r} (known: {known})", field=field)
