"""Registering a tuned model in a router config file: checked up front, written atomically.

YAML and JSON configs are rewritten (YAML comments are not preserved: the parsed mapping is dumped back);
TOML is refused before any tuning starts, since there is no TOML writer among the dependencies.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from genroute.errors import ConfigError, UsageError

_WRITABLE = {".yaml", ".yml", ".json"}


def check_target(config_path: str | Path, name: str, *, replace: bool = False) -> dict[str, Any]:
    """Fail now, before anything is trained or sent, if ``name`` cannot be written into the config."""
    path = Path(config_path)
    if path.suffix.lower() not in _WRITABLE:
        raise UsageError(f"cannot write tuned backends into {path.name}: use a .yaml or .json config",
                         field="config")
    raw = _read(path)
    backends = raw.get("backends")
    if backends is not None and not isinstance(backends, dict):
        raise ConfigError("must be a mapping", field="backends")
    if not replace and name in (backends or {}):
        raise UsageError(f"backend {name!r} already exists in {path.name}; pick another name or replace it",
                         field="name")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"cannot write to {path.parent}", field="config")
    return raw


def register_tuned_backend(config_path: str | Path, name: str, *, engine: str, model: str, base_model: str,
                           system: str | None = None, tuning_job: str | None = None,
                           replace: bool = False) -> dict[str, Any]:
    """Add ``backends.<name>`` (``kind: tuned``) to the config file atomically; return the entry."""
    from genroute.backends.tuned import TunedConfig
    from genroute.config import load_config

    path = Path(config_path)
    raw = check_target(path, name, replace=replace)
    entry: dict[str, Any] = {"kind": "tuned", "engine": engine, "model": model, "base_model": base_model}
    if system:
        entry["system"] = system
    if tuning_job:
        entry["tuning_job"] = tuning_job
    try:
        TunedConfig.model_validate(entry)
    except ValidationError as exc:
        raise ConfigError(str(exc.errors()[0]["msg"]), field=f"backends.{name}") from None
    raw["backends"] = {**(raw.get("backends") or {}), name: entry}
    load_config(raw)  # the file we write must still load
    if path.suffix.lower() == ".json":
        text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    write_atomic(path, text)
    return entry


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict[str, Any]:
    from genroute.config import read_config_file

    return dict(read_config_file(path, field="config"))
