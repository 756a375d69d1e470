"""``UnsentWrites``: what a shared state store answered from its fallback memory and still owes the shared store.

Two kinds of write are kept for replay once the store answers again: settles (so the shared spend is complete)
and list appends (so the shared outcome log has every record). Each carries an id that the store's script turns
into a marker, so a batch sent again after an interrupted replay applies nothing twice. A batch is taken off
the queue while it is sent and given back, in front and in order, if sending it failed.

Bounds: at most ``MAX_UNSETTLED`` settles (beyond that, a settle is charged in this process's memory only) and,
per list, at most ``MAX_UNPUSHED`` appends or the list's own ``max_items``, whichever is smaller (more could not
stay in the list anyway). Beyond that the oldest waiting append is dropped; so is one older than the list's
``max_age_s`` when its turn comes. Dropped appends are counted per list and logged (at most once a minute).
With a journal (``state.journal``, ``genroute.state.journal``) each kept write is also recorded in a local file
before it is kept here, and deleted from it once the shared store took it (or it was dropped): what a process
killed meanwhile owed is replayed by the next one that opens the file, which ``adopt`` puts in front of its queue
(``ADOPT_MAX`` waiting at most: the rest once those are sent).
Thread-safe: a store used from several event loops (each with its own connections) shares one queue; every
method takes its lock (never across an await), also those that only look (a list's queue may be created by another
thread meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from genroute.log_every import LogEvery
from genroute.state import ListReplay
from genroute.state.ops import Settle
from genroute.state.redis_script import Push

if TYPE_CHECKING:
    from genroute.state.journal import Journal

_log = logging.getLogger("genroute.state.redis_store")
#: Settles kept for replay (beyond this, the newest are charged in memory only).
MAX_UNSETTLED = 100_000
#: Appends kept for replay per list, at most (the list's ``max_items`` bounds it further).
MAX_UNPUSHED = 100_000
#: Writes taken over from a journal are read into memory only while fewer than this many are waiting (the rest when
#: those are sent): a journal that killed processes left large is not loaded whole, nor does it fill the queue.
ADOPT_MAX = 10_000
#: At most one "dropped" warning per this many seconds.
LOG_INTERVAL_S = 60.0

#: A waiting write: (settle, id) or (push, id, monotonic time it was made).
Entry = tuple[Settle, str] | tuple[Push, str, float]


class UnsentWrites:
    """Settles and list appends made in fallback memory, oldest first, waiting to be sent to the shared store."""

    def __init__(self, report: Callable[[str, str, int], None], journal: Journal | None = None) -> None:
        self._report = report  # (list key, "replayed" or "dropped", how many): for the metric
        #: Where each kept write is recorded before it is kept here (``state.journal``), if anywhere.
        self.journal = journal
        self.settles: deque[tuple[Settle, str]] = deque()
        self.pushes: dict[str, deque[tuple[Push, str, float]]] = {}
        #: Appends per list sent to the shared store after an outage / dropped instead.
        self.replayed: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._drop_log = LogEvery(LOG_INTERVAL_S)
        self._lock = threading.Lock()  # never held across an await
        #: The clock a waiting append's age is measured on (``time.monotonic``; a test moves it forward).
        self.clock: Callable[[], float] = time.monotonic

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self.settles) or any(self.pushes.values())

    def settle(self, op: Settle, settle_id: str) -> None:
        """Keep a settle answered from memory (unless ``MAX_UNSETTLED`` are waiting already)."""
        with self._lock:
            if len(self.settles) < MAX_UNSETTLED:
                if self.journal is not None:  # recorded first: a process killed after this line has it on disk
                    self.journal.add([(op, settle_id, time.time())])
                self.settles.append((op, settle_id))

    def push(self, op: Push, push_id: str) -> None:
        """Keep an append answered from memory; drop the oldest waiting append of its list beyond the bound."""
        bound = min(op.max_items or MAX_UNPUSHED, MAX_UNPUSHED)
        with self._lock:
            if self.journal is not None:
                self.journal.add([(op, push_id, time.time())])
            queue = self.pushes.setdefault(op.key, deque())
            queue.append((op, push_id, self.clock()))
            over = max(0, len(queue) - bound)
            dropped = [queue.popleft()[1] for _ in range(over)]
            if dropped and self.journal is not None:
                self.journal.remove(dropped)
        if over:
            self._drop(op.key, over, f"more than {bound} waiting")

    def take(self, size: int) -> list[Entry]:
        """The next batch to send (settles first, then one list's appends, oldest first), taken off the queue; once
        it is empty, the next part of what the journal holds of processes that are gone."""
        if self.journal is None:
            return self._take(size)
        while True:
            if not self:
                self.adopt()
            batch = self._take(size)
            mine = self.journal.mine([entry[1] for entry in batch]) if batch else None
            if mine is None:  # nothing left, or the file cannot say (sent: Redis's markers)
                return batch
            batch = [entry for entry in batch if entry[1] in mine]  # the rest is another process's (or sent)
            if batch:
                return batch

    def _take(self, size: int) -> list[Entry]:
        now = self.clock()
        batch: list[Entry] = []
        aged: Counter[str] = Counter()
        gone: list[str] = []
        with self._lock:
            if self.settles:
                return [self.settles.popleft() for _ in range(min(size, len(self.settles)))]
            for key, queue in self.pushes.items():
                while queue and len(batch) < size:
                    entry = queue.popleft()
                    if entry[0].max_age_s is not None and now - entry[2] > entry[0].max_age_s:
                        aged[key] += 1  # the list would have trimmed it by now
                        gone.append(entry[1])
                    else:
                        batch.append(entry)
                if batch:
                    break
            if gone and self.journal is not None:
                self.journal.remove(gone)
        for key, n in aged.items():
            self._drop(key, n, "older than the list's max age")
        return batch

    def give_back(self, batch: list[Entry]) -> None:
        """Put a batch that was not sent back in front of the queue, in its order."""
        with self._lock:
            for entry in reversed(batch):
                if len(entry) == 2:
                    self.settles.appendleft(entry)
                else:
                    self.pushes.setdefault(entry[0].key, deque()).appendleft(entry)

    def sent(self, batch: list[Entry]) -> None:
        """Count the appends of a batch the shared store took (and delete the batch from the journal)."""
        sent = Counter(entry[0].key for entry in batch if len(entry) == 3)
        with self._lock:
            if self.journal is not None:
                self.journal.remove(entry[1] for entry in batch)
            self.replayed.update(sent)
        for key, n in sent.items():
            self._report(key, "replayed", n)

    def adopt(self) -> int:
        """Put in front of the queue, oldest first, writes the journal holds of processes that are gone (up to
        ``ADOPT_MAX`` waiting); how many."""
        if self.journal is None:
            return 0
        with self._lock:
            room = ADOPT_MAX - len(self.settles) - sum(len(q) for q in self.pushes.values())
            if room <= 0:
                return 0
            found = self.journal.adopt(room)
            now, wall = self.clock(), time.time()
            for op, entry_id, made in reversed(found):
                if isinstance(op, Settle):
                    self.settles.appendleft((op, entry_id))
                else:  # its age on this process's clock
                    self.pushes.setdefault(op.key, deque()).appendleft((op, entry_id, now - (wall - made)))
        return len(found)

    def counts(self, key: str) -> ListReplay:
        """The replay counts of list ``key``."""
        with self._lock:
            return ListReplay(self.replayed[key], self.dropped[key], len(self.pushes.get(key, ())))

    def unsettled(self) -> dict[str, int]:
        """What the waiting settles add to each account's spend (units), by the account they charge."""
        by_account: Counter[str] = Counter()
        with self._lock:
            for op, _ in self.settles:
                by_account[op.charge or op.account] += op.amount
        return dict(by_account)

    def waiting(self) -> int:
        """Writes waiting to be sent."""
        with self._lock:
            return len(self.settles) + sum(len(q) for q in self.pushes.values())

    def _drop(self, key: str, n: int, why: str) -> None:
        with self._lock:
            self.dropped[key] += n
        self._report(key, "dropped", n)
        if self._drop_log.due():
            _log.warning("an append to the list %r made while the state store was unreachable will not be replayed "
                         "to it (%s): %d dropped so far", key, why, self.dropped[key])
