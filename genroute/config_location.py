"""Where a config file writes the setting a ``ConfigError`` names: its file and line, for the error's message.

A field path alone (``backends.chat.generation.temperature``) still leaves a reader of a long hand-written file to
find it; the line does not. YAML and JSON files are read again with PyYAML's composer, which keeps each node's
line (JSON is YAML to it); a TOML file is found by the line of its table header or key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genroute.errors import ConfigError


@contextmanager
def located(source: object) -> Iterator[None]:
    """Give a ``ConfigError`` raised inside, naming a field, the file and line ``source`` (a config file's path)
    writes that field at; an error from a mapping or a ``RouterConfig`` is left as it is."""
    try:
        yield
    except ConfigError as exc:
        locate(exc, source)
        raise


def locate(exc: ConfigError, source: object) -> None:
    """Set ``exc.file`` and ``exc.line`` to where the config file ``source`` writes the field ``exc`` names (left
    unset for a mapping, a ``RouterConfig``, an error naming no field or one located already)."""
    if isinstance(source, str | Path) and exc.field and exc.file is None:
        line = field_line(Path(source).expanduser(), exc.field)
        if line is not None:
            exc.file, exc.line = str(source), line


def field_line(path: Path, field: str) -> int | None:
    """The line (from 1) of ``path`` that writes ``field``, or of the nearest setting above it the file has (a
    missing key: its section); ``None`` when the file cannot be read or holds none of it."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError, as is a path with a NUL character
        return None
    if path.suffix.lower() == ".toml":
        return _toml_line(text, field.split("."))
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = _node_line(node, field.split("."))
    return None if line is None else line + 1


def _node_line(node: Any, parts: list[str]) -> int | None:
    """The 0-based line of the key ``parts`` leads to under ``node``, or of the deepest key on the way."""
    import yaml

    best: int | None = None
    while parts and node is not None:
        if isinstance(node, yaml.MappingNode):
            found = _key(node, parts)
            if found is None:
                return best
            key, value, used = found
            best, node, parts = key.start_mark.line, value, parts[used:]
        elif isinstance(node, yaml.SequenceNode) and parts[0].isdigit() and int(parts[0]) < len(node.value):
            node = node.value[int(parts[0])]
            best, parts = node.start_mark.line, parts[1:]
        else:
            return best
    return best


def _key(node: Any, parts: list[str]) -> tuple[Any, Any, int] | None:
    """The (key node, value node, parts used) of ``node``'s key that ``parts`` begins with: a key may hold dots
    (``pricing.gemini-2.5-flash.input``), so the longest one that fits wins; keys merged in with ``<<`` count."""
    import yaml

    pairs = list(node.value)
    for key, value in node.value:
        if key.tag == "tag:yaml.org,2002:merge":
            merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
            pairs.extend(pair for m in merged if isinstance(m, yaml.MappingNode) for pair in m.value)
    for used in range(len(parts), 0, -1):
        name = ".".join(parts[:used])
        for key, value in pairs:
            if isinstance(key, yaml.ScalarNode) and key.value == name:
                return key, value, used
    return None


def _toml_line(text: str, parts: list[str]) -> int | None:
    """The line of a TOML file's table header or key for ``parts``: the deepest of ``[a.b]``, ``[a]`` with
    ``b = ...`` in it, or ``a = ...`` at the top (an inline table is found by the key that holds it)."""
    best, depth = None, 0
    table: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        header = re.fullmatch(r"\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?", raw.strip())
        key = None if header else re.match(r"""\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""", raw)
        if header:
            table = names = _names(header.group(1))
        elif key:
            names = table + _names(key.group(1))
        else:
            continue
        if names == parts[:len(names)] and len(names) > depth:
            best, depth = number, len(names)
    return best


def _names(dotted: str) -> list[str]:
    """A TOML dotted key's parts, unquoted (a quoted part holding a dot is not split: rare in a config)."""
    return [part.strip().strip("\"'") for part in dotted.split(".")]
