"""pydantic's validation errors as one ``ConfigError`` naming the field, with the same wording everywhere."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from genroute.errors import ConfigError


def config_error(exc: ValidationError, prefix: str | None, *, tagged: bool = False,
                 unions: tuple[str, ...] = ()) -> ConfigError:
    """A ``ConfigError`` naming the first invalid field of ``exc`` (and counting the rest), under ``prefix``.

    pydantic names the member of a union tagged by ``kind`` in an error's location, which is no key of the config:
    ``tagged`` says ``exc`` is from such a union (``validators.v.json_schema.schema``), and ``unions`` names the
    fields holding one (``state.redis.url`` is the config's ``state.url``)."""
    errors = exc.errors()
    # A misspelt key (`modle:`) is an unknown key and a missing one: name the key as written, not "model: required".
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # pydantic reports a bad mapping key as a location part "[key]": the field is the mapping entry itself...
    parts = [part for part in first["loc"] if part != "[key]"]
    message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own ValueError
    if first["type"] == "too_short" and isinstance(first["input"], str):  # a secret (api_key: ""): not "1 item"
        least = (first.get("ctx") or {}).get("min_length", 1)
        message = f"String should have at least {least} character{'s' if least != 1 else ''}"
    if "[key]" in first["loc"] and not (isinstance(first["input"], str) and first["input"]):
        # ...unless the key is no name to show: pydantic writes YAML's `on:` (True) as `1`, and "" as nothing.
        parts = list(first["loc"][:first["loc"].index("[key]") - 1])
        message = _name_message(first["input"])
    if len(parts) > 2 and parts[0] in unions:
        del parts[1]
    elif tagged and len(parts) > 1:
        del parts[0]
    loc = ".".join(str(part) for part in parts)
    # A model validator (which checks fields together) names the one at fault on its error, if it can.
    culprit = getattr((first.get("ctx") or {}).get("error"), "field", None)
    field = ".".join(p for p in (prefix, loc, culprit) if isinstance(p, str) and p) or None
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return ConfigError(f"{message}{more}", field=field)


def _name_message(key: Any) -> str:
    """Why ``key`` cannot name an entry (an engine, a backend...)."""
    if key == "":
        return "a name cannot be empty"
    return (f"names are strings, not {type(key).__name__} ({key!r}): YAML reads unquoted on, off, yes, no, true, "
            "false, null and numbers as such, so quote the name")
