"""What a knowledge store is configured with: where Chroma lives and which embedder fills its collections."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from genroute.bounds import PathText, check_headers
from genroute.config_errors import config_error, pydantic_validated
from genroute.errors import ConfigError
from genroute.public_model import ConfigModel

if TYPE_CHECKING:
    from genroute.engines.base import Engine
    from genroute.knowledge.embedders import GeminiEmbedder
    from genroute.runtime.pricing import Pricing


class _Frozen(ConfigModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalEmbedderSpec(_Frozen):
    """The offline all-MiniLM-L6-v2 (int8) embedder (default)."""

    kind: Literal["local"] = "local"
    intra_op_threads: int = Field(default=2, ge=1)
    max_length: int = Field(default=256, ge=8, le=512)
    batch_size: int = Field(default=32, ge=1)


class GeminiEmbedderSpec(_Frozen):
    """Gemini ``embed_content`` through a configured engine."""

    kind: Literal["gemini"]
    engine: str = Field(description="Name of an engine in the config's `engines`.")
    model: str = "gemini-embedding-001"
    dimension: int = Field(default=3072, ge=1)


EmbedderSpec = Annotated[LocalEmbedderSpec | GeminiEmbedderSpec, Field(discriminator="kind")]


class StoreConfig(_Frozen):
    """Where the knowledge lives (``path`` for embedded, ``host``/``port`` for a server) and how it is embedded."""

    path: PathText | None = Field(default=None, min_length=1, description=(
        "Directory of an embedded Chroma (a config file without one gets `<file stem>-chroma` beside it)."))
    host: str | None = Field(default=None, description="Host of a `chroma run` server.")
    port: int = Field(default=8000, ge=1, le=65535)
    ssl: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    tenant: str = "default_tenant"
    database: str = "default_database"
    embedder: EmbedderSpec = LocalEmbedderSpec()
    ef_search: int | None = Field(default=None, ge=1, description="HNSW ef for new collections.")
    timeout_s: float = Field(default=30.0, gt=0.0, allow_inf_nan=False, description=(
        "Longest wait for a `chroma run` server's answer to one call (connecting included); past it the call is "
        "`BackendUnavailable`, so a policy can fall through."))

    @field_validator("headers")
    @classmethod
    def _sendable(cls, headers: dict[str, str]) -> dict[str, str]:
        check_headers(headers)
        return headers

    @field_validator("path")
    @classmethod
    def _home(cls, path: str | None) -> str | None:
        # Chroma would make a directory named `~` in the working directory (a dict config is not anchored). Absolute
        # from here on: Chroma keeps one client per path *string*, so two stores at `./chroma` under different working
        # directories in one process would share the first one's, and a later chdir would move the store.
        return None if path is None else os.path.abspath(os.path.expanduser(path))

    @model_validator(mode="after")
    def _one_place(self) -> StoreConfig:
        if self.path is not None and self.host is not None:
            raise ValueError("set either path (embedded) or host (server), not both")
        return self


def no_place(field: str = "knowledge") -> ConfigError:
    """The error for a store configured with neither a path nor a host."""
    return ConfigError("the knowledge store needs a place: `path` (a directory for an embedded Chroma; a config "
                       "file without one gets `<file stem>-chroma` beside it) or `host` (a `chroma run` server)",
                       field=f"{field}.path")


def check_place(path: str, *, field: str = "knowledge", writes: bool = False) -> None:
    """``ConfigError`` naming ``{field}.path`` unless an embedded Chroma can keep its files at ``path``: a directory
    it can write in, or one it can make (Chroma makes it, parents too, when first opened; this makes nothing), whose
    ``chroma.sqlite3``, if there is one, it can write. ``writes``: the caller is about to write records (an ingest, an
    example load, a route sync that adds or deletes), so each collection's directory and files must be writable too.

    Else the first request (or the write) would fail, as a retryable ``BackendUnavailable`` naming no field. Chroma
    cannot even read a store whose ``chroma.sqlite3`` it cannot write (its first open writes), so a read-only one is
    no loss; a collection's directory it only writes into when records are added (reads work without), so a store
    read-only there still serves a router that only reads. The probes open files for writing, and make an unnamed
    temporary file in a directory: a permission bit would pass a path under ``/proc``, and any path for root."""
    target = Path(path)
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{path!r} is not a directory: an embedded store keeps its files in one" if existing == target
                          else f"{path!r} cannot be made: {str(existing)!r} is a file, not a directory",
                          field=f"{field}.path")
    where = "" if existing == target else f" (it would be made in {str(existing)!r})"
    _probe_dir(existing, f"{path!r}: an embedded store cannot write there{where}", field)
    if existing != target:
        return  # a store not made yet: nothing in it to probe
    database = target / "chroma.sqlite3"
    if database.exists():
        _probe_file(database, f"{path!r}: Chroma cannot open a store whose chroma.sqlite3 it cannot write, even to "
                              f"read it", field)
    if writes:
        for directory in sorted(p for p in target.iterdir() if p.is_dir()):
            what = f"{path!r}: records cannot be written, as Chroma cannot write in its collection directory " \
                   f"{directory.name!r} (a store only read may be read-only there)"
            _probe_dir(directory, what, field)
            for file in sorted(p for p in directory.iterdir() if p.is_file()):
                _probe_file(file, f"{what}: {file.name}", field)


def _probe_dir(directory: Path, what: str, field: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror or exc}", field=f"{field}.path") from None


def _probe_file(file: Path, what: str, field: str) -> None:
    # Opened for writing, not written: nothing changes, not even the modification time.
    try:
        os.close(os.open(file, os.O_WRONLY))
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror or exc}", field=f"{field}.path") from None


def parse_store_config(raw: Mapping[str, Any] | None, *, field: str = "knowledge") -> StoreConfig:
    """The config section ``raw`` validated; ``ConfigError`` naming the offending field."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping (path, or host and port), got {type(raw).__name__}", field=field)
    try:
        return pydantic_validated(StoreConfig, dict(raw or {}))
    except ValidationError as exc:
        raise config_error(exc, field, unions=("embedder",)) from None


def gemini_embedder(config: StoreConfig, *, engines: Mapping[str, Engine], field: str = "knowledge",
                    pricing: Pricing | None = None) -> GeminiEmbedder | None:
    """The Gemini embedder ``config`` names (``None`` for the local default), priced from ``pricing``."""
    if not isinstance(config.embedder, GeminiEmbedderSpec):
        return None
    from genroute.knowledge.embedders import GeminiEmbedder
    from genroute.runtime.pricing import Pricing

    engine = engines.get(config.embedder.engine)
    if engine is None:
        known = ", ".join(sorted(engines)) or "none"
        raise ConfigError(f"unknown engine {config.embedder.engine!r} (known: {known})",
                          field=f"{field}.embedder.engine")
    pricing = pricing if pricing is not None else Pricing()
    priced = engine.pricing_model(config.embedder.model)
    if priced is not None:  # embeddings are billed: an unpriced model would silently cost 0
        pricing.require(priced, field=f"{field}.embedder.model")
    return GeminiEmbedder(engine, config.embedder.model, dimension=config.embedder.dimension, pricing=pricing)
