"""Whether this router's dependencies answer now: ``router.health()`` / ``await router.ahealth()`` (a mixin of
``Router``), for a load balancer's readiness check and an operator's ``genroute health``.

Each dependency gets one cheap probe, all at once, each bounded by ``timeout_s`` (a hung dependency is reported as
not answering, it does not hang the check); no probe calls a model that bills:

- ``state`` (a shared store: Redis): one ``PING``, past the store's outage back-off and memory fallback;
- ``backends.<name>`` (a backend that reads a Chroma collection: ICL, RAG): the collection counted, one call;
- ``outcomes``: a SQLite file opened read-write and its write lock taken and given back (nothing written; a read-only
  one is counted instead), and room for ``outcomes.room.ROOM_BYTES`` more (its disk's free space, a quota, the file
  size limit: ``_room``); a shared list: the state store's ``PING`` (and its SQLite archive, if any, as a file);
- ``engines.<name>`` (an engine a backend calls): Gemini, one ``countTokens`` for a model a backend names (free);
  local, a model instance loaded (loaded by the check if none was, and kept for the next request).

Blocking probes (Chroma, the SQLite file) run on daemon threads of genroute's own (``on_daemon_thread``): one left
hanging does not hold the process's exit, as a thread of the loop's default executor did. One probe of a resource
runs at a time: checks on this router's loop share its task (``_one_at_a_time``), and a check on any other loop (an
``asyncio.run`` per request) or a direct ``backend.probe()`` waits for the thread still running instead of starting
another.

The last scheduled refresh is reported beside them (``refresh``), not in ``ready``: a refresh that failed keeps the
policy the router had, and every replica reading the same store would fail it together.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict

from genroute.errors import header_secrets
from genroute.public_model import PublicModel
from genroute.router.learning import check_seconds
from genroute.runtime.portal import refuse_inside_loop
from genroute.runtime.threads import on_daemon_thread

if TYPE_CHECKING:
    from pathlib import Path

    from genroute.backends.base import Backend
    from genroute.outcomes.recorder import OutcomeRecorder
    from genroute.outcomes.settings import OutcomeSettings
    from genroute.outcomes.store import OutcomeStore
    from genroute.router.executor import Executor
    from genroute.router.refresh_record import RefreshRecord
    from genroute.runtime.portal import Portal
    from genroute.runtime.resources import Resources
    from genroute.state import StateStore

#: How long each probe may take by default (a load balancer's check is usually given a few seconds in all).
PROBE_TIMEOUT_S = 2.0
#: How much longer than its probes' ``timeout_s`` a sync check waits for the router's loop thread to run them.
LOOP_SLACK_S = 2.0
#: The most characters of an error kept in a result (a probe's error is one line for an operator, not a dump).
_ERROR_CHARS = 300

Kind = Literal["router", "state", "knowledge", "outcomes", "engine"]
Probe = tuple[str, Kind, Callable[[], Awaitable[str | None]]]


class DependencyHealth(PublicModel):
    """One dependency's answer to its probe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Where the config names it: ``state``, ``outcomes``, ``backends.<name>``, ``engines.<name>``.
    name: str
    kind: Kind
    ok: bool
    #: How long the probe took (its timeout, when it had no answer).
    latency_ms: float
    #: What the probe checked (``ok``), e.g. ``PING answered``.
    detail: str | None = None
    #: Why it is not ok: the error's type and message, credentials masked.
    error: str | None = None


class RefreshHealth(PublicModel):
    """The router's last scheduled refresh (``outcomes.refresh_every_s``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: False when the last scheduled refresh failed (the router kept the policy it had).
    ok: bool
    #: When it ran (Unix time); ``None``: none ran yet.
    at: float | None = None
    error: str | None = None


class Health(PublicModel):
    """``router.health()``: ``ready`` when every dependency answered its probe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ready: bool
    dependencies: tuple[DependencyHealth, ...]
    #: ``None``: the router has no scheduled refresh.
    refresh: RefreshHealth | None = None


class Checks:
    """``health``/``ahealth`` (mixed into ``Router``)."""

    backends: dict[str, Backend]
    resources: Resources
    state: StateStore
    outcome_settings: OutcomeSettings | None
    _portal: Portal
    _closed: bool
    _refresh_record: RefreshRecord
    _executor: Executor

    async def ahealth(self, *, timeout_s: float = PROBE_TIMEOUT_S) -> Health:
        """Probe every dependency at once (each at most ``timeout_s``): ``ready`` when all answered. A closed router
        (or one closing) is not ready; nothing is probed."""
        check_seconds(timeout_s, "timeout_s")
        if self._closed:
            return _closed()
        secrets = self._secrets()
        checked = time.monotonic()  # a probe begun before: an earlier check's, still running
        found = await asyncio.gather(*(_probe(name, kind, self._one_at_a_time(name, probe), checked, timeout_s, secrets)
                                       for name, kind, probe in self._probes(timeout_s)))
        return Health(ready=all(d.ok for d in found), dependencies=tuple(found), refresh=self._refresh_health())

    def health(self, *, timeout_s: float = PROBE_TIMEOUT_S) -> Health:
        """Sync ``ahealth`` (not from inside a running event loop). The probes run on the router's loop thread: one
        that does not run them within ``timeout_s + LOOP_SLACK_S`` (held by blocking work) is not ready."""
        check_seconds(timeout_s, "timeout_s")
        if self._closed:  # its loop thread may be stopped already
            return _closed()
        refuse_inside_loop("health")
        bound = timeout_s + LOOP_SLACK_S
        start = time.monotonic()
        try:
            return self._portal.call(self.ahealth(timeout_s=timeout_s), timeout_s=bound)
        except TimeoutError:
            latency_ms = round((time.monotonic() - start) * 1000, 3)
            return Health(ready=False, dependencies=(DependencyHealth(
                name="router", kind="router", ok=False, latency_ms=latency_ms,
                error=f"the router's event loop did not run the check within {bound:g} s"),))

    def _one_at_a_time(self, name: str, probe: Callable[[], Awaitable[str | None]]) -> Running:
        """The probe of ``name`` still running from an earlier check (on this loop), else ``probe`` started now: a
        probe that timed out is left to end (its thread cannot be stopped), and a hung dependency checked every second
        started a new one each time, each holding a thread of the loop's default executor (a few per core: the
        router's own work on it waited behind them). One left on a loop that no longer runs (stopped after
        ``run_until_complete``, not closed) never ends: not waited for, a new one starts here."""
        running: dict[str, Running] = self.__dict__.setdefault("_probing", {})
        loop = asyncio.get_running_loop()
        earlier = running.get(name)
        if earlier is not None and not earlier.task.done() and earlier.task.get_loop().is_running():
            return earlier
        task = loop.create_task(_answer(probe))
        running[name] = begun = Running(task, time.monotonic())
        return begun

    def _probes(self, timeout_s: float) -> list[Probe]:
        from genroute.backends.base import Backend
        from genroute.engines.base import Engine

        probes: list[Probe] = []
        if self.state.shared:
            probes.append(("state", "state", self.state.ping))
        recorder = self._executor.outcomes
        if recorder is not None:
            probes.append(("outcomes", "outcomes", lambda: _outcome_store(recorder, timeout_s)))
        models: dict[str, str] = {}  # engine -> a model a backend calls it with
        for name, backend in self.backends.items():
            if type(backend).probe is not Backend.probe:
                probes.append((f"backends.{name}", "knowledge", backend.probe))
            models.setdefault(backend.config.engine, backend.config.model)
        for name, model in models.items():
            engine = self.resources.engines.get(name)
            if engine is not None and type(engine).probe is not Engine.probe:
                probes.append((f"engines.{name}", "engine", functools.partial(engine.probe, model)))
        return probes

    def _secrets(self) -> tuple[str, ...]:
        """What no error text may show: engine keys and headers, Chroma headers, the Redis URL's password."""
        from urllib.parse import urlsplit

        from genroute.router.outcome_setup import engine_secrets

        found = list(engine_secrets(self.resources))
        for engine in self.resources.engines.values():
            values = getattr(engine.config, "header_values", None)
            if callable(values):
                found += header_secrets(values())
        headers = getattr(getattr(self.resources.knowledge, "config", None), "headers", None)
        if headers:
            found += header_secrets(headers)
        url = getattr(getattr(self.state, "config", None), "url", None)
        password = urlsplit(url).password if isinstance(url, str) else None
        if password:
            found.append(password)
        return tuple(sorted(set(found), key=len, reverse=True))

    def _refresh_health(self) -> RefreshHealth | None:
        if self.outcome_settings is None or self.outcome_settings.refresh_every_s is None:
            return None
        record = self._refresh_record
        return RefreshHealth(ok=record.error is None, at=record.at, error=record.error)


@dataclass(frozen=True)
class Running:
    """A dependency's probe, run once whatever the number of checks that wait for it (``_one_at_a_time``)."""

    task: asyncio.Task[str | None]
    #: When it began (``time.monotonic``).
    begun: float


async def _answer(probe: Callable[[], Awaitable[str | None]]) -> str | None:
    return await probe()


def _retrieved(task: asyncio.Task[str | None]) -> None:
    """A probe's failure no check waited for any more is its answer to none: retrieved, not logged by asyncio."""
    if not task.cancelled():
        task.exception()


async def _probe(name: str, kind: Kind, running: Running, checked: float, timeout_s: float,
                 secrets: tuple[str, ...]) -> DependencyHealth:
    start = time.monotonic()
    detail = error = None
    try:
        if running.task.get_loop() is not asyncio.get_running_loop():  # cannot be awaited here (nor touched: its
            # callbacks are its loop's, which runs in another thread)
            error = (f"its probe begun {start - running.begun:.1f} s ago, by a check on another event loop, has not "
                     "answered yet (one probe at a time)")
        else:
            running.task.remove_done_callback(_retrieved)
            running.task.add_done_callback(_retrieved)
            detail = await asyncio.wait_for(asyncio.shield(running.task), timeout_s)  # the probe itself goes on
    except TimeoutError:
        error = f"no answer in {timeout_s:g} s"
        if running.begun < checked:
            error += (f" (its probe begun {start - running.begun:.1f} s ago, by an earlier check, still waits: "
                      "one probe at a time)")
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency is its answer
        error = _scrubbed(f"{type(exc).__name__}: {exc}", secrets)
    latency_ms = round((time.monotonic() - start) * 1000, 3)
    return DependencyHealth(name=name, kind=kind, ok=error is None, latency_ms=latency_ms, detail=detail, error=error)


def _scrubbed(text: str, secrets: tuple[str, ...]) -> str:
    """One line of ``text``, with the router's secrets and anything shaped like one masked (as an outcome store's
    errors are: ``redact_secrets``), cut to ``_ERROR_CHARS``."""
    from genroute.outcomes.settings import redact_secrets

    return " ".join(redact_secrets(text, secrets).split())[:_ERROR_CHARS]


def _closed() -> Health:
    return Health(ready=False, dependencies=(DependencyHealth(name="router", kind="router", ok=False, latency_ms=0.0,
                                                              error="the router is closed"),))


async def _outcome_store(recorder: OutcomeRecorder, timeout_s: float) -> str:
    from genroute.outcomes.shared import SharedOutcomeStore

    store = recorder.store
    if isinstance(store, SharedOutcomeStore):
        said = await store.state.ping() or "state store"
        if store.archive is None:
            return f"shared list: {said}"
        archive = await on_daemon_thread(store.archive.path, "genroute-probe", _sqlite_writable, store.archive,
                                         timeout_s)
        return f"shared list: {said}; archive: {archive}"
    return await on_daemon_thread(store.path, "genroute-probe", _sqlite_writable, store, timeout_s)


def _sqlite_writable(store: OutcomeStore, timeout_s: float) -> str:
    """Open the file read-write (never made anew) and take its write lock, then give it back: nothing is written. A
    file SQLite cannot write there (the file or its directory read-only) is read instead: such a router serves and
    refreshes from it (production.md), and only its writes are refused."""
    from genroute.outcomes.sqlite_files import read_only_reason, unwritable

    path = store.path
    if not path.exists():
        raise FileNotFoundError(f"no outcome store file at {path}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout_s,
                             isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        if unwritable(path, exc, "outcomes.path") is None:
            raise
        return f"{path.name}: {store.count_sync()} records read; writes refused: {read_only_reason(path)}"
    _room(path)
    return f"{path.name}: write lock taken"


def _room(path: Path) -> None:
    """``OutcomeStoreError`` when the store at ``path`` has no room for ``ROOM_BYTES`` more: its disk (nearly) full,
    a disk quota or the process's file size limit reached (``outcomes.room.no_room``). The write lock taken
    and given back writes nothing, and neither does a write rolled back (SQLite keeps its pages in memory until the
    commit): while another connection keeps the file open (the router's own writer while writes come, another
    replica), its ``-wal`` and ``-shm`` files are there and the lock is taken with no room left, where every commit
    then fails ("database or disk is full"; "disk I/O error" for a quota or a size limit). A ``-wal`` file that grew
    before may still take a few commits."""
    from genroute.errors import OutcomeStoreError
    from genroute.outcomes.room import no_room

    full = no_room(path)
    if full is not None:
        why = os.strerror(full.errno) if full.errno else "no room"
        raise OutcomeStoreError(f"{full.strerror}: its writes fail ({why})", path=str(path))
