"""Promotions recorded in a shared state store: which backend answers a task first, for every router sharing it.

``router.promote(task, backend)`` on a router whose store is shared records ``task -> backend`` here, with the
server's time and a version that grows with every promotion under the prefix; every router sharing the store reads
them when it is built and on each refresh, and applies those newer than what it applied. A rollback
(``router.rollback``) is recorded the same way, its backend ``ROLLED_BACK``, so the record of a task is only ever
replaced: one Redis hash per prefix (``<prefix>promotions``), a
field per task promoted and one for the version counter, whatever the traffic.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

#: The hash's field counting promotions (task fields are ``t:<task>``, so no task name can collide with it).
VERSION_FIELD = "version"

#: The hash's field naming its incarnation (set with its first promotion): versions count from 1 again in a hash a
#: server restarted without persistence (or a flush) emptied, and a router that sees another epoch compares anew.
EPOCH_FIELD = "epoch"

#: The backend a rollback records (``router.rollback``): no backend name is empty, and a router that knows of no
#: rollbacks skips it as a backend it does not have.
ROLLED_BACK = ""

#: One run: the version counted, the server's time and the task's record written together.
PROMOTE_SCRIPT = """
local e = redis.call('HGET', KEYS[1], ARGV[5])
if not e then
  e = ARGV[4]
  redis.call('HSET', KEYS[1], ARGV[5], e)
end
local v = redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
local t = redis.call('TIME')
local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 't:' .. ARGV[1], cjson.encode({backend = ARGV[2], version = v, at_ms = at, epoch = e}))
return {v, at, e}
"""


class Promotion(NamedTuple):
    """A recorded promotion: ``backend`` answers its task first since ``at_ms`` (server time, ms since the epoch);
    ``version`` orders it among every promotion under the store's prefix in its ``epoch`` (see ``EPOCH_FIELD``)."""

    backend: str
    version: int
    at_ms: int
    epoch: str = ""

    def newer_than(self, seen: Promotion | None) -> bool:
        """Whether this promotion comes after ``seen`` (``None``: none seen; another epoch: the hash was emptied
        since, and this one was made after that)."""
        return seen is None or self.epoch != seen.epoch or self.version > seen.version


def promotions_key(prefix: str) -> str:
    """The hash that holds a prefix's promotions."""
    return f"{prefix}promotions"


def parse_promotions(fields: dict[Any, Any]) -> dict[str, Promotion]:
    """The promotions in a ``HGETALL`` reply, by task (a field that is not one is skipped: another writer's)."""
    found: dict[str, Promotion] = {}
    for name, value in fields.items():
        name = name.decode() if isinstance(name, bytes) else str(name)
        if not name.startswith("t:"):
            continue
        try:
            data = json.loads(value)
            found[name[2:]] = Promotion(str(data["backend"]), int(data["version"]), int(data["at_ms"]),
                                        str(data.get("epoch", "")))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return found
