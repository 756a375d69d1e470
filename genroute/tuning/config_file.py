"""Registering a tuned model in a router config file: checked up front, written atomically.

YAML and JSON configs are rewritten (YAML comments are not preserved: the parsed mapping is dumped back, so a YAML
file that has comments is kept first as ``<name>.bak`` beside it); TOML is refused before any tuning starts, since
there is no TOML writer among the dependencies.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genroute.errors import ConfigError, UsageError
from genroute.jsonl import check_output_dir

if TYPE_CHECKING:
    from genroute.config import RouterConfig

_WRITABLE = {".yaml", ".yml", ".json"}
#: A tuned backend's name: it also names its engine (``<name>_engine``), a local adapter's directory and a Vertex
#: AI tuned model, so no path separators, dots or spaces.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"


def check_name(name: str, *, field: str = "name") -> None:
    """``UsageError`` naming ``field`` unless ``name`` can name a tuned backend (``NAME_PATTERN``)."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise UsageError(f"{name!r} is not a tuned backend name: a letter, then up to 62 letters, digits, _ or -",
                         field=field)


def config_file_path(config_path: object) -> Path:
    """``config_path`` as a ``Path``; ``UsageError`` naming ``config`` if it is not a path (None was a
    ``TypeError`` from pathlib)."""
    if not isinstance(config_path, str | PathLike):
        raise UsageError(f"must be the config file's path, not {type(config_path).__name__}", field="config")
    return Path(config_path)


def check_target(config_path: str | Path, name: str, *, replace: bool = False, engines: Sequence[str] = (),
                 missing_ok: bool = False, served_by: str | None = None) -> dict[str, Any]:
    """Fail now, before anything is trained or sent, if ``name`` (and ``engines``) cannot be written into
    the config (an engine or backend it holds already could never build, so the file written would not load), or
    the config lacks the engine ``served_by`` that is to serve it; return the config's mapping
    (``{}`` for a missing file when ``missing_ok``)."""
    check_name(name)
    path = config_file_path(config_path)
    if path.suffix.lower() not in _WRITABLE:
        raise UsageError(f"cannot write tuned backends into {path.name}: use a .yaml or .json config",
                         field="config")
    if missing_ok and not path.exists():
        check_output_dir(path.parent, field="config")  # it is created after the tuning: it must be creatable now
        return {}
    raw = _read(path)
    for section, names, what in (("backends", [name], "backend"), ("engines", list(engines), "engine")):
        present = raw.get(section)
        if present is not None and not isinstance(present, dict):
            raise ConfigError("must be a mapping", field=section)
        for entry in names:
            if not replace and entry in (present or {}):
                raise UsageError(f"{what} {entry!r} already exists in {path.name}; pick another name or "
                                 "replace it", field="name")
    _check_entries(raw, skip={"backends": {name}, "engines": set(engines)})
    if served_by is not None:
        _require_engine(raw, served_by, field="engine")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"cannot write to {path.parent}", field="config")
    return raw


def _check_entries(raw: Mapping[str, Any], *, skip: Mapping[str, set[str]]) -> None:
    """``ConfigError`` naming the first engine or backend of ``raw`` that could never build (a backend's temperature
    "hot"), but those in ``skip`` (the entries about to be replaced): the file written would not load."""
    from genroute.config import validate_kind

    for group in ("engines", "backends"):
        for entry_name, entry in (raw.get(group) or {}).items():
            if entry_name not in skip.get(group, ()):
                validate_kind(group, entry, field=f"{group}.{entry_name}")


def _require_engine(raw: Mapping[str, Any], engine: Any, *, field: str) -> None:
    """``ConfigError`` naming ``field`` unless ``raw`` has the engine ``engine``: a backend it is to serve would
    make the whole config fail to build."""
    known = raw.get("engines") or {}
    if engine not in known:
        raise ConfigError(f"no engine {engine!r} in the config (engines: {', '.join(known) or 'none'}): a backend "
                          "it served would not build", field=field)


def write_tuned_backend(config_path: str | Path, name: str, backend: Mapping[str, Any], *,
                        engines: Mapping[str, Mapping[str, Any]] | None = None, replace: bool = False,
                        missing_ok: bool = False) -> dict[str, Any]:
    """Add ``backends.<name>`` (and ``engines``) to a YAML/JSON config atomically; return the new mapping.

    Each entry is validated by its kind's config model and the whole file by ``load_config`` before
    anything is written, so an invalid entry never reaches the file.
    """
    raw = with_tuned_backend(config_path, name, backend, engines=engines, replace=replace, missing_ok=missing_ok)
    path = Path(config_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(path, raw)
    return raw


def with_tuned_backend(config_path: str | Path, name: str, backend: Mapping[str, Any], *,
                       engines: Mapping[str, Mapping[str, Any]] | None = None, replace: bool = False,
                       missing_ok: bool = False) -> dict[str, Any]:
    """The config's mapping with ``backends.<name>`` (and ``engines``) added and checked as ``write_tuned_backend``
    checks it; nothing is written (a caller adding more writes it once)."""
    from genroute.config import load_config, validate_kind

    engines = dict(engines or {})
    raw = check_target(config_path, name, replace=replace, engines=list(engines), missing_ok=missing_ok)
    for engine_name, engine in engines.items():
        validate_kind("engines", engine, field=f"engines.{engine_name}")
    validate_kind("backends", backend, field=f"backends.{name}")
    if engines:
        raw["engines"] = {**(raw.get("engines") or {}), **{k: dict(v) for k, v in engines.items()}}
    raw["backends"] = {**(raw.get("backends") or {}), name: dict(backend)}
    _require_engine(raw, backend.get("engine"), field=f"backends.{name}.engine")
    require_price(load_config(raw), name, backend)  # the file we write must still load, and build
    return raw


def write_config(path: Path, raw: Mapping[str, Any]) -> None:
    """Replace the YAML or JSON config at ``path`` with ``raw``, atomically; a YAML file whose comments the rewrite
    drops is kept first as ``<name>.bak`` (a comment is often the only record of why a setting is what it is)."""
    if path.suffix.lower() == ".json":
        write_atomic(path, json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
        return
    import yaml

    text = yaml.safe_dump(dict(raw), sort_keys=False, allow_unicode=True)
    old = path.read_text(encoding="utf-8-sig") if path.exists() else ""
    if has_comments(old):
        write_atomic(path.with_name(f"{path.name}.bak"), old)
    write_atomic(path, text)


def has_comments(text: str) -> bool:
    """Whether the YAML ``text`` holds a comment: a ``#`` outside every scalar (one inside a quoted or plain value,
    ``"a #b"``, is text, and the rewrite keeps it; so a file written by ``write_config`` has none)."""
    import bisect

    import yaml

    if "#" not in text:
        return False
    try:
        spans = [(t.start_mark.index, t.end_mark.index) for t in yaml.scan(text) if isinstance(t, yaml.ScalarToken)]
    except yaml.YAMLError:
        return True  # unreadable as YAML: keep it, to be safe
    starts = [start for start, _ in spans]
    for at in (i for i, ch in enumerate(text) if ch == "#"):
        n = bisect.bisect_right(starts, at) - 1
        if n < 0 or at >= spans[n][1]:
            return True
    return False


def require_price(config: RouterConfig, name: str, backend: Mapping[str, Any]) -> None:
    """``ConfigError`` if the router could not price the tuned backend ``name``: a config holding it would no
    longer build (``router.build.require_prices``), so every backend in it would be lost."""
    from genroute.runtime.pricing import Pricing

    engine = config.engines.get(str(backend.get("engine"))) or {}
    if backend.get("kind") != "tuned" or engine.get("kind") == "local":  # a local engine's calls are free
        return
    pricing = Pricing(config.pricing)
    model, key = pricing.tuned_billed_as(backend["model"], backend["base_model"])
    pricing.require(model, field=f"backends.{name}.{key}")


def require_same_base(tuned_from: str | None, base_model: str, *, config_path: str | Path | None,
                      job: str) -> None:
    """``UsageError`` naming ``base_model`` if tuning ``job`` tuned ``tuned_from``, priced otherwise than
    ``base_model`` in the config: ``--resume`` takes ``--base-model`` on trust, and the backend bills at its rates."""
    from genroute.config import load_config
    from genroute.runtime.pricing import Pricing

    if not tuned_from or tuned_from == base_model:
        return
    pricing = Pricing(load_config(config_path).pricing if config_path is not None else {})
    theirs, ours = pricing.lookup(tuned_from), pricing.lookup(base_model)
    if theirs is not None and ours is not None and theirs != ours:  # a name priced alike bills alike
        raise UsageError(f"tuning job {job} tuned {tuned_from!r}, not {base_model!r}: its backend would bill at "
                         f"the wrong model's rates (give {tuned_from!r})", field="base_model")


def register_tuned_backend(config_path: str | Path, name: str, *, engine: str, model: str, base_model: str,
                           system: str | None = None, tuning_job: str | None = None,
                           replace: bool = False, tasks: Sequence[str] = ()) -> dict[str, Any]:
    """Add ``backends.<name>`` (``kind: tuned``) served by ``engine`` to the config file; return the entry."""
    entry = tuned_entry(engine=engine, model=model, base_model=base_model, system=system, tuning_job=tuning_job,
                        tasks=tasks)
    write_tuned_backend(config_path, name, entry, replace=replace)
    return entry


def tuned_entry(*, engine: str, model: str, base_model: str, system: str | None = None,
                tuning_job: str | None = None, tasks: Sequence[str] = ()) -> dict[str, Any]:
    """The config entry of a ``kind: tuned`` backend serving ``model`` on ``engine``."""
    entry: dict[str, Any] = {"kind": "tuned", "engine": engine, "model": model, "base_model": base_model}
    if tasks:
        entry["tasks"] = list(tasks)
    if system:
        entry["system"] = system
    if tuning_job:
        entry["tuning_job"] = tuning_job
    return entry


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the new one, never half of one, durably; the file
    keeps the mode of the regular file it replaces, and a new one is its owner's only (a config may hold a key), as
    is one written in place of a link (planted there, it made the config 0644: ``path.exists()`` followed it)."""
    from genroute.cache import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"), private=True, same_mode=True, durable=True)


def _read(path: Path) -> dict[str, Any]:
    from genroute.config import read_config_file

    return dict(read_config_file(path, field="config"))
