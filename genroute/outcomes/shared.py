"""The outcome store on the shared state store (Redis when the router's ``state`` section names one).

Records go into one append-only list of the state store, one JSON line per write (a shadow's pair, a feedback):
an append is atomic on the server, so writes from every process land, in order. Readers replay the list and merge
the writes per id exactly as the SQLite store merges them, keeping their place so that later reads fetch only what
was appended since. The same async methods as ``OutcomeStore``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from genroute.errors import UsageError
from genroute.outcomes.records import OutcomeRecord

if TYPE_CHECKING:
    from genroute.state import StateStore


class SharedOutcomeStore:
    """Outcome records in a ``StateStore`` list (``key``), merged per id on read."""

    def __init__(self, state: StateStore, *, key: str = "outcomes") -> None:
        self.state = state
        self.key = key
        self.path = None  # no local file
        self._merged: dict[str, OutcomeRecord] = {}
        self._seen = 0
        self._lock = asyncio.Lock()

    async def upsert(self, record: OutcomeRecord) -> OutcomeRecord:
        """Append ``record``; return the merged record with its id as the store now holds it."""
        if not record.id:
            raise UsageError("an outcome record needs metadata.id", field="metadata.id")
        await self.state.append(self.key, record.model_dump_json().encode())
        await self._catch_up()
        return self._merged[record.id]

    async def get(self, id: str) -> OutcomeRecord | None:
        """The merged record with ``id``, or ``None``."""
        await self._catch_up()
        return self._merged.get(id)

    async def records(self, *, task: str | None = None, captured: bool | None = None,
                      since: float | None = None) -> list[OutcomeRecord]:
        """Merged records in order of first write, filtered like ``OutcomeStore.records``."""
        await self._catch_up()
        found = list(self._merged.values())
        if task is not None:
            found = [r for r in found if r.task == task]
        if captured is not None:
            found = [r for r in found if (r.input is not None and r.output is not None) == captured]
        if since is not None:
            found = [r for r in found if float(r.metadata.get("at", 0.0)) >= since]
        return found

    async def _catch_up(self) -> None:
        async with self._lock:  # one replay at a time: each appended line is merged exactly once
            lines = await self.state.items(self.key, self._seen)
            for line in lines:
                record = OutcomeRecord.model_validate_json(line)
                old = self._merged.get(record.id)
                self._merged[record.id] = record if old is None else old.merged(record)
            self._seen += len(lines)
