"""``MemoryStateStore``: the state of one process, kept in dicts behind one lock."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from genroute.state import StateStore


@dataclass
class _Account:
    spent: int = 0
    held: int = 0
    #: hold id -> (amount, expires at)
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)
    expires: float = float("inf")


@dataclass
class _Breaker:
    window_start: float = 0.0
    failures: int = 0
    open_until: float = 0.0  # 0: closed
    probe_until: float = 0.0


class MemoryStateStore(StateStore):
    """State for one process; thread-safe (the lock is never held across an await)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._lists: dict[str, list[bytes]] = {}
        self._ids = itertools.count()

    def _account(self, name: str, now: float) -> _Account:
        account = self._accounts.get(name)
        if account is None or account.expires <= now:
            account = self._accounts[name] = _Account()
            if len(self._accounts) > 4096:  # windows roll over: drop accounts nobody will read again
                for key in [k for k, a in self._accounts.items() if a.expires <= now]:
                    del self._accounts[key]
        elif account.holds:
            for hold_id in [h for h, (_, until) in account.holds.items() if until <= now]:
                account.held -= account.holds.pop(hold_id)[0]
        return account

    async def hold(self, account: str, amount: int, limit: int, *, ttl_s: float, keep_s: float
                   ) -> tuple[str | None, int]:
        with self._lock:
            now = self._clock()
            acc = self._account(account, now)
            left = limit - acc.spent - acc.held
            if amount > left:
                return None, left
            hold_id = str(next(self._ids))
            acc.holds[hold_id] = (amount, now + ttl_s)
            acc.held += amount
            acc.expires = now + keep_s
            return hold_id, left - amount

    async def settle(self, account: str, hold_id: str | None, amount: int, *, charge: str | None = None,
                     keep_s: float) -> None:
        with self._lock:
            now = self._clock()
            acc = self._account(account, now)
            if hold_id is not None and hold_id in acc.holds:
                acc.held -= acc.holds.pop(hold_id)[0]
            target = acc if charge is None or charge == account else self._account(charge, now)
            target.spent += amount
            target.expires = now + keep_s

    async def usage(self, account: str) -> tuple[int, int]:
        with self._lock:
            acc = self._account(account, self._clock())
            return acc.spent, acc.held

    async def breaker_fail(self, name: str, *, threshold: int, window_s: float, open_s: float) -> bool:
        with self._lock:
            now = self._clock()
            b = self._breakers.setdefault(name, _Breaker())
            if now - b.window_start > window_s:
                b.window_start, b.failures = now, 0
            b.failures += 1
            if b.failures >= threshold and b.open_until <= now:
                b.open_until, b.failures, b.probe_until = now + open_s, 0, 0.0
                return True
            return False

    async def breaker_open(self, name: str, open_s: float) -> bool:
        with self._lock:
            now = self._clock()
            b = self._breakers.setdefault(name, _Breaker())
            was_open = b.open_until > now
            b.open_until, b.failures, b.probe_until = max(b.open_until, now + open_s), 0, 0.0
            return not was_open

    async def breaker_close(self, name: str) -> bool:
        with self._lock:
            b = self._breakers.pop(name, None)
            return b is not None and b.open_until > 0

    async def breaker_probe(self, name: str, ttl_s: float) -> bool:
        with self._lock:
            now = self._clock()
            b = self._breakers.get(name)
            if b is None or b.open_until == 0:
                return True  # closed: nothing to probe
            if now < b.open_until or b.probe_until > now:
                return False  # still open, or another request is probing
            b.probe_until = now + ttl_s
            return True

    async def breakers(self, names: Iterable[str]) -> dict[str, float]:
        with self._lock:
            now = self._clock()
            return {n: b.open_until - now for n in names
                    if (b := self._breakers.get(n)) is not None and b.open_until > 0}

    async def append(self, key: str, value: bytes) -> None:
        with self._lock:
            self._lists.setdefault(key, []).append(bytes(value))

    async def items(self, key: str, start: int = 0) -> list[bytes]:
        with self._lock:
            return list(self._lists.get(key, ())[start:])
