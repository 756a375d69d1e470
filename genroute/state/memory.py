"""``MemoryStateStore``: the state of one process, kept in dicts behind one lock."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from genroute.state import ListRead, StateStore
from genroute.state.ops import LAPSED_S, Admitted, Checked, Claim, Close, Held, Hold, Open, Probe, Release, Settle, Settlement


@dataclass
class _Account:
    spent: int = 0
    held: int = 0
    #: hold id -> (amount, expires at)
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: lapsed hold id -> (amount charged when it lapsed, forgotten at): a late settle replaces that charge
    lapsed: dict[str, tuple[int, float]] = field(default_factory=dict)
    expires: float = float("inf")
    #: The limit of the last hold (another one is a config mismatch between routers sharing the store).
    limit: int | None = None


@dataclass
class _List:
    #: Items trimmed so far: the absolute position of ``items[0]``.
    base: int = 0
    #: (appended at, value), oldest first
    items: deque[tuple[float, bytes]] = field(default_factory=deque)
    epoch: str = field(default_factory=lambda: os.urandom(6).hex())


@dataclass
class _Breaker:
    window_start: float = 0.0
    failures: int = 0
    open_until: float = 0.0  # 0: closed
    probe_until: float = 0.0


#: Accounts kept before the first sweep of those whose window is over.
_SWEEP_ABOVE = 4096


class MemoryStateStore(StateStore):
    """State for one process; thread-safe (the lock is never held across an await)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._lists: dict[str, _List] = {}
        self._ids = itertools.count()
        #: Sweep when the accounts outgrow this (at least twice those the last sweep kept: each new account then
        #: costs the sweeps O(1) on average, not a pass over every live one).
        self._sweep_above = _SWEEP_ABOVE

    def _account(self, name: str, now: float) -> _Account:
        account = self._accounts.get(name)
        if account is None or account.expires <= now:
            account = self._accounts[name] = _Account()
            if len(self._accounts) > self._sweep_above:
                self._sweep(now)
        else:
            if account.lapsed:
                for hold_id in [h for h, (_, until) in account.lapsed.items() if until <= now]:
                    del account.lapsed[hold_id]  # lapsed long ago: its charge stands
            if account.holds:
                # Never settled (its attempt's task died, or the settle is late): charged at its amount, as in Redis.
                for hold_id in [h for h, (_, until) in account.holds.items() if until <= now]:
                    amount = account.holds.pop(hold_id)[0]
                    account.held -= amount
                    account.spent += amount
                    account.lapsed[hold_id] = (amount, now + LAPSED_S)
        return account

    def _sweep(self, now: float) -> None:
        """Drop the accounts whose window is over (windows roll over: nobody reads them again)."""
        for key in [k for k, a in self._accounts.items() if a.expires <= now]:
            del self._accounts[key]
        self._sweep_above = max(_SWEEP_ABOVE, 2 * len(self._accounts))

    async def admit(self, claims: Sequence[Claim]) -> Admitted:
        with self._lock:
            now = self._clock()
            results: list[Any] = []
            for index, claim in enumerate(claims):
                result = self._hold(claim, now) if isinstance(claim, Hold) else self._probe(claim, now)
                results.append(result)
                if not result.passed:  # all or none: give back what this call took
                    for taken, answer in zip(claims[:index], results, strict=False):
                        self._undo(taken, answer)
                    return results, index
            return results, None

    async def apply(self, settlements: Sequence[Settlement]) -> list[Any]:
        with self._lock:
            now = self._clock()
            return [self._apply(op, now) for op in settlements]

    def keep(self, settlements: Sequence[Settlement]) -> None:
        with self._lock:  # no await in apply: made here and now, from any thread
            now = self._clock()
            for op in settlements:
                self._apply(op, now)

    def _hold(self, claim: Hold, now: float) -> Held:
        acc = self._account(claim.account, now)
        if acc.limit != claim.limit:
            if acc.limit is not None:
                self.limit_mismatch(claim.account, claim.limit, acc.limit)
            acc.limit = claim.limit
        left = claim.limit - acc.spent - acc.held
        if claim.amount > left:
            return Held(None, left)
        hold_id = str(next(self._ids))
        acc.holds[hold_id] = (claim.amount, now + claim.ttl_s)
        acc.held += claim.amount
        acc.expires = now + claim.keep_s
        return Held(hold_id, left - claim.amount)

    def _probe(self, claim: Probe, now: float) -> Checked:
        b = self._breakers.get(claim.name)
        if b is None or b.open_until == 0:
            return Checked(True)  # closed: nothing to probe
        if now < b.open_until:
            return Checked(False, open_s=b.open_until - now)
        if b.probe_until > now:
            return Checked(False)  # half-open, and another request is probing
        b.probe_until = now + claim.ttl_s
        return Checked(True, probing=True)

    def _undo(self, claim: Claim, answer: Any) -> None:
        if isinstance(claim, Hold):
            acc = self._accounts[claim.account]
            acc.held -= acc.holds.pop(answer.hold_id)[0]
        elif answer.probing:
            self._breakers[claim.name].probe_until = 0.0

    def _apply(self, op: Settlement, now: float) -> Any:
        if isinstance(op, Settle):
            acc = self._account(op.account, now)
            if op.hold_id is not None and op.hold_id in acc.holds:
                acc.held -= acc.holds.pop(op.hold_id)[0]
            elif op.hold_id is not None and op.hold_id in acc.lapsed:
                acc.spent -= acc.lapsed.pop(op.hold_id)[0]  # the lapse's charge, replaced by this settle's
            target = acc if op.charge is None or op.charge == op.account else self._account(op.charge, now)
            target.spent += op.amount
            target.expires = now + op.keep_s
            return None
        if isinstance(op, Close):
            b = self._breakers.pop(op.name, None)
            return b is not None and b.open_until > 0
        if isinstance(op, Release):
            if (b := self._breakers.get(op.name)) is not None:
                b.probe_until = 0.0
            return False
        b = self._breakers.setdefault(op.name, _Breaker())
        if isinstance(op, Open):
            was_open = b.open_until > now
            b.open_until, b.failures, b.probe_until = max(b.open_until, now + op.open_s), 0, 0.0
            return not was_open
        if now - b.window_start > op.window_s:  # Fail
            b.window_start, b.failures = now, 0
        b.failures += 1
        if b.failures >= op.threshold and b.open_until <= now:
            b.open_until, b.failures, b.probe_until = now + op.open_s, 0, 0.0
            return True
        return False

    async def usage(self, account: str) -> tuple[int, int]:
        with self._lock:
            acc = self._account(account, self._clock())
            return acc.spent, acc.held

    async def breakers(self, names: Iterable[str]) -> dict[str, float]:
        with self._lock:
            now = self._clock()
            return {n: b.open_until - now for n in names
                    if (b := self._breakers.get(n)) is not None and b.open_until > 0}

    async def append(self, key: str, value: bytes, *, max_items: int | None = None,
                     max_age_s: float | None = None) -> None:
        with self._lock:
            now = self._clock()
            found = self._lists.setdefault(key, _List())
            found.items.append((now, bytes(value)))
            drop = max(0, len(found.items) - max_items) if max_items else 0  # 0, like None: no cap (as in Redis)
            if max_age_s is not None:
                while drop < len(found.items) - 1 and found.items[drop][0] < now - max_age_s:
                    drop += 1
            for _ in range(drop):
                found.items.popleft()
            found.base += drop

    async def items(self, key: str, start: int = 0, *, limit: int | None = None) -> ListRead:
        with self._lock:
            found = self._lists.get(key)
            if found is None:
                return ListRead(0, [])
            end = found.base + len(found.items)
            first = found.base if start < found.base or start > end else start
            stop = end if limit is None else min(end, first + limit)
            return ListRead(first, [v for _, v in itertools.islice(found.items, first - found.base, stop - found.base)],
                            found.epoch)
