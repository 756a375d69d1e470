"""The knowledge store's bookkeeping: its Chroma client, and its collections opened, checked, counted, deleted."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from genroute.errors import BackendUnavailable, GenrouteError, UsageError
from genroute.knowledge.chroma_timeouts import Connecting
from genroute.knowledge.collection_checks import check_collection, check_collection_name, collection_metadata
from genroute.knowledge.store_config import LocalEmbedderSpec, StoreConfig, check_place, no_place

if TYPE_CHECKING:
    from genroute.knowledge.embedders import Embedder
    from genroute.runtime.telemetry import Telemetry

T = TypeVar("T")
Kind = Literal["documents", "examples", "routes"]
KINDS: tuple[str, ...] = get_args(Kind)
#: A stamp per collection (of a Chroma place), renewed by each write through any store of this process: what is read
#: whole and kept (the ``fixed``/``random`` example pool) is read again once its collection's stamp changed.
_WRITTEN: dict[tuple[Any, ...], int] = {}
_STAMPS = itertools.count(1)
#: The database file of an embedded Chroma place: every write to any of its collections, by any process, commits to it
#: (records, metadata, deletions), and reads leave it as it is.
DATABASE = "chroma.sqlite3"
#: How long (seconds) the database file must have gone unwritten before its stamp is trusted (``place_mark``): a
#: write within the filesystem's timestamp granularity of the one it stamps may leave the same time (git's "racy
#: clean" files); later writes get a later time.
SETTLED_S = 2.0


class StoreCollections:
    """The Chroma client and named collections of a ``KnowledgeStore`` (its reads and writes are in
    ``genroute.knowledge.store``); Chroma calls run in worker threads, their failures leave as genroute errors."""

    def __init__(self, config: StoreConfig | None = None, *, embedder: Embedder | None = None) -> None:
        """Nothing is opened yet; an embedded store's directory is checked (``check_place``): a place Chroma could not
        open is a ``ConfigError`` naming ``knowledge.path`` here, not a failure at the first use."""
        self.config = config or StoreConfig()
        if self.config.path is not None:
            check_place(self.config.path)
        self._embedder = embedder
        self._client_obj: Any = None
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._connecting: Connecting[Any] = Connecting()
        #: Each call's bound when chromadb's HTTP session could not be given a timeout (``chroma_timeouts``).
        self._wait_s: float | None = None
        #: ``genroute.knowledge.unavailable`` on the router's meter (``use_telemetry``).
        self._unavailable: Any = None

    # -- opening -----------------------------------------------------------------------------

    def use_telemetry(self, telemetry: Telemetry) -> None:
        """Record the embedder's duration, token and cost metrics on ``telemetry`` (a router's). The offline
        embedder is one per process for each setting (``_local_embedder``): with several routers alive, its points go
        to the last one built."""
        if self._embedder is not None:
            self._embedder.telemetry = telemetry
        from genroute.runtime.telemetry import instrument

        self._unavailable = instrument(telemetry.meter.create_counter, "genroute.knowledge.unavailable",
                                       unit="{call}", description="Chroma calls that failed because the store did "
                                                                  "not answer (BackendUnavailable)")

    @property
    def embedder(self) -> Embedder:
        """The embedder every collection of this store is filled and queried with."""
        if self._embedder is None:
            spec = self.config.embedder
            assert isinstance(spec, LocalEmbedderSpec)
            self._embedder = _local_embedder(spec.intra_op_threads, spec.max_length, spec.batch_size)
        return self._embedder

    @property
    def location(self) -> str:
        """Where the store lives, for messages."""
        if self.config.host is not None:
            return f"chroma server {self.config.host}:{self.config.port}"
        return f"embedded chroma at {self.config.path}"

    def wrote(self, name: str) -> None:
        """Renew collection ``name``'s write stamp (``written``): called after each write."""
        _WRITTEN[self._place(name)] = next(_STAMPS)

    def written(self, name: str) -> int:
        """Collection ``name``'s write stamp: changed by each write this process made to it since (0: none)."""
        return _WRITTEN.get(self._place(name), 0)

    def place_mark(self) -> tuple[int, ...] | None:
        """What changes with every write any process makes to this store's place (blocking: a few stats), or ``None``
        where nothing cheap can tell: an embedded place's database file (``DATABASE``, and a ``-wal`` beside it) as the
        filesystem stamps it (modification and change times, size, inode). ``None`` for a Chroma server: it gives
        no such mark. Checked on a ``chroma run`` of chromadb 1.5.9 (``benchmarks/chroma_server_reads.py``): an
        update or an upsert of an existing id keeps the count, the ids, the collection's ``version`` and
        ``log_position`` (0), its metadata and configuration; its indexing status and fork count are not implemented
        there. Also ``None`` for a file missing, being written (a ``-journal`` beside it) or written in the last
        ``SETTLED_S`` seconds."""
        if self.config.path is None:
            return None
        base = os.path.join(self.config.path, DATABASE)
        if os.path.exists(base + "-journal"):
            return None
        mark: list[int] = []
        now = time.time_ns()
        for path in (base, base + "-wal"):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if path == base:
                    return None
                mark.append(-1)
                continue
            if now - max(st.st_mtime_ns, st.st_ctime_ns) < SETTLED_S * 1e9:
                return None
            mark += [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino]
        return tuple(mark)

    def _place(self, name: str) -> tuple[Any, ...]:
        return *self._where, name

    @cached_property
    def _where(self) -> tuple[Any, ...]:
        """The Chroma place (server or directory, tenant, database) whatever the store object or path's spelling."""
        config = self.config
        path = os.path.realpath(config.path or "")
        where = (server_host(config.host), config.port) if config.host is not None else path
        return where, config.tenant, config.database

    def _path(self) -> str:
        if self.config.path is None:
            raise no_place()
        return self.config.path

    def client(self) -> Any:
        """The Chroma client, created on first use (blocking)."""
        with self._lock:
            if self._client_obj is None:
                self._client_obj = self._open()
            return self._client_obj

    def _open(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        cfg = self.config
        host = cfg.host
        if host is None:
            return chromadb.PersistentClient(path=self._path(), settings=settings,
                                             tenant=cfg.tenant, database=cfg.database)
        from genroute.knowledge.chroma_errors import unreachable
        from genroute.knowledge.chroma_timeouts import bound_requests, http_client

        try:
            client = self._connecting.result(lambda: http_client(
                host=host, port=cfg.port, ssl=cfg.ssl, headers=cfg.headers, settings=settings, tenant=cfg.tenant,
                database=cfg.database, timeout_s=cfg.timeout_s), cfg.timeout_s)
        except Exception as exc:  # connection failures surface here as assorted httpx/ValueError types
            raise unreachable(exc, location=self.location, headers=cfg.headers) from exc
        self._wait_s = None if bound_requests(client, cfg.timeout_s) else cfg.timeout_s
        return client

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = asyncio.to_thread(self._guard, fn, *args, **kwargs)
        if self._wait_s is None:
            return await call
        try:  # a chromadb whose session timeout could not be set: bounded here (its thread may stay blocked)
            return await asyncio.wait_for(call, self._wait_s)
        except TimeoutError:
            raise BackendUnavailable(f"{self.location}: no answer in {self._wait_s:g} s", backend="knowledge") from None

    def _guard(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except GenrouteError as exc:  # the client's own (a server it could not reach when it was made)
            self._count_unavailable(exc)
            raise
        except Exception as exc:
            from chromadb.errors import NotFoundError

            from genroute.errors import header_secrets
            from genroute.knowledge.chroma_errors import map_chroma_error

            if isinstance(exc, NotFoundError):
                self._collections.clear()  # deleted behind our back: reopen (and report it) next time
            mapped = map_chroma_error(exc, location=self.location, server=self.config.host is not None,
                                      secrets=header_secrets(self.config.headers))
            if mapped is None:
                raise
            self._count_unavailable(mapped)
            raise mapped from exc

    def _count_unavailable(self, error: GenrouteError) -> None:
        if isinstance(error, BackendUnavailable) and self._unavailable is not None:
            self._unavailable.add(1, {"genroute.knowledge.place": "server" if self.config.host else "embedded"})

    # -- collections -------------------------------------------------------------------------

    def collection_sync(self, name: str, *, kind: Kind, create: bool = False, field: str = "collection") -> Any:
        """The Chroma collection ``name`` (blocking); unknown → ``UsageError`` naming ``field``."""
        cached = self._collections.get(name)
        if cached is not None:
            return cached
        from chromadb.errors import NotFoundError

        check_collection_name(name, field)  # before the client: an embedded one makes its directory
        if kind not in KINDS:  # a collection made with another kind was marked as holding it
            raise UsageError(f"must be one of {', '.join(KINDS)}, not {kind!r:.40}", field="kind")
        client = self.client()
        try:
            col = client.get_collection(name, embedding_function=None)
        except (NotFoundError, ValueError) as exc:
            if not create:
                known = ", ".join(sorted(c.name for c in client.list_collections())) or "none"
                raise UsageError(f"unknown collection {name!r} in {self.location} (known: {known})",
                                 field=field) from exc
            col = client.get_or_create_collection(
                name, embedding_function=None, configuration=self._configuration(),
                metadata=collection_metadata(kind, self.embedder),
            )
        check_collection(col, kind, self.embedder, field=field)
        self._collections[name] = col
        return col

    def _configuration(self) -> dict[str, Any]:
        hnsw: dict[str, Any] = {"space": "cosine"}
        if self.config.ef_search is not None:
            hnsw["ef_search"] = self.config.ef_search
        return {"hnsw": hnsw}

    async def collection(self, name: str, *, kind: Kind, create: bool = False, field: str = "collection") -> Any:
        """Async twin of ``collection_sync``."""
        return await self._run(self.collection_sync, name, kind=kind, create=create, field=field)

    def _on(self, name: str, op: Callable[[Any], T], *, kind: Kind, create: bool = False,
            field: str = "collection") -> T:
        """``op(collection)`` (blocking); a collection dropped since it was opened is opened again by its name."""
        from chromadb.errors import NotFoundError

        try:
            return op(self.collection_sync(name, kind=kind, create=create, field=field))
        except NotFoundError:
            # Another process deleted it, and may have made it again (a re-ingest): the id we held is gone, the
            # name may not be. Reopened, an unknown name is refused naming the known ones.
            self._collections.pop(name, None)
            return op(self.collection_sync(name, kind=kind, create=create, field=field))

    async def _aon(self, name: str, op: Callable[[Any], T], *, kind: Kind, create: bool = False,
                   field: str = "collection") -> T:
        """Async twin of ``_on``."""
        return await self._run(self._on, name, op, kind=kind, create=create, field=field)

    async def collections(self) -> list[str]:
        """Names of every collection in the store (none in an embedded store whose directory is not made yet)."""
        if self._client_obj is None and self.config.host is None and not Path(self._path()).exists():
            return []  # opening it would create it: a question (is a collection there?) must write nothing
        return await self._run(lambda: sorted(c.name for c in self.client().list_collections()))

    async def delete_collection(self, name: str) -> None:
        """Delete ``name`` if it exists."""
        from chromadb.errors import NotFoundError

        def run() -> None:
            try:
                self.client().delete_collection(name)
            except (NotFoundError, ValueError):
                pass

        self._collections.pop(name, None)
        try:
            await self._run(run)
        finally:
            self.wrote(name)

    async def collection_meta(self, name: str, *, kind: Kind) -> dict[str, Any]:
        """The metadata ``name`` holds now (read afresh: another process may have changed it)."""
        self._collections.pop(name, None)
        return dict((await self.collection(name, kind=kind)).metadata or {})

    async def mark_collection(self, name: str, marks: Mapping[str, Any], *, kind: Kind) -> None:
        """Add ``marks`` to ``name``'s metadata (left as is when it holds legacy ``hnsw:`` keys, which Chroma refuses
        to be given again)."""
        def run(col: Any) -> None:
            meta = dict(col.metadata or {})
            if not any(k.startswith("hnsw:") for k in meta):
                col.modify(metadata={**meta, **marks})

        await self._aon(name, run, kind=kind)

    def count_sync(self, name: str, *, kind: Kind, field: str = "collection") -> int:
        """Records in ``name`` (blocking)."""
        return int(self._guard(self._on, name, lambda col: col.count(), kind=kind, field=field))

    async def count(self, name: str, *, kind: Kind, field: str = "collection") -> int:
        """Records in ``name``. A health check's count, which may be left hanging, runs ``count_sync`` on a daemon
        thread of its own instead (``genroute.runtime.threads.on_daemon_thread``), which the process's exit does not
        wait for."""
        return int(await self._aon(name, lambda col: col.count(), kind=kind, field=field))

    def max_batch_size(self) -> int:
        """The most records Chroma accepts in one write (blocking)."""
        return int(self._guard(lambda: self.client().get_max_batch_size()))

    async def aclose(self) -> None:
        """Forget the client; Chroma flushes each write itself."""
        self._collections.clear()
        self._client_obj = None


def server_host(host: str) -> str:
    """A Chroma server's host as the write stamp keys it: every loopback spelling (``localhost``, ``127.0.0.1``,
    ``::1``) as one, since they reach the same local server (two servers on one port of different loopback addresses
    sharing a stamp only read their pools again)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = name in ("localhost", "ip6-localhost", "ip6-loopback") or name.endswith(".localhost")
    return "loopback" if loopback else name


@lru_cache(maxsize=4)
def _local_embedder(threads: int, max_length: int, batch_size: int) -> Embedder:
    """One ONNX session per setting per process: stores on the same settings share it (~1 s to load)."""
    from genroute.knowledge.embedders import LocalEmbedder

    return LocalEmbedder(threads, max_length, batch_size)
