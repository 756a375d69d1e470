"""Request deadlines on one timer per event loop: ``with deadline_at(when):`` is ``asyncio.timeout_at`` for many
requests at once (and a plain context manager: entering and leaving it awaits nothing).

``asyncio.timeout_at`` schedules a timer for every block, and a block that ends in time cancels it: every request
pays for a timer handle, its heap push and its cancellation, and the cancelled handle stays in the event loop's
heap until its time comes or the heap is rebuilt (35–42 k instructions a request,
``benchmarks/deadline_instructions.py``).
Here the deadlines that fall in the same ``RESOLUTION_S`` slot of the loop's clock are one slot, and a loop has
one timer, set for its earliest slot. A block that ends in time leaves its slot (the last one out drops it) and
cancels nothing: the timer, when it fires, ends the blocks of every slot now due, skips the slots emptied
meanwhile and is set again for the next one. Requests with the same timeout (a router's ``timeout_s``) arrive in
the order of their deadlines, so each new slot is later than the timer's and schedules nothing: a steady stream
of requests that end in time sets the timer about once a timeout. A block ends at most ``RESOLUTION_S`` after
its deadline, never before.

The semantics are ``asyncio.timeout``'s: at the deadline the task is cancelled, and the block's exit turns that
cancellation into ``TimeoutError``, unless the task was cancelled from elsewhere too (``Task.cancelling`` and
``Task.uncancel``, as ``asyncio.Timeout`` counts them); a block that swallowed the cancellation ends normally.
The timer runs in an empty context: it holds no request's context (spans, accounting) while it waits.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import math
import threading
import time
from typing import Any

#: The width of a slot of deadlines: a block ends at most this long after its deadline.
RESOLUTION_S = 0.01
#: A deadline this far on the monotonic clock (some 30 million years) is none: a caller's timeout_s of 1e308 is
#: "no hurry", and its slot key (``when / RESOLUTION_S``) would not even be a number.
_NEVER = 1e15

class _Local(threading.local):
    """Each thread's timers, for the loop it runs (kept, with that loop, until the thread runs another)."""

    timers: _Timers | None = None  # a thread's until its first deadline


_local = _Local()


class _Slot(set["deadline_at"]):
    """The blocks still running whose deadline falls in one slot."""

    __slots__ = ("timers", "key")

    timers: _Timers
    key: int


class _Timers:
    """One event loop's slots (by the slot's number on the loop's clock) and its one timer."""

    __slots__ = ("loop", "monotonic", "slots", "keys", "queued", "timer", "due", "context")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: Whether the loop's clock is ``time.monotonic`` (asyncio's own loops): a deadline needs no conversion.
        self.monotonic = type(loop).time is asyncio.BaseEventLoop.time
        self.slots: dict[int, _Slot] = {}
        #: A heap of the slots' keys, those of slots emptied since included until the timer passes them, each
        #: once (``queued``: the same keys as a set). Ints: nothing the garbage collector traverses.
        self.keys: list[int] = []
        self.queued: set[int] = set()
        self.timer: asyncio.TimerHandle | None = None
        #: The key of the slot the timer is set for (``inf``: no timer).
        self.due: float = math.inf
        #: The empty context the timer runs in: this loop's own (a context can be entered by one thread at a
        #: time, and another thread's loop may be running its timer at the same moment).
        self.context = contextvars.Context()

    def join(self, block: deadline_at, when: float) -> _Slot:
        """Put ``block`` in the slot of ``when`` (the loop's clock); the timer is set for it if it is the earliest."""
        key = math.ceil(when / RESOLUTION_S)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = _Slot()
            slot.timers, slot.key = self, key
            if key not in self.queued:  # else the slot was emptied and made again: the timer is due by then
                self.queued.add(key)
                heapq.heappush(self.keys, key)
                if key < self.due:
                    self._set(key)
        slot.add(block)
        return slot

    def _set(self, key: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.due = key
        self.timer = self.loop.call_at(key * RESOLUTION_S, self._fire, context=self.context)

    def _fire(self) -> None:
        """End the blocks of every slot due; set the timer for the next slot that still has blocks."""
        keys, slots = self.keys, self.slots
        # The slot it was set for, and any later one whose time has come too (a loop that ran late).
        due = max(self.due, math.floor(self.loop.time() / RESOLUTION_S))
        self.timer, self.due = None, math.inf
        while keys and (keys[0] <= due or keys[0] not in slots):
            key = heapq.heappop(keys)
            self.queued.discard(key)
            slot = slots.pop(key, None)
            if slot is not None:
                for block in slot:
                    block._expire()
        if keys:
            self._set(keys[0])


class deadline_at:  # noqa: N801 - named like asyncio.timeout_at, which it stands in for
    """``with deadline_at(when):`` (inside a task) ends the block with ``TimeoutError`` once ``when`` (a
    ``time.monotonic()`` instant; ``None``: never) has passed, within ``RESOLUTION_S``."""

    # What a block starts with, as class attributes: one is made on every request, and sets its own as it goes.
    _slot: _Slot | None = None
    _expired = False
    _entered = False

    def __init__(self, when: float | None) -> None:
        self._when = when

    def __enter__(self) -> deadline_at:
        # As asyncio.Timeout: once only (entered again inside itself it would lose its timer; after it expired,
        # its exit would uncancel its task once more; after it ended in time, or without a deadline, it is spent).
        if self._entered:
            raise RuntimeError("deadline_at has already been entered")
        self._entered = True
        if self._when is not None and self._when < _NEVER:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)  # given the loop, it does not look it up again
            if task is None:
                raise RuntimeError("deadline_at should be used inside a task")
            self._task, self._cancelling = task, task.cancelling()
            timers = _local.timers
            if timers is None or timers.loop is not loop:  # a thread's first loop, or a new one
                timers = _local.timers = _Timers(loop)  # the old loop's timers go on with the blocks using them
            when = self._when if timers.monotonic else loop.time() + (self._when - time.monotonic())
            self._slot = timers.join(self, when)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot.discard(self)
            if not slot:  # the last block out, in time: the slot goes (its key stays queued; no timer cancelled)
                del slot.timers.slots[slot.key]
        if self._expired:
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def expired(self) -> bool:
        """Whether the deadline passed while the block ran (it is then ended by ``TimeoutError``)."""
        return self._expired

    def _expire(self) -> None:
        self._slot = None
        self._expired = True
        self._task.cancel()
