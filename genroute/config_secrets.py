"""What a config's dumps and reprs show of its raw sections (secrets masked), and the refusal of a dump's masks
when one is loaded again.

A dump is meant to be saved and read back: a setting genroute takes as a Python object (a pydantic model class as a
``response_schema``, google-genai's ``types.SafetySetting``) is written as what genroute reads from it, and a JSON
schema's property names (``api_key``, ``token_count``) are names of the answer's fields, not settings, so are not
masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from genroute.errors import ConfigError, without_credentials
from genroute.public_model import PublicModel

#: Named sections: each entry's name is a name, not a setting.
NAMED_SECTIONS = ("engines", "backends", "validators")
#: Settings that hold a JSON schema (a backend's ``generation.response_schema``, a ``json_schema`` validator's).
_SCHEMA_KEYS = frozenset({"response_schema", "schema"})
#: Words of a setting's name that make its value a secret (``api_key``, ``X-Api-Key``, ``accessToken``), and
#: fragments that do wherever they stand (``client_secret``, ``dbpassword``).
_SECRET_WORDS = {"key", "token", "pat"}
#: What a dump writes in place of a secret setting's value.
_MASK = "**********"
_SECRET_PARTS = ("secret", "password", "passwd", "credential", "authorization", "apikey")


def _secret_name(name: Any) -> bool:
    """Whether a setting called ``name`` holds a secret (``*_env`` names the variable that does, not the secret)."""
    if not isinstance(name, str):
        return False
    lower = name.lower()
    words = set(re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()))
    return not lower.endswith("_env") and (bool(words & _SECRET_WORDS) or any(p in lower for p in _SECRET_PARTS))


def section_redacted(section: str, value: Any) -> Any:
    """``_redacted`` for a config section; the entries of a named section (``engines.<name>``) are names, not
    settings, and stay as they are."""
    if section in NAMED_SECTIONS and isinstance(value, Mapping):
        return {name: _redacted(entry) for name, entry in value.items()}
    return _redacted(value)


def _redacted(value: Any, *, headers: bool = False, schema: bool = False) -> Any:
    """``value`` with every mapping entry whose name looks secret (``api_key``, ``token``...) masked, every value
    of a ``headers`` mapping (a gateway's or a Chroma server's: ``Cookie``, ``X-Gateway-Auth`` are credentials
    too, and the engine scrubs each from errors), and the credentials of URLs (``base_url:
    https://user:secret@host``) too; inside a JSON ``schema`` names are the answer's, and stay. A pydantic model
    class is its JSON schema, a pydantic object what genroute reads from it."""
    if isinstance(value, Mapping):
        if schema:
            return {k: _redacted(v, schema=True) for k, v in value.items()}
        return {k: _MASK if headers or _secret_name(k) else _redacted(v, headers=k == "headers",
                                                                      schema=k in _SCHEMA_KEYS)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v, schema=schema) for v in value]
    if isinstance(value, type) and issubclass(value, BaseModel):  # response_schema=Answer, as google-genai takes it
        return _redacted(value.model_json_schema(), schema=True)
    if isinstance(value, BaseModel):
        # genroute's own model as given; another's (google-genai's types.SafetySetting) without its unset fields,
        # as genroute reads one: a None it dumped (`method`) would be refused as a setting genroute does not take.
        foreign = not isinstance(value, PublicModel)
        return _redacted(value.model_dump(mode="json", exclude_unset=True, exclude_none=foreign), headers=headers,
                         schema=schema)
    if isinstance(value, str):
        return without_credentials(value)
    return value


#: What a config's dump writes in place of a URL's user and password (``without_credentials``).
_MASKED_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://\*\*\*@|[?&]password=\*\*\*(?![^&#\s'\"])")


def refuse_masked_secrets(raw: Mapping[str, Any]) -> None:
    """``ConfigError`` naming a setting that holds the mask a config's dump writes in place of a secret (a dumped
    config loaded again): it would be sent as the key, or as the URL's credentials, and fail only at run time."""
    for where, key, value in config_texts(raw):
        if (value == _MASK and (_secret_name(key) or _in_headers(where, key))) or _MASKED_URL.search(value):
            raise ConfigError("holds the mask a config's dump writes in place of a secret (a dump is for reading, "
                              "its secrets are gone): give the real value, or name an environment variable where "
                              "the setting takes one (api_key_env)", field=where)


def _in_headers(where: str, key: Any) -> bool:
    """Whether the setting at dotted path ``where`` (ending in ``key``) is a value of a ``headers`` mapping."""
    parent = where[:len(where) - len(str(key))].removesuffix(".")
    return parent == "headers" or parent.endswith(".headers")


def config_texts(raw: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """Every text value in ``raw``, nested ones too: (its dotted path, its key, the text). Each mapping or list is
    read once, by the first path that reaches it: a structure given in code that shares references (a "billion
    laughs" bomb, a cycle) is walked in the time of its own size, not of the tree it unfolds to."""
    stack: list[tuple[Any, str, Any]] = [(raw, "", None)]
    seen: set[int] = set()
    while stack:
        value, where, name = stack.pop()
        if isinstance(value, Mapping | list | tuple):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if isinstance(value, Mapping):
            stack.extend((item, f"{where}.{key}" if where else str(key), key) for key, item in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{where}.{index}", None) for index, item in enumerate(value))
        elif isinstance(value, str):
            yield where, name, value


