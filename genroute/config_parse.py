"""Parsing config text strictly: a key given twice in one mapping is an error, never a silent override.

PyYAML and the json module keep the last of two equal keys, so a second ``backends:`` would drop the first
without a word (TOML already refuses). Both parsers here raise ``DuplicateKey`` naming the key's path instead.
"""

from __future__ import annotations

import json
import re
from typing import Any


class DuplicateKey(ValueError):
    """A mapping holds the same ``key`` twice; ``field`` is its dotted path and ``line`` the line of its second
    writing, where known."""

    def __init__(self, message: str, *, key: object, field: str | None = None, line: int | None = None) -> None:
        self.key, self.field, self.line = key, field, line
        super().__init__(message)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (``DuplicateKey``)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with << may be overridden; only literal repeats are refused
            key = loader.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the base constructor reports unhashable keys itself
            if key in seen:
                mark = key_node.start_mark
                raise DuplicateKey(f"duplicate key {key!r} (line {mark.line + 1}, column {mark.column + 1})",
                                   key=key, field=_yaml_path(text, key_node) or str(key),
                                   line=mark.line + 1)
            seen[key] = None
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    # YAML 1.1 wants a dot in a float: PyYAML reads `tpm: 1e6` as the text '1e6' (refused for an integer), where
    # YAML 1.2, JSON and TOML read a number; so does this loader.
    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


#: A number with an exponent and no dot (``1e6``, ``-2E-3``), which YAML 1.1 leaves as text.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


def _yaml_path(text: str, key_node: Any) -> str | None:
    """The dotted path of the mapping key ``key_node`` in the YAML ``text`` (``backends.chat.model``)."""
    import yaml

    index = key_node.start_mark.index
    stack: list[tuple[Any, tuple[str, ...]]] = [(yaml.compose(text, Loader=yaml.SafeLoader), ())]
    seen: set[int] = set()
    while stack:  # a loop, not recursion: anchors may nest deep
        node, path = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.start_mark.index == index:
                    return ".".join((*path, str(key.value)))
                stack.append((value, (*path, str(key.value))))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(node.value))
    return None


def parse_json(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys (``DuplicateKey``)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:  # the object's place is known only once the whole text is read
                repeated = _Repeated(out)
                repeated.key = key
                return repeated
            out[key] = value
        return out

    data = json.loads(text, object_pairs_hook=pairs)
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Repeated):
            raise DuplicateKey(f"duplicate key {value.key!r}", key=value.key,
                               field=".".join((*path, value.key)))
        if isinstance(value, dict):
            stack.extend((item, (*path, str(key))) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))
    return data


class _Repeated(dict[str, Any]):
    """A JSON object that held ``key`` twice (its first keys only)."""

    key: str
