"""Request deadlines on shared timers: ``with deadline_at(when):`` is ``asyncio.timeout_at`` for many requests
at once (and a plain context manager: entering and leaving it awaits nothing).

``asyncio.timeout_at`` schedules a timer for every block, and a block that ends in time cancels it: the handle
stays in the event loop's heap until its time comes or the heap is rebuilt, and every request pays for the timer,
its heap push and its cancellation (35–42 k instructions a request; 19 k here for requests in flight together,
``benchmarks/deadline_instructions.py``).
Here the deadlines that fall in the same ``RESOLUTION_S`` slot of the loop's clock share one timer: requests
arriving together with the same timeout (the common case: a router's ``timeout_s``) schedule one between them,
and the last of them to end in time cancels it. A block ends at most ``RESOLUTION_S`` after its deadline, never
before.

The semantics are ``asyncio.timeout``'s: at the deadline the task is cancelled, and the block's exit turns that
cancellation into ``TimeoutError``, unless the task was cancelled from elsewhere too (``Task.cancelling`` and
``Task.uncancel``, as ``asyncio.Timeout`` counts them); a block that swallowed the cancellation ends normally.
Timers run in an empty context: a slot's timer holds no request's context (spans, accounting) while it waits.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from typing import Any

#: The width of a slot of deadlines sharing one timer: a block ends at most this long after its deadline.
RESOLUTION_S = 0.01

#: Each thread's timers, for the loop it runs (``timers``; kept, with that loop, until the thread runs another).
_local = threading.local()


class _Slot(set["deadline_at"]):
    """The blocks whose deadline falls in one slot, and the timer that ends them."""

    __slots__ = ("timers", "key", "timer")

    timers: _Timers
    key: int
    timer: asyncio.TimerHandle | None

    def fire(self) -> None:
        """End every block still in the slot: its deadline has passed."""
        del self.timers.slots[self.key]
        self.timer = None
        for block in self:
            block._expire()


class _Timers:
    """One event loop's slots, by the slot's number on the loop's clock."""

    __slots__ = ("loop", "slots", "context")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, _Slot] = {}
        #: The empty context the timers run in: this loop's own (a context can be entered by one thread at a
        #: time, and another thread's loop may be running its timers at the same moment).
        self.context = contextvars.Context()

    def join(self, block: deadline_at, when: float) -> _Slot:
        """Put ``block`` in the slot of ``when`` (the loop's clock), scheduling the slot's timer if it is new."""
        key = math.ceil(when / RESOLUTION_S)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = _Slot()
            slot.timers, slot.key = self, key
            slot.timer = self.loop.call_at(key * RESOLUTION_S, slot.fire, context=self.context)
        slot.add(block)
        return slot


class deadline_at:  # noqa: N801 - named like asyncio.timeout_at, which it stands in for
    """``with deadline_at(when):`` (inside a task) ends the block with ``TimeoutError`` once ``when`` (a
    ``time.monotonic()`` instant; ``None``: never) has passed, within ``RESOLUTION_S``."""

    __slots__ = ("_when", "_task", "_cancelling", "_slot", "_expired")

    def __init__(self, when: float | None) -> None:
        self._when = when
        self._slot: _Slot | None = None
        self._expired = False

    def __enter__(self) -> deadline_at:
        if self._slot is not None or self._expired:  # as asyncio.Timeout: entered again, it would lose its timer
            raise RuntimeError("deadline_at has already been entered")
        if self._when is not None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("deadline_at should be used inside a task")
            self._task, self._cancelling = task, task.cancelling()
            loop = asyncio.get_running_loop()
            timers: _Timers | None = getattr(_local, "timers", None)
            if timers is None or timers.loop is not loop:  # a thread's first loop, or a new one
                timers = _local.timers = _Timers(loop)  # the old loop's timers go on with the blocks using them
            self._slot = timers.join(self, loop.time() + (self._when - time.monotonic()))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot.discard(self)
            if not slot and slot.timer is not None:  # the last block of a slot still waiting: no timer needed
                slot.timer.cancel()
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
