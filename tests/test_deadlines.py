"""Request deadlines on one timer per loop (genroute/runtime/deadlines.py): asyncio.timeout_at's semantics, fewer
timers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from genroute.runtime.deadlines import RESOLUTION_S, deadline_at

from .conftest import race


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the deadline timers scheduled on it and those cancelled (not ``sleep``'s)."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0
        self.cancelled = 0

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
        self.scheduled += _is_deadline(callback)
        return super().call_at(when, callback, *args, context=context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self.cancelled += _is_deadline(handle._callback)
        super()._timer_handle_cancelled(handle)


def _is_deadline(callback: Any) -> bool:
    return getattr(callback, "__module__", None) == "genroute.runtime.deadlines"


def run(coro: Any) -> Any:
    loop = CountingLoop()
    try:
        return loop.run_until_complete(coro), loop
    finally:
        loop.close()


async def _waits(deadline: float) -> str:
    """A request that would wait 10 s, bounded by ``deadline``."""
    try:
        with deadline_at(deadline):
            await asyncio.sleep(10)
    except TimeoutError:
        return "timed out"
    return "answered"


def test_a_block_past_its_deadline_ends_with_timeout_error_never_before_it():
    async def main() -> tuple[float, float]:
        deadline = time.monotonic() + 0.05
        with pytest.raises(TimeoutError):
            with deadline_at(deadline) as block:
                await asyncio.sleep(10)
        assert block.expired()
        return deadline, time.monotonic()

    (deadline, ended), _ = run(main())
    assert ended >= deadline


def test_blocks_ending_in_time_share_one_timer_and_cancel_nothing():
    async def one(deadline: float) -> str:
        with deadline_at(deadline) as block:
            await asyncio.sleep(0.01)
        assert not block.expired()
        return "answered"

    async def main() -> list[str]:
        deadline = time.monotonic() + 30
        return await asyncio.gather(*(one(deadline) for _ in range(100)))

    answers, loop = run(main())
    assert answers == ["answered"] * 100
    assert loop.scheduled == 1 and loop.cancelled == 0  # one timer; the blocks that end in time just leave


def test_requests_one_after_another_with_one_timeout_schedule_one_timer():
    async def main() -> None:
        for _ in range(20):  # each in a slot of its own, each later than the timer's
            with deadline_at(time.monotonic() + 30):
                await asyncio.sleep(RESOLUTION_S)

    _, loop = run(main())
    assert loop.scheduled == 1 and loop.cancelled == 0


def test_an_earlier_deadline_takes_the_timer_and_gives_it_back():
    async def long(deadline: float) -> str:
        with deadline_at(deadline):
            await asyncio.sleep(0.2)
        return "answered"

    async def short(deadline: float) -> float:
        with pytest.raises(TimeoutError):
            with deadline_at(deadline):
                await asyncio.sleep(10)
        return time.monotonic()

    async def main() -> tuple[str, float, float]:
        now = time.monotonic()
        first = asyncio.ensure_future(long(now + 30))
        await asyncio.sleep(0)
        ended = await short(now + 0.05)
        return await first, now + 0.05, ended

    (answer, deadline, ended), loop = run(main())
    assert answer == "answered" and ended >= deadline
    # the 30 s slot's timer; the short one's, replacing it; the 30 s slot's again once the short one expired
    assert loop.scheduled == 3 and loop.cancelled == 1


def test_a_slot_emptied_in_time_hands_the_timer_to_the_next_slot():
    async def quick(deadline: float) -> None:
        with deadline_at(deadline):
            await asyncio.sleep(0)

    async def slow(deadline: float) -> float:
        with pytest.raises(TimeoutError):
            with deadline_at(deadline):
                await asyncio.sleep(10)
        return time.monotonic()

    async def main() -> tuple[float, float]:
        # The slow block's deadline far after the quick one's: the timer, fired for the quick one's slot even a loaded
        # machine's moment late, finds the slow one's not yet due (one then due too would be ended by that firing).
        now = time.monotonic()
        task = asyncio.ensure_future(slow(now + 1.0))  # enters its block once main waits
        await quick(now + 0.02)  # the timer is set for this earlier slot, which empties at once
        return now + 1.0, await task

    (deadline, ended), loop = run(main())
    assert ended >= deadline  # the timer fired for the emptied slot and was set again for the next one
    assert loop.scheduled == 2 and loop.cancelled == 0  # quick's, then (fired for nothing) slow's


def test_keys_of_slots_gone_do_not_pile_up():
    from genroute.runtime import deadlines

    async def main() -> tuple[int, int]:
        # Requests one after another, each ending in time: a timeout far longer than the 2 ms each takes (a loop held
        # up by a loaded machine must not make one expire), then a wait past the last of their deadlines.
        for _ in range(30):
            last = time.monotonic() + 1.0
            with deadline_at(last):
                await asyncio.sleep(0.002)
        timers = deadlines._local.timers
        queued = len(timers.keys)
        await asyncio.sleep(last + 2 * RESOLUTION_S - time.monotonic())  # past every deadline: the timer has passed
        return queued, len(timers.keys) + len(timers.queued) + len(timers.slots)  # every key (it fired first)

    (queued, left), _ = run(main())
    assert 0 < queued <= 30 and left == 0


def test_blocks_of_one_slot_all_expire_on_its_one_timer():
    async def main() -> list[str]:
        deadline = time.monotonic() + 0.05
        return await asyncio.gather(*(_waits(deadline) for _ in range(50)))

    answers, loop = run(main())
    assert answers == ["timed out"] * 50 and loop.scheduled == 1


def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    async def main() -> None:
        async def request() -> None:
            with deadline_at(time.monotonic() + 30):
                await asyncio.sleep(10)

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_a_cancellation_from_elsewhere_at_the_deadline_is_not_taken_for_the_deadline():
    async def main() -> None:
        async def request() -> None:
            with deadline_at(time.monotonic()):  # already past: its timer fires on the next turn
                await asyncio.sleep(10)

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0)  # the request is now waiting inside its block
        task.cancel()  # cancelled by its caller too, before the deadline's timer runs
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_nested_blocks_end_the_inner_one_only():
    async def main() -> str:
        with deadline_at(time.monotonic() + 30) as outer:
            with pytest.raises(TimeoutError):
                with deadline_at(time.monotonic() + 0.02):
                    await asyncio.sleep(10)
            await asyncio.sleep(0.05)  # the outer block goes on, its task no longer cancelled
            assert asyncio.current_task().cancelling() == 0
        assert not outer.expired()
        return "done"

    assert run(main())[0] == "done"


def test_a_block_that_swallows_the_cancellation_ends_normally():
    async def main() -> str:
        with deadline_at(time.monotonic() + 0.02) as block:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass
        assert block.expired() and asyncio.current_task().cancelling() == 0
        return "kept going"

    assert run(main())[0] == "kept going"


def test_no_deadline_schedules_nothing():
    async def main() -> None:
        with deadline_at(None) as block:
            await asyncio.sleep(0.01)
        assert not block.expired()

    _, loop = run(main())
    assert loop.scheduled == 0


def test_a_later_slot_waits_behind_the_timer_of_an_earlier_one():
    async def one(deadline: float) -> None:
        with deadline_at(deadline):
            await asyncio.sleep(0)

    async def main() -> None:
        now = time.monotonic()
        await asyncio.gather(one(now + 30), one(now + 30 + 3 * RESOLUTION_S))

    _, loop = run(main())
    assert loop.scheduled == 1 and loop.cancelled == 0


def test_loops_on_several_threads_expire_their_blocks_at_the_same_moments():
    """A router's portal loop and an application's loop run deadlines on two threads at once: each loop's timers
    run in a context of its own (a context entered by one thread cannot be entered by another meanwhile: a shared
    one made timers fail, and their blocks ran on past their deadlines)."""
    failures: list[Any] = []
    timed_out: list[int] = []

    def thread() -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _, context: failures.append(context.get("exception")))

        async def one(deadline: float) -> int:
            try:
                with deadline_at(deadline):
                    await asyncio.sleep(5)
            except TimeoutError:
                return 1
            return 0

        async def main() -> int:
            now = time.monotonic()
            return sum(await asyncio.gather(*(one(now + RESOLUTION_S * (i % 50)) for i in range(2000))))

        try:
            timed_out.append(loop.run_until_complete(main()))
        finally:
            loop.close()

    assert race(*(thread for _ in range(4))) == []  # threads take turns as often as they can
    assert failures == [] and timed_out == [2000] * 4


def test_a_block_entered_again_raises_runtime_error_as_asyncio_timeout_does():
    """Entered again inside itself, a block's inner exit cancelled the slot's timer and the outer block ran on
    past its deadline; entered again after it expired, its exit uncancelled its task once more."""

    async def main() -> None:
        block = deadline_at(time.monotonic() + 0.05)
        with pytest.raises(RuntimeError):
            with block:
                with block:
                    pass
        with pytest.raises(TimeoutError):
            with deadline_at(time.monotonic() + 0.02) as expired:
                await asyncio.sleep(10)
        with pytest.raises(RuntimeError):
            with expired:
                pass

    run(main())


def test_a_loop_that_ran_late_ends_every_block_now_due_at_once():
    async def main() -> list[str]:
        now = time.monotonic()
        tasks = [asyncio.ensure_future(_waits(now + k * 3 * RESOLUTION_S)) for k in (1, 2, 3)]
        await asyncio.sleep(0)  # every block entered
        time.sleep(12 * RESOLUTION_S)  # the loop is held past all three deadlines
        return await asyncio.gather(*tasks)

    answers, loop = run(main())
    assert answers == ["timed out"] * 3
    assert loop.scheduled == 1  # the first slot's timer ended all three: no timer set for slots already due



def test_a_block_that_ended_in_time_or_has_no_deadline_cannot_be_entered_again_either():
    """asyncio.Timeout refuses any second entry (its state leaves CREATED once entered), not only one inside
    itself or after it expired: a block that ended in time, or one without a deadline, is spent too."""

    async def main() -> None:
        block = deadline_at(time.monotonic() + 30)
        with block:
            await asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            with block:
                pass
        never = deadline_at(None)
        with pytest.raises(RuntimeError):
            with never:
                with never:
                    pass
        with pytest.raises(RuntimeError):
            with never:
                pass

    run(main())


def test_a_loop_with_a_clock_of_its_own_ends_blocks_at_their_deadline_too():
    """Deadlines are ``time.monotonic()`` instants; asyncio's own loops keep that clock (used as it is), a loop
    with another clock gets them converted."""

    class ShiftedClock(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return super().time() + 1000.0

    async def main() -> tuple[float, float]:
        deadline = time.monotonic() + 0.05
        assert await _waits(deadline) == "timed out"
        return deadline, time.monotonic()

    loop = ShiftedClock()
    try:
        deadline, ended = loop.run_until_complete(main())
    finally:
        loop.close()
    assert deadline <= ended < deadline + 1.0
