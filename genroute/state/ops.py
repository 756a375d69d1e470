"""The operations a state store applies in one atomic call: the claims of an admission and the settlements after it.

An attempt's admission is one ``StateStore.admit(claims)`` call and its exit one ``StateStore.apply(settlements)``
call, whatever gates (budgets, rate limits, breakers) take part: in Redis each is one Lua script run (one round
trip), not one per gate. ``admit`` is all or nothing: the first claim that does not pass is reported and nothing
is held. ``tag`` is the gate's own note (the store ignores it), so that it can read the answer without keeping
per-attempt state of its own. Operations are named tuples: immutable and cheap to make (an admission with a
budget, a rate limit and breakers makes about fifteen; a frozen dataclass costs three times as much).
"""

from __future__ import annotations

from typing import Any, NamedTuple


#: How long a lapsed hold is remembered: a settle that arrives within it replaces the lapse's charge.
LAPSED_S = 3_600.0


class Hold(NamedTuple):
    """Hold ``amount`` units of ``account`` if ``spent + held + amount <= limit``; it lapses after ``ttl_s``, and a
    lapsed hold is charged at ``amount`` (a settle that arrives within ``LAPSED_S`` replaces that charge by its own).

    The account expires ``keep_s`` after its last write. Answered with ``Held``."""

    account: str
    amount: int
    limit: int
    ttl_s: float
    keep_s: float
    tag: Any = None


class Probe(NamedTuple):
    """Pass breaker ``name``: closed passes; open refuses; half-open passes as its one probe (held ``ttl_s``).

    Answered with ``Checked``."""

    name: str
    ttl_s: float
    tag: Any = None


class Settle(NamedTuple):
    """Drop hold ``hold_id`` of ``account`` (if still there) and add ``amount`` to the spend of ``charge``
    (default: the same account), which then lives ``keep_s`` more. Answered with None."""

    account: str
    hold_id: str | None
    amount: int
    charge: str | None = None
    keep_s: float = 3600.0


class Fail(NamedTuple):
    """Count one failure of breaker ``name``; open it for ``open_s`` when ``threshold`` fell within ``window_s``.

    Answered with True when this call opened it."""

    name: str
    threshold: int
    window_s: float
    open_s: float


class Open(NamedTuple):
    """Open breaker ``name`` for at least ``open_s`` from now. Answered with True if it was not open already."""

    name: str
    open_s: float


class Close(NamedTuple):
    """Close breaker ``name`` and forget its failures. Answered with True if it was open or half-open."""

    name: str


class Release(NamedTuple):
    """Let go of breaker ``name``'s half-open probe (another attempt may probe), leaving it as it is. Answered with
    False."""

    name: str


class Held(NamedTuple):
    """The answer to a ``Hold``: its id (None: refused) and the units left after it (or before, if refused)."""

    hold_id: str | None
    left: int

    @property
    def passed(self) -> bool:
        return self.hold_id is not None


class Checked(NamedTuple):
    """The answer to a ``Probe``: passed; whether this attempt is the half-open probe; if refused, how long the
    breaker stays open (0: half-open, but another attempt is probing)."""

    passed: bool
    probing: bool = False
    open_s: float = 0.0


Claim = Hold | Probe
Settlement = Settle | Fail | Open | Close | Release

#: The answer of ``StateStore.admit``: one answer per claim up to the refused one (all when all passed), and
#: the index of the refused claim (None: all passed, all held).
Admitted = tuple[list[Any], int | None]


def op_name(ops: Any, batch: str) -> str:
    """The operation's name in metrics and logs: a single op's own name, else ``batch``."""
    if len(ops) == 1:
        return _NAMES[type(ops[0])]
    return batch


_NAMES = {Hold: "hold", Probe: "breaker_probe", Settle: "settle", Fail: "breaker_fail", Open: "breaker_open",
          Close: "breaker_close", Release: "breaker_release"}

__all__ = ["LAPSED_S", "Admitted", "Checked", "Claim", "Close", "Fail", "Held", "Hold", "Open", "Probe", "Release",
           "Settle", "Settlement", "op_name"]
