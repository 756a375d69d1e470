"""Bounds on what users hand genroute: the size and depth of nested structures (configs, schemas, request
variables), what counts as a number (``is_real``, ``is_whole``) for the arguments checked against a range, and in a
record read from a file or a DataFrame (``as_number``, ``Number``, ``WholeNumber``), what as a file path in a config
model (``PathText``), and which HTTP headers a config may set (``check_headers``).

A YAML alias, or a Python object referenced twice, is a shared node: small to hold, but whatever serialises it
(the SDK turning a response schema into JSON, a template printing metadata) writes it out once per reference.
Nine levels of nine aliases is ~600 bytes of YAML and 387 million values written out, on the event loop. So
sizes here are counted as they will be written out, and the walk stops the moment a limit is passed (it never
does more than ``limits.nodes`` steps). A structure that holds itself is caught by the depth limit.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Strict


def is_real(value: Any) -> bool:
    """Whether ``value`` is an int or a float, not a bool (to Python ``True`` is 1; to a user it is no amount)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole(value: Any) -> bool:
    """Whether ``value`` is an int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def as_number(value: Any) -> Any:
    """``value`` as the Python number it is: a numpy integer or float as an int or a float, and a whole float
    (``12.0``, which pandas writes for an int column holding a NaN) as an int; anything else (a string such as
    ``"0.5"``, a bool, ``None``) unchanged, for the strict check after it to refuse or let through."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()  # its Python twin: a numpy bool is a bool (pydantic's strict float took it as 1.0)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    return int(number) if number.is_integer() else number


#: A number of a record read from a file or a DataFrame (a score, a cost, a latency): an int or a float as
#: ``as_number`` reads it, strictly (pydantic's lax mode read ``"0.5"`` as 0.5 and ``true`` as 1). NaN and infinity
#: pass: each reader says where they may not.
Number = Annotated[float, Strict(), BeforeValidator(as_number)]
#: A whole number of such a record (a token count): an int, or a float with nothing after the point (``12.0``).
WholeNumber = Annotated[int, Strict(), BeforeValidator(as_number)]


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true or false")
    return value


#: Marks a number in a pydantic model (``Annotated[int, NOT_BOOL]``) that ``true`` must not fill: pydantic reads it
#: as 1 (a 1 s timeout, one request a minute), where the same model still takes ``"5"`` and ``2.0`` as it would.
NOT_BOOL = BeforeValidator(_refuse_bool)


#: An HTTP header name (RFC 9110 ``token``), and what no header value may hold (a control character but tab).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_headers(headers: Mapping[str, str]) -> None:
    """``ValueError`` naming the first header (never its value, maybe a secret) that no HTTP client sends: a name that
    is not a token, or a value with a line break or another control character. Caught when configured: the client
    refuses it on every request, as a transport error after retries."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or _HEADER_CONTROL.search(value):
            raise ValueError(f"{name!r}: a header name is a token (letters, digits and !#$%&'*+-.^_`|~, no spaces "
                             "or ':'), and a value holds no line break nor other control character")


#: Why a path with a NUL character is refused where it is given: the OS takes none (``open`` raised a bare
#: ``ValueError`` while a router was built; ``knowledge.path`` and ``model_path`` were taken, to fail at first use).
NUL_IN_PATH = "a file path cannot hold a NUL character"


def _path_text(value: Any) -> Any:
    value = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(NUL_IN_PATH)
    return value


#: A file path in a pydantic model: text, or a ``pathlib.Path`` (any ``os.PathLike``) taken as its text, which
#: pydantic refuses for ``str`` (a config built in Python names its files with ``Path`` as often as not). A NUL
#: character is refused: no file system takes one.
PathText = Annotated[str, BeforeValidator(_path_text)]


@dataclass(frozen=True)
class Limits:
    """How large a structure may be once written out: values, nesting depth, characters of text."""

    nodes: int
    depth: int
    chars: int


#: A whole router config file or mapping.
CONFIG = Limits(nodes=200_000, depth=64, chars=10_000_000)
#: One JSON schema (a response schema): far beyond any real one, far below what hurts.
SCHEMA = Limits(nodes=20_000, depth=32, chars=1_000_000)
#: A request's ``variables`` or ``metadata``.
REQUEST = Limits(nodes=100_000, depth=64, chars=10_000_000)


class TooLarge(ValueError):
    """A structure passes a bound; ``field`` is the dotted path of the part named (see ``check``)."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


def check(value: Any, *, field: str, limits: Limits, name_depth: int | None = None) -> None:
    """Raise ``TooLarge`` if ``value`` written out passes ``limits``.

    The error names ``field``, or, with ``name_depth``, the first ``name_depth`` parts of the path where the
    limit was passed (``backends.chat.generation.response_schema`` for a whole config walked with 4).
    """
    nodes = chars = 0
    # (value, depth, path): the path is a linked list (key, parent) so that only an error pays to spell it.
    stack: list[tuple[Any, int, Any]] = [(value, 0, None)]
    while stack:
        item, depth, path = stack.pop()
        nodes += 1
        if nodes > limits.nodes:
            raise _too_large(f"more than {limits.nodes:,} values once aliases and shared references are "
                             "written out", field, path, name_depth)
        if depth > limits.depth:
            raise _too_large(f"nested more than {limits.depth} deep (at {_spell(path, 8)}...)", field, path,
                             name_depth)
        if isinstance(item, str):
            chars += len(item)
            if chars > limits.chars:
                raise _too_large(f"more than {limits.chars:,} characters of text once written out", field, path,
                                 name_depth)
        elif isinstance(item, Mapping):
            for key, inner in item.items():
                if isinstance(key, str):
                    chars += len(key)
                stack.append((inner, depth + 1, (key, path)))
        elif isinstance(item, list | tuple | set | frozenset):
            for index, inner in enumerate(item):
                stack.append((inner, depth + 1, (index, path)))


def _parts(path: Any) -> list[str]:
    parts: list[str] = []
    while path is not None:
        key, path = path
        parts.append(str(key))
    return parts[::-1]


def _spell(path: Any, most: int) -> str:
    return ".".join(_parts(path)[:most])


def _too_large(what: str, field: str, path: Any, name_depth: int | None) -> TooLarge:
    if name_depth is not None:
        named = ".".join(p for p in (field, _spell(path, name_depth)) if p)
    else:
        named = field
    return TooLarge(f"too large: {what}", field=named)
