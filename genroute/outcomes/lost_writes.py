"""The outcome recorder's writes and what it does with one that fails (a mixin of ``OutcomeRecorder``).

An outcome lost must not fail the request it describes: a write that fails is counted (``write_errors``, and the
router's ``genroute.outcomes.write_errors`` through ``on_lost``) and logged at most once a minute with the count
lost since, naming the file's reason where the file refused it. Feedback, which the user waits for, raises the
same reason as an ``OutcomeStoreError`` instead (``_store_error``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from genroute.errors import ConfigError, OutcomeStoreError, StateUnavailable
from genroute.outcomes.settings import redact_secrets

if TYPE_CHECKING:
    from genroute.log_every import LogEvery
    from genroute.outcomes.records import OutcomeRecord
    from genroute.outcomes.shared import SharedOutcomeStore
    from genroute.outcomes.store import OutcomeStore

#: The recorder's logger, as before these methods moved here: an operator's logging settings for it still apply.
_log = logging.getLogger("genroute.outcomes.recorder")


class LostWrites:
    """``_write``, and the counting and logging of a write that failed (mixed into ``OutcomeRecorder``)."""

    store: OutcomeStore | SharedOutcomeStore
    write_errors: int
    _secrets: tuple[str, ...]
    _lock: threading.Lock
    _lost_log: LogEvery
    _lost_unlogged: int

    #: Called once for each write counted in ``write_errors`` (the router's ``genroute.outcomes.write_errors``).
    on_lost: Callable[[], None] | None = None

    def _count_error(self) -> None:
        if self.on_lost is not None:
            self.on_lost()
        with self._lock:  # also from the store's writer thread
            self.write_errors += 1

    def _store_error(self, what: str, exc: BaseException) -> OutcomeStoreError:
        """``what`` was not written because the store's file refused it: SQLite's or the system's reason (it quotes
        no request), with the file. Beside a shared list (an ``archive``), the record is in the list already, and the
        file takes it at a later read."""
        path = str(getattr(self.store, "path", "") or "")
        reason = redact_secrets(f"{type(exc).__name__}: {exc}", self._secrets)
        where = (" is in the shared outcome list, not yet in its file" if getattr(self.store, "archive", None)
                 else " not stored")
        return OutcomeStoreError(f"{what}{where}: the outcome store {path!r} could not be written ({reason})",
                                 path=path)

    async def _write(self, record: OutcomeRecord) -> OutcomeRecord | None:
        try:
            return await self.store.upsert(record)
        except Exception as exc:  # an outcome lost must not fail the request it describes
            if isinstance(exc, StateUnavailable) and exc.kept:  # not lost (on_error: closed): sent once it answers
                _log.info("outcome for %s kept until the state store answers", record.id)
                return None
            self._lost(record.id, exc)
            return None

    def _lost(self, id: str, exc: BaseException) -> None:
        """An outcome write that failed: counted, and logged (at most once a minute, with the count lost since) with
        the file's reason where the file refused it (what the operator has to fix: a read-only one is the store's
        ``ConfigError``), else with the error's type alone (a message may quote the request)."""
        self._count_error()
        with self._lock:  # also from the store's writer thread
            self._lost_unlogged += 1
            if not self._lost_log.due():  # a full disk fails every write: at most one warning a minute
                return
            lost, self._lost_unlogged = self._lost_unlogged, 0
        if isinstance(exc, sqlite3.Error | OSError):
            message = str(self._store_error(f"outcome for {id}", exc))
        elif isinstance(exc, ConfigError) and exc.field == "outcomes.path":  # a read-only file or directory: named
            message = f"outcome for {id} not stored: ConfigError: {redact_secrets(str(exc), self._secrets)}"
        else:
            message = f"outcome for {id} not stored: {type(exc).__name__}"
        if lost > 1:
            message += f" ({lost} outcome writes lost since the last such warning)"
        _log.warning("%s", message)
