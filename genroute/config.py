"""Router configuration: loading (YAML, TOML, JSON, dict) and validation with errors that name the field."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator,
                      model_validator)

from genroute.bounds import NOT_BOOL, NUL_IN_PATH
from genroute.config_errors import config_error, pydantic_validated
from genroute.config_location import located
from genroute.config_secrets import config_texts, refuse_masked_secrets, section_redacted
from genroute.config_parse import DuplicateKey, parse_json, parse_yaml
from genroute.errors import ConfigError, UsageError, without_secrets
from genroute.public_model import ConfigModel
from genroute.registry import Group, load, plugin_failures, plugin_origin
from genroute.runtime.pricing import ModelPrice
from genroute.runtime.telemetry import CAPTURE_MAX_CHARS
from genroute.state import MemoryStateConfig, StateConfig


class _Frozen(ConfigModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TelemetryConfig(_Frozen):
    """Telemetry switches; content capture is off unless opted in (here or by the standard env var)."""

    capture_content: bool | None = None
    #: Captured text kept per span attribute (messages, tool arguments and results, a query); the rest is cut.
    capture_max_chars: Annotated[int, NOT_BOOL] = Field(default=CAPTURE_MAX_CHARS, ge=1)


#: ``RouterConfig`` sections kept as raw mappings (validated per ``kind`` when built), which reprs and dumps redact;
#: in the named ones each entry's name is a name, not a setting.
_RAW_SECTIONS = ("engines", "backends", "policy", "knowledge", "validators", "outcomes", "rate_limits", "breakers")


#: The name of an engine, a backend, a tool or a validator.
Name = Annotated[str, Field(min_length=1)]


class RouterConfig(_Frozen):
    """The whole router configuration. Sections are validated per ``kind`` (see ``validate_kind``)."""

    engines: dict[Name, dict[str, Any]] = Field(default_factory=dict)
    backends: dict[Name, dict[str, Any]]
    policy: dict[str, Any] | None = None
    pricing: dict[str, ModelPrice] = Field(default_factory=dict)
    telemetry: TelemetryConfig = TelemetryConfig()
    knowledge: dict[str, Any] | None = None
    #: Tool name -> "module:callable" import path.
    tools: dict[Name, str] = Field(default_factory=dict)
    #: Validator name -> "module:callable" import path, or {kind: json_schema | judge, ...} (checked when built:
    #: a union here would name its members in errors, ``validators.v.str``).
    validators: dict[Name, Any] = Field(default_factory=dict)
    #: Default per-request deadline in seconds.
    timeout_s: Annotated[float | None, NOT_BOOL] = Field(default=None, gt=0, allow_inf_nan=False)
    #: Outcome recording, shadow scoring, opt-in capture and policy refresh (``genroute.outcomes.OutcomeSettings``).
    outcomes: dict[str, Any] | None = None
    #: Where budgets, rate limits and breakers keep their counts: this process, or Redis shared by many.
    state: StateConfig = MemoryStateConfig()
    #: Requests and input tokens per minute, per engine (and model), backend or budget key
    #: (``genroute.admission.ratelimit.RateLimitConfig``); shared through ``state``.
    rate_limits: list[dict[str, Any]] = Field(default_factory=list)
    #: Circuit breakers per backend and engine+model (``genroute.admission.breaker.BreakerConfig``); off if unset.
    breakers: dict[str, Any] | None = None

    def __repr_args__(self) -> Any:
        # Sections stay raw mappings until built (a plugin kind may take a key anywhere): keep inline keys out of
        # reprs and logs.
        for name, value in super().__repr_args__():
            yield name, section_redacted(name, value) if name in _RAW_SECTIONS else value

    @field_validator("backends")
    @classmethod
    def _some_backend(cls, backends: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not backends:  # pydantic said "Dictionary should have at least 1 item after validation, not 0"
            raise ValueError("no backend is configured: a router needs at least one (backends: {NAME: {kind: "
                             "prompt_template, ...}}), also one used only to ingest or to read its knowledge")
        return backends

    @model_validator(mode="before")
    @classmethod
    def _no_masked_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            refuse_masked_secrets(data)
            if data.get("backends") is None:  # missing, or YAML's `backends:` with nothing under it: the words of
                data = {**data, "backends": {}}  # ``backends: {}`` (``_some_backend``), not "Field required"
        return data

    @field_serializer(*_RAW_SECTIONS)
    def _dump_redacted(self, value: Any, info: Any) -> Any:
        # ...and out of every dump (model_dump, model_dump_json): a dumped config is for reading, not for keys.
        return section_redacted(info.field_name, value)


def _parse_error(exc: Exception) -> str:
    """What a parser said was wrong, and where, without the text around it: PyYAML quotes the offending line, which
    may be a key's (an unclosed quote after ``api_key:``)."""
    if getattr(exc, "problem_mark", None) is None:  # JSON and TOML say where, not what was there
        return str(exc)
    marked = ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark))  # type: ignore[attr-defined]
    said = [f"{text} (line {mark.line + 1}, column {mark.column + 1})" for text, mark in marked
            if text and mark is not None]
    return "; ".join(said) or type(exc).__name__


def validate_kind(group: Group, raw: Mapping[str, Any] | BaseModel, *, field: str) -> tuple[type[Any], Any]:
    """Find the class for ``raw['kind']`` in ``group`` and validate ``raw`` with its ``Config``."""
    if isinstance(raw, BaseModel):
        kind = getattr(raw, "kind", None)
        return load(group, str(kind), field=f"{field}.kind"), raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping, got {type(raw).__name__}", field=field)
    kind = raw.get("kind")
    if kind is not None and kind != "" and not isinstance(kind, str):  # YAML's `kind: 3`, `kind: [a]`
        raise ConfigError(f"`kind` names a kind as text, not {type(kind).__name__} ({kind!r})", field=f"{field}.kind")
    if not isinstance(kind, str) or not kind:
        raise ConfigError("`kind` is required", field=f"{field}.kind")
    cls = load(group, kind, field=f"{field}.kind")
    with plugin_failures(cls, field=field):
        try:
            return cls, pydantic_validated(cls.Config, dict(raw))
        except ValidationError as exc:
            error = config_error(exc, field)
    origin = plugin_origin(cls)
    if origin is not None and error.field == f"{field}.kind":
        raise ConfigError(f"{origin}: its Config refuses its own name: {error.message}",
                          field=error.field)
    raise error


def build_kind(cls: type, *args: Any, field: str, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` for a class ``validate_kind`` found: a plugin's failure is a ``ConfigError``
    naming ``field`` and the plugin."""
    with plugin_failures(cls, field=field):
        return cls(*args, **kwargs)


def load_config(source: str | Path | Mapping[str, Any] | RouterConfig) -> RouterConfig:
    """Read and validate a router config from a YAML/TOML/JSON file, a mapping, or a ``RouterConfig``."""
    if isinstance(source, RouterConfig):
        check_config_size(dict(source))  # built in code: its raw sections may share references too
        return source
    if not isinstance(source, str | Path | Mapping):
        raise UsageError(f"a config is a file path, a mapping or a RouterConfig, not {type(source).__name__}",
                         field="source")
    if isinstance(source, str) and not source:  # Path("") is ".": it was "'.' is a directory"
        raise ConfigError("the config file's path is empty: pass the path of a YAML, TOML or JSON file, a mapping or "
                          "a RouterConfig", field="source")
    if isinstance(source, str) and ("\n" in source or source.strip()[:1] + source.strip()[-1:] == "{}"):
        # Not echoed: the text may hold an inline api_key.
        raise ConfigError("this is a config's text, not the path of a config file: pass the file's path, or the "
                          "mapping the text holds (yaml.safe_load(text))", field="path")
    raw = source if isinstance(source, Mapping) else read_config_file(Path(source))
    with located(source):
        check_config_size(raw)  # before anchoring, which copies: an alias bomb must not be expanded first
        if not isinstance(source, Mapping):
            refuse_env_references(raw)
        # A file's relative paths are its directory's; a mapping's stay the working directory's, its `Path`s as
        # text.
        raw = _anchor(raw, None) if isinstance(source, Mapping) else anchor_paths(raw, Path(source))
        try:
            return pydantic_validated(RouterConfig, dict(raw))
        except ValidationError as exc:
            raise config_error(exc, None, unions=("state",)) from None


def check_config_size(raw: Mapping[str, Any]) -> None:
    """``ConfigError`` if ``raw`` written out (aliases expanded) is too large or deep; names the section."""
    from genroute.bounds import CONFIG, TooLarge, check

    try:
        check(raw, field="", limits=CONFIG, name_depth=4)
    except TooLarge as exc:
        raise ConfigError(str(exc), field=exc.field or None) from None


#: A whole value that refers to an environment variable as a shell would (``${redis_url}``, ``$GEMINI_API_KEY``;
#: unbraced, only an upper-case name: ``$app`` may well be meant as it is).
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Z_][A-Z0-9_]*")


def refuse_env_references(raw: Mapping[str, Any]) -> None:
    """``ConfigError`` naming a value of a config file that is ``${VAR}``: genroute does not expand one, so the text
    itself would be sent as a key, dialled as a URL or made a directory."""
    for where, _, value in config_texts(raw):
        if _ENV_REFERENCE.fullmatch(value.strip()):
            raise ConfigError(f"{value.strip()}: a config file's values are not expanded from the environment; write "
                              "the value, name the variable where a setting takes one (an engine's api_key_env), "
                              "or build the config as a mapping in Python", field=where)


def anchor_paths(raw: Mapping[str, Any], config_file: Path) -> dict[str, Any]:
    """``raw`` as read from ``config_file``, with its file paths made independent of the working directory.

    A relative value of a key named ``path`` or ending in ``_path`` or ``_file`` (``knowledge.path``,
    ``engines.*.model_path``, ``validators.*.path``, ``policy.routes_file``...) resolves against the file's
    directory, as does the file of a rung's ``json_schema:<path>`` validator name; a ``knowledge`` section with
    neither ``path`` nor ``host`` gets ``<file stem>-chroma`` beside the file, and an ``outcomes`` section kept in
    SQLite with no ``path`` (and no ``$GENROUTE_OUTCOMES_PATH``) gets ``<file stem>-outcomes.db`` beside it. ``tools`` and string validators are import paths, not files, and stay as they are.
    """
    base = config_file.expanduser().resolve().parent
    out = {key: value if key == "tools" else _anchor(value, base) for key, value in raw.items()}
    knowledge = out.get("knowledge")
    if isinstance(knowledge, Mapping) and knowledge.get("path") is None and knowledge.get("host") is None:
        out["knowledge"] = {**knowledge, "path": str(base / f"{config_file.stem}-chroma")}
    outcomes = out.get("outcomes")
    if (isinstance(outcomes, Mapping) and outcomes.get("path") is None and not os.environ.get(OUTCOMES_PATH_ENV)
            and _sqlite_outcomes(outcomes, out.get("state"))):
        out["outcomes"] = {**outcomes, "path": str(base / f"{config_file.stem}-outcomes.db")}
    return out


#: Environment variable naming the outcome store's SQLite file when the ``outcomes`` section names none.
OUTCOMES_PATH_ENV = "GENROUTE_OUTCOMES_PATH"


def _sqlite_outcomes(outcomes: Mapping[str, Any], state: Any) -> bool:
    """Whether the outcome store is a SQLite file: ``store: sqlite``, or ``auto`` with this process's memory as
    the state store (with Redis, ``auto`` keeps outcomes in the shared state store, as ``store: state`` does)."""
    store = outcomes.get("store", "auto")
    kind = state.get("kind", "memory") if isinstance(state, Mapping) else "memory"
    return store == "sqlite" or (store == "auto" and kind == "memory")


def _anchor(value: Any, base: Path | None) -> Any:
    """``value`` with its file paths anchored at ``base`` (``None``: left relative), ``Path`` values as text."""
    if isinstance(value, Mapping):
        return {k: _anchor_one(k, os.fspath(v), base) if isinstance(v, str | os.PathLike)
                else _anchor_validators(v, base) if k == "validators" and isinstance(v, list)
                else _anchor(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_anchor(v, base) for v in value]
    return value


def _anchor_validators(names: list[Any], base: Path | None) -> list[Any]:
    """A rung's validator names, with the file of each ``json_schema:<path>`` anchored like any other path."""
    prefix = "json_schema:"
    return [prefix + _anchor_one("path", name.removeprefix(prefix), base)
            if isinstance(name, str) and name.startswith(prefix) else name for name in names]


def _anchor_one(key: Any, value: str, base: Path | None) -> str:
    is_path = isinstance(key, str) and (key == "path" or key.endswith(("_path", "_file")))
    # "" names no file to anchor: its own setting refuses it (knowledge.path) or reads it as none.
    if not (is_path and value and base is not None):
        return value
    path = Path(value).expanduser()  # `~/models/x.gguf` is in the home directory, not a directory named `~`
    return str(path) if path.is_absolute() else str(base / path)


def read_config_file(path: Path, *, field: str = "path") -> Mapping[str, Any]:
    """The mapping in a YAML, TOML or JSON file; ``ConfigError`` naming ``field`` if it cannot be had."""
    if "\x00" in str(path):  # is_dir and is_file say False: it was "does not exist", then open's bare ValueError
        raise ConfigError(NUL_IN_PATH, field=field)
    path = path.expanduser()
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a directory, not a config file", field=field)
    if not path.is_file():
        # A relative name is read from the working directory, which is not always where a newcomer thinks.
        where = "" if path.is_absolute() else f" (in the working directory, {Path.cwd()})"
        raise ConfigError(f"config file {without_secrets(str(path))!r} does not exist{where}", field=field)
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is no part of the text; JSON and TOML refuse it.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})", field=field) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path.name}: {exc}", field=field) from None
    suffix = path.suffix.lower()
    try:
        if suffix in {".yaml", ".yml"}:
            data = parse_yaml(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = parse_json(text)
        else:
            raise ConfigError(f"unsupported config file type {suffix!r} (use .yaml, .toml or .json)", field=field)
    except ConfigError:
        raise
    except DuplicateKey as exc:
        error = ConfigError(f"{path.name}: {exc}", field=exc.field)
        if exc.line is not None:  # said in the message: its first writing is not the place to show
            error.file, error.line = str(path), exc.line
            error.message = f"duplicate key {exc.key!r}"
        raise error from None
    except Exception as exc:  # parser errors differ per format; all mean the same to the caller
        raise ConfigError(f"cannot parse {path.name}: {_parse_error(exc)}", field=field) from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path.name} must hold a mapping at the top level", field=field)
    return data


def import_object(target: str, *, field: str) -> Any:
    """Import ``module:attr``; ``ConfigError`` naming ``field`` if it cannot be found."""
    import importlib

    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"expected 'module:attribute', got {target!r}", field=field)
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {target!r}: {exc}", field=field) from None
    except (Exception, SystemExit) as exc:  # the module's own code failed (a SyntaxError, an error, an exit at
        # import) or the path is relative: a config mistake all the same; the chain keeps the module's traceback
        raise ConfigError(f"cannot import {target!r}: {type(exc).__name__}: {without_secrets(str(exc))}",
                          field=field) from exc
    return obj
