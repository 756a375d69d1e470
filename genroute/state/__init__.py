"""Shared state: where budgets, rate limits and circuit breakers keep their counts.

``StateStore`` is a small set of atomic async operations; ``MemoryStateStore`` keeps them in this process
(the default) and ``RedisStateStore`` in Redis or Valkey, so that several processes or replicas share one
budget, one rate limit and one view of each backend's health. The budget, rate-limit and breaker logic
(``genroute.admission``, ``genroute.policies.budget``) is written once against this interface: the store is
the only thing that differs.

The operations, all atomic per call:

- ``admit`` / ``apply`` — the two calls of an attempt's admission (``genroute.state.ops``): every gate's claims
  (holds, a breaker check) taken in one call, all or none, and every gate's settlements in one call after
  it. In Redis each is one Lua script run. The single operations below are one-item ``admit``/``apply`` calls.
- ``hold`` / ``settle`` / ``usage`` — an *account* of integer units (nano-USD for budgets, requests or
  tokens for rate limits) with ``spent`` and outstanding *holds*. ``hold`` admits ``amount`` only while
  ``spent + held + amount <= limit``; a hold lapses after ``ttl_s`` and is then charged at its amount (so
  the attempt of a process killed while holding one is counted at its estimate); ``settle`` drops a hold and
  charges the actual amount, possibly to another account (the current window); a settle that comes after its
  hold lapsed (within ``LAPSED_S``, an hour) takes the lapse's charge back first, so the spend is counted once. Accounts expire ``keep_s`` after their last write.
- ``breaker_fail`` / ``breaker_open`` / ``breaker_close`` / ``breaker_probe`` / ``breakers`` — circuit
  breaker state: failures counted in a window, an ``open until`` time, and one half-open probe at a time.
- ``append`` / ``items`` — an append-only list of byte strings (for records other parts keep), optionally
  bounded: an append drops the oldest items beyond ``max_items`` or older than ``max_age_s`` in the same atomic
  call. Positions are absolute (a trimmed item keeps its number), so a reader keeps its offset across trims; one
  whose offset was trimmed reads from the oldest item kept (``ListRead.start`` says where that is). A shared store
  that answered appends from its fallback memory replays them to the shared list when it answers again
  (``replays`` counts them).
- ``record_promotion`` / ``promotions`` — which backend answers a task first (``router.promote``), recorded in a
  shared store for every router sharing it (``genroute.state.promotions``); a store of one process records none.
- ``pin`` — a value set once and kept (a split experiment's confidence sequence, ``genroute.graduation.run``).

Configured by the router's ``state`` section: ``{kind: memory}`` or ``{kind: redis, url, prefix, on_error}`` (and
``journal``: a local file keeping what an outage leaves owed, ``genroute.state.journal``).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from genroute.bounds import NOT_BOOL
from genroute.config_errors import config_error
from genroute.errors import ConfigError, without_credentials
from genroute.log_every import LogEvery
from genroute.public_model import ConfigModel
from genroute.state.ops import Admitted, Claim, Close, Fail, Held, Hold, Open, Probe, Settle, Settlement

if TYPE_CHECKING:
    from genroute.state.promotions import Promotion

_log = logging.getLogger("genroute.state")
#: At most one "limits differ" warning per this many seconds.
_MISMATCH_LOG_INTERVAL_S = 60.0


class ListRead(NamedTuple):
    """Items of a list from absolute position ``start`` on (``start`` > the position asked for: items were trimmed
    before they were read; ``start`` < it: the list is shorter than that position, i.e. it was emptied, e.g. by a
    server restart without persistence, and is read from its head again). ``epoch`` names this incarnation of the
    list (set by its first append; ``""`` before): a reader that sees it change reads the new list from its head."""

    start: int
    items: list[bytes]
    epoch: str = ""


class ListReplay(NamedTuple):
    """Appends to one list that a shared store answered from its fallback memory while it was unreachable:
    ``replayed`` to the shared list since, ``dropped`` instead (beyond the bound kept for replay, or older than the
    list's ``max_age_s``), ``waiting`` to be replayed."""

    replayed: int = 0
    dropped: int = 0
    waiting: int = 0


class StateStore(ABC):
    """Atomic counters that budgets, rate limits and breakers share (see the module docstring)."""

    #: True while a shared store is unreachable and this process answers from its own memory.
    degraded: bool = False
    #: True when other processes change the state too (so this process's own view of it may be stale).
    shared: bool = False
    #: Called with the operation's name each time a call is answered from fallback memory (a metric).
    on_fallback: Callable[[str], None] | None = None
    #: Called with (list key, ``"replayed"`` or ``"dropped"``, how many) as appends made in fallback memory are
    #: replayed to the shared store or dropped instead (a metric).
    on_replay: Callable[[str, str, int], None] | None = None
    #: Holds made against an account whose previous hold gave another limit (routers sharing the store configured
    #: with different budgets or rate limits for it), counted and logged (at most once a minute).
    limit_mismatches: int = 0
    #: How often a router reads the promotions recorded in the store (``None``: it records none; see ``promotions``).
    promotions_every_s: float | None = None

    # -- the two calls of an admission ------------------------------------------------------------------

    @abstractmethod
    async def admit(self, claims: Sequence[Claim]) -> Admitted:
        """Take every claim (holds, breaker probes) in one atomic call, or none: the answers in order, and the
        index of the first claim that did not pass (None: all passed). Nothing is held after a refusal."""

    @abstractmethod
    async def apply(self, settlements: Sequence[Settlement]) -> list[Any]:
        """Apply settlements (settles, breaker failures, opens, closes) in one atomic call: their answers."""

    def keep(self, settlements: Sequence[Settlement]) -> None:
        """Apply ``settlements`` with no event loop to await them on (theirs ended under them: ``asyncio.run`` per
        call), from any thread: the memory store applies them now, a shared store sends them with its next call. A
        store that cannot leaves them undone (a hold then lapses with its TTL, charged at its amount)."""
        _log.warning("%s cannot apply %d settlement(s) without an event loop: a hold lapses with its TTL",
                     type(self).__name__, len(settlements))

    # -- accounts with holds ---------------------------------------------------------------------------

    async def hold(self, account: str, amount: int, limit: int, *, ttl_s: float, keep_s: float) -> Held:
        """Hold ``amount`` if ``spent + held + amount <= limit``: (hold id or None if refused, units left)."""
        results, _ = await self.admit((Hold(account, amount, limit, ttl_s, keep_s),))
        return results[0]

    async def settle(self, account: str, hold_id: str | None, amount: int, *, charge: str | None = None,
                     keep_s: float) -> None:
        """Drop hold ``hold_id`` (if still there) and add ``amount`` to the spend of ``charge`` (default: the
        same account)."""
        await self.apply((Settle(account, hold_id, amount, charge, keep_s),))

    @abstractmethod
    async def usage(self, account: str) -> tuple[int, int]:
        """(spent, held) of ``account`` now; lapsed holds count as spent at their amount."""

    # -- circuit breakers ------------------------------------------------------------------------------

    async def breaker_fail(self, name: str, *, threshold: int, window_s: float, open_s: float) -> bool:
        """Count one failure; open the breaker for ``open_s`` when ``threshold`` fell within ``window_s``.
        True when this call opened it."""
        return bool((await self.apply((Fail(name, threshold, window_s, open_s),)))[0])

    async def breaker_open(self, name: str, open_s: float) -> bool:
        """Open the breaker for at least ``open_s`` from now; True if it was not open already."""
        return bool((await self.apply((Open(name, open_s),)))[0])

    async def breaker_close(self, name: str) -> bool:
        """Close the breaker and forget its failures; True if it was open or half-open."""
        return bool((await self.apply((Close(name),)))[0])

    async def breaker_probe(self, name: str, ttl_s: float) -> bool:
        """Claim the one half-open probe (held for at most ``ttl_s``); False if open or another holds it."""
        results, _ = await self.admit((Probe(name, ttl_s),))
        return bool(results[0].passed)

    @abstractmethod
    async def breakers(self, names: Iterable[str]) -> dict[str, float]:
        """Seconds until each non-closed breaker in ``names`` half-opens (<= 0: half-open now)."""

    # -- lists -----------------------------------------------------------------------------------------

    @abstractmethod
    async def append(self, key: str, value: bytes, *, max_items: int | None = None,
                     max_age_s: float | None = None) -> None:
        """Append ``value`` to the list ``key`` and, in the same atomic call, drop its oldest items beyond
        ``max_items`` and those older than ``max_age_s`` (``None``: no bound). The new item is always kept."""

    @abstractmethod
    async def items(self, key: str, start: int = 0, *, limit: int | None = None) -> ListRead:
        """At most ``limit`` items of the list ``key`` from absolute position ``start`` on (see ``ListRead``)."""

    # -- promotions ------------------------------------------------------------------------------------

    async def record_promotion(self, task: str, backend: str) -> Promotion | None:
        """Record, for every router sharing the store, that ``task`` goes to ``backend`` first (atomically, with a
        version newer than every promotion before it); ``None``: the store is this process's, nothing recorded.
        Refused with ``StateUnavailable`` when a shared store cannot take it, whatever ``on_error`` says."""
        return None

    async def ping(self) -> str | None:
        """Ask a shared store whether it answers now, past its outage back-off and its memory fallback
        (``router.health``): ``StateUnavailable`` if not. ``None``: a store of this process, nothing to ask."""
        return None

    async def promotions(self) -> dict[str, Promotion]:
        """The promotions recorded in the store, by task (none in a store of one process)."""
        return {}

    async def pin(self, name: str, value: str) -> str:
        """The value pinned under ``name``: the first one given (``value``, if none was yet), never replaced. A shared
        store keeps it for every router sharing it, across their restarts; a store of one process, for its life.
        Refused with ``StateUnavailable`` when a shared store cannot answer, whatever ``on_error`` says."""
        pins: dict[str, str] = self.__dict__.setdefault("_pins", {})
        return pins.setdefault(name, value)

    def limit_mismatch(self, account: str, limit: int, other: int) -> None:
        """Count and log (at most once a minute) a hold on ``account`` against ``limit`` where the previous one was
        against ``other``: each router admits up to its own limit over the shared count, so the lowest stops first."""
        self.limit_mismatches += 1
        mismatch_log: LogEvery = self.__dict__.setdefault("_mismatch_log", LogEvery(_MISMATCH_LOG_INTERVAL_S))
        if mismatch_log.due():
            _log.warning("state account %r is held against a limit of %d here and of %d by another router sharing the "
                         "state store (units: nano-USD for a budget, requests or tokens for a rate limit): their "
                         "configs differ, and each admits up to its own limit over the shared count (%d such holds "
                         "so far)", account, limit, other, self.limit_mismatches)

    def replays(self, key: str) -> ListReplay:
        """What became of the appends to ``key`` made in fallback memory (none without a shared store)."""
        return ListReplay()

    async def aclose(self) -> None:
        """Release connections (nothing for the memory store)."""


class _Frozen(ConfigModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemoryStateConfig(_Frozen):
    """State in this process's memory (the default): nothing is shared between processes."""

    kind: Literal["memory"] = "memory"


class RedisStateConfig(_Frozen):
    """State in Redis or Valkey, shared by every process that names the same ``url`` and ``prefix``."""

    kind: Literal["redis"]
    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://",
                     description="redis://host:port/db, rediss:// for TLS, or unix:///path.sock")
    prefix: str = Field(default="genroute:", description="Key prefix: routers that share it share state.")
    on_error: Literal["open", "closed"] = Field(
        default="open", description="Store unreachable: `open` uses this process's memory meanwhile (counted, "
        "logged), `closed` refuses requests with StateUnavailable (nothing is sent).")
    timeout_s: Annotated[float, NOT_BOOL] = Field(default=2.0, gt=0, allow_inf_nan=False,
                                                  description="Per-command socket timeout (an overloaded event "
                                                  "loop reads replies late: too tight a value sends healthy calls to "
                                                  "the fallback).")
    connect_timeout_s: Annotated[float, NOT_BOOL] = Field(default=2.0, gt=0, allow_inf_nan=False,
                                                          description="Timeout to open a connection.")
    max_connections: Annotated[int, NOT_BOOL] = Field(default=64, ge=1,
                                                      description="Connections per process and event loop.")
    retry_s: Annotated[float, NOT_BOOL] = Field(default=1.0, gt=0, allow_inf_nan=False,
                                                description="After a failure, how long to stay on the fallback "
                                                "before trying the store again.")
    promotions_every_s: Annotated[float, NOT_BOOL] = Field(
        default=5.0, gt=0, allow_inf_nan=False, description="How often a router reads the promotions routers sharing "
        "the store recorded (router.promote), off the request path; also at build and on each refresh.")
    journal: str | None = Field(
        default=None, min_length=1, description="A local SQLite file (made 0600) recording each settle and outcome "
        "write owed to the store during an outage until the store takes it: what a process killed meanwhile owed is "
        "sent by the next router started with the same file (None: kept in memory only).")

    def __repr_args__(self) -> Any:
        # The URL may carry a password (redis://:secret@host): never in a repr or a log.
        for name, value in super().__repr_args__():
            yield name, without_credentials(value) if name == "url" else value

    @field_serializer("url")
    def _dump_url(self, url: str) -> str:
        # ...nor in a dump (model_dump, a bench manifest): a dumped config is for reading, not for passwords.
        return without_credentials(url)


StateConfig = Annotated[MemoryStateConfig | RedisStateConfig, Field(discriminator="kind")]


def build_state(config: StateStore | Mapping[str, Any] | BaseModel | None, *, field: str = "state"
                ) -> StateStore:
    """The store a ``state`` config section (or ``None``: memory) describes."""
    from pydantic import TypeAdapter

    from genroute.state.memory import MemoryStateStore

    if isinstance(config, StateStore):
        return config
    if config is None:
        return MemoryStateStore()
    if not isinstance(config, BaseModel | Mapping):
        raise ConfigError(f"must be a mapping, a state config or a StateStore, not {type(config).__name__}",
                          field=field)
    if not isinstance(config, BaseModel):
        try:
            config = TypeAdapter(StateConfig).validate_python(dict(config))
        except ValidationError as exc:
            raise config_error(exc, field, tagged=True) from None
    if isinstance(config, RedisStateConfig):
        from genroute.state.redis_store import RedisStateStore

        return RedisStateStore(config)
    if isinstance(config, MemoryStateConfig):
        return MemoryStateStore()
    raise ConfigError(f"unknown state config {type(config).__name__}", field=field)


__all__ = ["ListRead", "ListReplay", "MemoryStateConfig", "RedisStateConfig", "StateConfig", "StateStore",
           "build_state"]
