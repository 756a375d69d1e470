"""The Redis state store's shared records: the lists (the outcome log), promotions and pins (a mixin of
``RedisStateStore``).

Each is one call through the store's ``_run``: a list append made while Redis cannot be reached is kept and replayed
once it answers (it records an outcome that already happened), a list read is answered from this process's memory
meanwhile (``on_error: open``); a promotion or a pin is never answered from memory, since a value only this process
saw is the disagreement they exist to prevent.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from genroute.state.promotions import (EPOCH_FIELD, PROMOTE_SCRIPT, VERSION_FIELD, Promotion, parse_promotions,
                                       promotions_key)
from genroute.state.redis_script import Push, Range

if TYPE_CHECKING:
    from genroute.state import ListRead
    from genroute.state.memory import MemoryStateStore
    from genroute.state.unsent import UnsentWrites

T = TypeVar("T")


class RedisRecords:
    """``append``/``items``, ``record_promotion``/``promotions`` and ``pin`` (mixed into ``RedisStateStore``)."""

    prefix: str
    fallback: MemoryStateStore
    _unsent: UnsentWrites

    if TYPE_CHECKING:
        async def _run(self, op: str, remote: Callable[[Any, Any], Awaitable[T]],
                       local: Callable[[], Awaitable[T]] | None, *, ordered: bool = False,
                       keep: Callable[[], None] | None = None, owed: bool = False) -> T: ...

        async def _call(self, script: Any, mode: str, ops: Sequence[Any], ids: Sequence[str | None]
                        ) -> tuple[list[Any], int | None]: ...

    async def append(self, key: str, value: bytes, *, max_items: int | None = None,
                     max_age_s: float | None = None) -> None:
        push = Push(key, value, max_items, max_age_s)

        async def remote(script: Any, _: Any) -> None:
            await self._call(script, "apply", [push], [None])

        async def local() -> None:
            await self.fallback.append(key, value, max_items=max_items, max_age_s=max_age_s)

        await self._run("append", remote, local, ordered=True, owed=True,
                        keep=lambda: self._unsent.push(push, os.urandom(8).hex()))  # for Redis, when it is back

    async def items(self, key: str, start: int = 0, *, limit: int | None = None) -> ListRead:
        async def remote(script: Any, _: Any) -> ListRead:
            found, _ = await self._call(script, "read", [Range(key, start, limit)], [None])
            return found[0]

        return await self._run("items", remote, lambda: self.fallback.items(key, start, limit=limit))

    async def record_promotion(self, task: str, backend: str) -> Promotion | None:
        async def remote(_: Any, client: Any) -> Promotion:
            version, at_ms, epoch = await client.eval(PROMOTE_SCRIPT, 1, promotions_key(self.prefix), task, backend,
                                                      VERSION_FIELD, os.urandom(8).hex(), EPOCH_FIELD)
            return Promotion(backend, int(version), int(at_ms), bytes(epoch).decode())

        # Never answered from memory: a promotion only this process saw is the disagreement it exists to prevent.
        return await self._run("promote", remote, None)

    async def pin(self, name: str, value: str) -> str:
        async def remote(_: Any, client: Any) -> str:
            await client.hsetnx(f"{self.prefix}pins", name, value)  # the first one set stays
            return bytes(await client.hget(f"{self.prefix}pins", name)).decode()

        # Never answered from memory: a value only this process pinned is the switch a pin exists to prevent.
        return await self._run("pin", remote, None)

    async def promotions(self) -> dict[str, Promotion]:
        async def remote(_: Any, client: Any) -> dict[str, Promotion]:
            return parse_promotions(await client.hgetall(promotions_key(self.prefix)))

        return await self._run("promotions", remote, self.fallback.promotions)
