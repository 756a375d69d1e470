"""pydantic's validation errors as one ``ConfigError`` (or ``UsageError``) naming the field, with the same wording
everywhere; ``check_list``, the same check of a list of genroute objects a caller gives in code; and
``pydantic_validated``, a model's validation that raises pydantic's own error, for readers that word it themselves."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from genroute.errors import ConfigError, UsageError, without_secrets

T = TypeVar("T")
U = TypeVar("U", bound=UsageError)


def validator_message(error: Any) -> str:
    """A pydantic error's message, without the "Value error, " pydantic puts before a validator's own ValueError
    (a check of ours: its message says it all)."""
    return str(error["msg"]).removeprefix("Value error, ")


#: How pydantic names a validator function in an error's location (``function-after[_positive(), float]``).
_VALIDATOR = re.compile(r"function-(after|before|wrap|plain)\[.*\]")


def error_at(error: Any) -> str:
    """Where a pydantic ``error`` is, as a dotted key (``outcomes.b.score``; ``""``: the input as a whole), without
    the validator functions pydantic names in a location (``function-after[...]``), which are no key (a key that
    only starts like one, a backend named ``function-calling``, stays)."""
    return ".".join(str(part) for part in error["loc"] if not _VALIDATOR.fullmatch(str(part)))


def not_a(where: str, what: str, error: Any) -> str:
    """``WHERE: not WHAT (KEY: message)``: a line of a file (``results.jsonl:3``) that is no ``what`` (``a results
    row``), naming the key at fault: pydantic's message alone (``Input should be a valid string``) does not say which."""
    at = error_at(error)
    return f"{where}: not {what} ({at + ': ' if at else ''}{error['msg']})"


def config_error(exc: ValidationError, prefix: str | None, *, tagged: bool = False,
                 unions: tuple[str, ...] = ()) -> ConfigError:
    """A ``ConfigError`` naming the first invalid field of ``exc`` (and the rest, up to five), under ``prefix`` (see
    ``field_error``)."""
    return field_error(exc, prefix, ConfigError, tagged=tagged, unions=unions)


def field_error(exc: ValidationError, prefix: str | None, kind: type[U], *, tagged: bool = False,
                unions: tuple[str, ...] = ()) -> U:
    """A ``kind`` error naming the first invalid field of ``exc`` (and the rest, up to five), under ``prefix``; text
    shaped like a secret is masked in its message (a validator's message may quote the value).

    pydantic names the member of a union tagged by ``kind`` in an error's location, which is no key of the config:
    ``tagged`` says ``exc`` is from such a union (``validators.v.json_schema.schema``), and ``unions`` names the
    fields holding one (``state.redis.url`` is the config's ``state.url``)."""
    errors = exc.errors()
    locs = [_without_members(e["loc"], errors) for e in errors]
    # A misspelt key (`modle:`) is an unknown key and a missing one: name the key as written, not "model: required".
    at = next((i for i, e in enumerate(errors) if e["type"] == "extra_forbidden"), 0)
    first, first_loc = errors[at], locs[at]
    # pydantic reports a bad mapping key as a location part "[key]": the field is the mapping entry itself...
    parts = [part for part in first_loc if part != "[key]"]
    message = validator_message(first)
    # A config file writes lists: that pydantic holds one as a tuple is no concern of its author's.
    message = message.replace("a valid tuple", "a valid list").replace("Tuple should", "List should")
    if first["type"] == "too_short" and isinstance(first["input"], str):  # a secret (api_key: ""): not "1 item"
        least = (first.get("ctx") or {}).get("min_length", 1)
        message = f"String should have at least {least} character{'s' if least != 1 else ''}"
    if first["type"] == "extra_forbidden" and parts and isinstance(parts[-1], str):
        message += _meant(parts[-1])
    if "[key]" in first_loc and not (isinstance(first["input"], str) and first["input"]):
        # ...unless the key is no name to show: pydantic writes YAML's `on:` (True) as `1`, and "" as nothing.
        parts = list(first_loc[:first_loc.index("[key]") - 1])
        message = _name_message(first["input"])
    loc = _dotted(parts, tagged, unions)
    # A model validator (which checks fields together) names the one at fault on its error, if it can.
    culprit = getattr((first.get("ctx") or {}).get("error"), "field", None)
    field = ".".join(p for p in (prefix, loc, culprit) if isinstance(p, str) and p) or None
    # Each member of a plain union the value fits none of reports an error of its own: one field, one error.
    others = list(dict.fromkeys(loc for loc in locs if loc != first_loc))
    return kind(without_secrets(f"{message}{_more(others, prefix, tagged, unions)}"), field=field)


def _dotted(parts: Sequence[Any], tagged: bool, unions: tuple[str, ...]) -> str:
    """A location's parts as the config's dotted key: without the tag of a tagged union's member (``tagged``), or
    the member's key under a field holding one (``unions``)."""
    parts = list(parts)
    if len(parts) > 2 and parts[0] in unions:
        del parts[1]
    elif tagged and len(parts) > 1:
        del parts[0]
    return ".".join(str(part) for part in parts)


def _more(others: Sequence[tuple[Any, ...]], prefix: str | None, tagged: bool, unions: tuple[str, ...]) -> str:
    """`` (and 2 more error(s): a.b, c)``: the other invalid fields, named (the first five), so one attempt can fix
    them all; nothing when there are none."""
    if not others:
        return ""
    names = list(dict.fromkeys(
        ".".join(p for p in (prefix, _dotted([x for x in loc if x not in ("[key]", "")], tagged, unions)) if p)
        or "(the whole value)" for loc in others))
    return f" (and {len(others)} more error(s): {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"


def _meant(key: str) -> str:
    """``; did you mean 'template'?`` for a key close to a setting genroute's configs have (a misspelt key read only
    "Extra inputs are not permitted"), else nothing. Built when a config is refused, never on a request's path."""
    from pydantic import BaseModel

    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        sub: type[BaseModel]
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                if sub.__module__.startswith("genroute"):
                    names.update(sub.model_fields)
    # A real setting's name is in the wrong place, not misspelt (`max_output_tokens` is no typo of `output_tokens`).
    near = [] if key in names else difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.8)
    if near:
        return f"; did you mean {near[0]!r}?"
    # A setting written one level too high (a backend's `temperature:`, which goes under `generation:`).
    holders = {cls for cls in seen if cls.__module__.startswith("genroute") and key in cls.model_fields}
    sections = sorted({name for cls in seen if cls.__module__.startswith("genroute")
                       for name, info in cls.model_fields.items() if info.annotation in holders})
    return f"; it is a setting of {' or '.join(map(repr, sections))}, not of this section" if sections else ""


def _name_message(key: Any) -> str:
    """Why ``key`` cannot name an entry (an engine, a backend...)."""
    if key == "":
        return "a name cannot be empty"
    return (f"names are strings, not {type(key).__name__} ({key!r}): YAML reads unquoted on, off, yes, no, true, "
            "false, null and numbers as such, so quote the name")


#: How pydantic names the member of a plain (untagged) union in an error's location: ``str``, ``tuple[str, ...]``,
#: ``literal['a','b']``, ``function-after[...]``. Such a part is no key of the config (``when.task.str``).
_MEMBER = re.compile(r"(str|int|float|bool|none|bytes|(list|tuple|dict|set|frozenset|literal|function-\w+|"
                     r"constrained-\w+|nullable|lax-or-strict|json-or-python)\[.*\])")


def _without_members(loc: tuple[Any, ...], errors: Sequence[Any]) -> tuple[Any, ...]:
    """``loc`` without the parts that name a union's member: a part named like one, where another error names
    another member at the same place (a key the user called ``str`` has no such sibling)."""
    def member(i: int) -> bool:
        part = loc[i]
        return isinstance(part, str) and _MEMBER.fullmatch(part) is not None and any(
            len(e["loc"]) > i and e["loc"][:i] == loc[:i] and e["loc"][i] != part
            and isinstance(e["loc"][i], str) and _MEMBER.fullmatch(e["loc"][i]) for e in errors)

    return tuple(part for i, part in enumerate(loc) if not member(i))


def check_list(items: object, kind: type[T], *, field: str) -> list[T]:
    """``items`` as a list, each a ``kind``; ``UsageError`` naming ``field`` (``field.N``) otherwise: a number or a
    mapping in its place was a ``TypeError`` or an ``AttributeError`` from deep inside."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise UsageError(f"must be a list of {kind.__name__}, not {type(items).__name__}", field=field)
    listed = list(items)
    for index, item in enumerate(listed):
        if not isinstance(item, kind):
            raise UsageError(f"must be {kind.__name__}, not {type(item).__name__}", field=f"{field}.{index}")
    return listed


M = TypeVar("M", bound=BaseModel)


def validated_model(model: type[M], raw: object, field: str) -> M:
    """``raw`` (a ``model``, a mapping of its fields or None for the defaults) as a ``model``; ``ConfigError`` naming
    ``field`` (or the invalid field under it) otherwise: a number was a ``TypeError`` from ``dict()``."""
    if isinstance(raw, model):
        return raw
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping or {model.__name__}, not {type(raw).__name__}", field=field)
    try:
        return pydantic_validated(model, dict(raw or {}))
    except ValidationError as exc:  # pydantic's own text would show the input: a misplaced key, say
        raise config_error(exc, field) from None


def pydantic_validated(model: type[M], raw: object) -> M:
    """``raw`` validated as ``model``, raising pydantic's ``ValidationError``: for genroute's readers, which name
    the field under a name of their own (a config section, a file's line, a flag)."""
    validated: M = model.__pydantic_validator__.validate_python(raw)
    return validated


def pydantic_validated_json(model: type[M], data: str | bytes | bytearray, *, strict: bool | None = None) -> M:
    """The JSON document ``data`` validated as ``model``, raising pydantic's ``ValidationError`` (see
    ``pydantic_validated``); ``strict``: no string or bool read as a number."""
    validated: M = model.__pydantic_validator__.validate_json(data, strict=strict)
    return validated
