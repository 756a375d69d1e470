"""``LogEvery``: the one rule for warnings logged at most once per interval (state mismatches, a shared store that
is down, dropped replays, dropped or cancelled shadow runs)."""

from __future__ import annotations

from genroute.log_every import LogEvery


def test_due_first_then_once_per_interval() -> None:
    now = [1000.0]
    log = LogEvery(60.0, clock=lambda: now[0])
    assert log.due()  # the first warning is logged
    now[0] += 59.0
    assert not log.due()  # within the minute: not again
    now[0] += 1.0
    assert log.due()  # a minute after the last one logged
    now[0] += 30.0
    assert not log.due()  # counted from the last one logged, not from the first


def test_due_at_a_clock_near_zero() -> None:
    # time.monotonic() may start near 0 (a fresh boot): the first warning is logged all the same
    log = LogEvery(60.0, clock=lambda: 0.0)
    assert log.due()
    assert not log.due()
