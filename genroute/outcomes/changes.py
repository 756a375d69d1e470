"""What an outcome store answers a reader that keeps its place (``RunningOutcomes``): the records written since."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genroute.outcomes.records import OutcomeRecord

#: A record's place in the store's order (``records``'): its creation time or rank, then its id.
Key = tuple[float, str]


@dataclass(frozen=True)
class Place:
    """Where a reader of a store stopped: which store (``source``), its last write read (``at``), and what else
    must not have changed for the place to hold (``extra``)."""

    source: str
    at: int
    extra: int = 0


@dataclass(frozen=True)
class Changes:
    """What a store's ``changes`` answers: the records written since a place (all of them when ``full``), in the
    store's order, and the ids it no longer holds."""

    place: Place
    full: bool
    records: list[tuple[Key, OutcomeRecord]]
    removed: list[str] = field(default_factory=list)
