"""Parsing config text strictly: a key given twice in one mapping is an error, never a silent override.

PyYAML and the json module keep the last of two equal keys, so a second ``backends:`` would drop the first
without a word (TOML already refuses). Both parsers here raise ``DuplicateKey`` naming the key's path instead.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    """A mapping holds the same key twice; ``field`` is the key's dotted path where known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
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
                                   field=str(key))
            seen[key] = None
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def parse_json(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys (``DuplicateKey``)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise DuplicateKey(f"duplicate key {key!r}", field=key)
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=pairs)
