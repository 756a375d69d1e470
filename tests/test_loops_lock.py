"""``LoopsLock``: one holder at a time across event loops in several threads, handed on past waiters that were
cancelled or whose loop was closed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest

from genroute.runtime.locks import LoopsLock


def test_tasks_on_loops_in_several_threads_hold_it_one_at_a_time():
    lock = LoopsLock()
    inside: list[int] = []
    most: list[int] = []
    done: list[int] = []

    async def worker() -> None:
        async def one() -> None:
            async with lock:
                inside.append(1)
                most.append(len(inside))
                try:
                    await asyncio.sleep(0)   # holds it across an await, as a catch-up does
                finally:
                    inside.pop()
                done.append(1)

        tasks = [asyncio.ensure_future(one()) for _ in range(50)]
        await asyncio.sleep(0)
        for task in tasks[::5]:
            task.cancel()           # waiting, or just handed the lock: it must pass it on
        await asyncio.gather(*tasks, return_exceptions=True)

    threads = [threading.Thread(target=asyncio.run, args=(worker(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert max(most) == 1 and 160 <= len(done) <= 200 and not lock.locked()


def test_a_waiter_cancelled_after_it_was_handed_the_lock_passes_it_on():
    async def main() -> list[str]:
        lock = LoopsLock()
        got: list[str] = []

        async def take(name: str) -> None:
            async with lock:
                got.append(name)

        await lock.__aenter__()
        second, third = asyncio.ensure_future(take("second")), asyncio.ensure_future(take("third"))
        await asyncio.sleep(0)       # both wait
        await lock.__aexit__(None, None, None)   # handed to the second...
        second.cancel()              # ...which is cancelled before it runs
        await asyncio.gather(second, third, return_exceptions=True)
        assert not lock.locked()
        return got

    assert asyncio.run(main()) == ["third"]


def test_a_waiter_whose_loop_was_closed_is_skipped():
    lock = LoopsLock()

    def wait_on_a_loop_that_then_ends() -> None:
        stranded = asyncio.new_event_loop()
        waiting = stranded.create_task(lock.__aenter__())
        stranded.run_until_complete(asyncio.sleep(0.01))   # it queues, then its loop is closed without it
        stranded.close()
        assert not waiting.done()

    async def main() -> bool:
        await lock.__aenter__()
        thread = threading.Thread(target=wait_on_a_loop_that_then_ends)
        thread.start()
        thread.join(10)
        await lock.__aexit__(None, None, None)
        async with lock:              # free again, not left to the closed loop's waiter
            return True

    assert asyncio.run(main()) and not lock.locked()


def test_a_forked_child_takes_it_though_a_parent_task_held_it_at_the_fork():
    # The parent's holder does not run in the child (its thread did not come along): the lock must be free there.
    from .test_sync_bridge import _in_child

    lock = LoopsLock()
    held, release = threading.Event(), threading.Event()

    async def hold() -> None:
        async with lock:
            held.set()
            await asyncio.to_thread(release.wait, 30)

    parent = threading.Thread(target=asyncio.run, args=(hold(),))
    parent.start()
    try:
        assert held.wait(10)

        def child() -> bool:
            async def take() -> bool:
                async with lock:
                    return True

            return asyncio.run(asyncio.wait_for(take(), 5))

        assert _in_child(child) is True
    finally:
        release.set()
        parent.join(30)
    assert not lock.locked()


def _entered(lock: LoopsLock, stack: bool) -> Any:
    """``lock`` itself, or an ``AsyncExitStack`` that enters it (in another frame than its exit's)."""
    if not stack:
        return lock

    @contextlib.asynccontextmanager
    async def through_a_stack() -> Any:
        async with contextlib.AsyncExitStack() as entered:
            await entered.enter_async_context(lock)
            yield

    return through_a_stack()


def _hold_on_a_loop_then_close_it(lock: LoopsLock, held: threading.Event, close: threading.Event,
                                  stack: bool = False) -> None:
    """A task on a loop of its own takes ``lock`` (``stack``: through an ``AsyncExitStack``); once ``close`` is set,
    that loop is closed with the task still inside ``async with``."""
    loop = asyncio.new_event_loop()

    async def hold() -> None:
        await inside()

    async def inside() -> None:  # nested: the collector closes it before (not under) hold's frame
        async with _entered(lock, stack):
            held.set()
            await asyncio.sleep(3600)

    loop.create_task(hold())
    while not held.is_set():
        loop.run_until_complete(asyncio.sleep(0.01))
    close.wait(10)
    loop.close()


async def _take(lock: LoopsLock, stack: bool = False) -> bool:
    async with _entered(lock, stack):
        return True


def _stranded(stack: bool = False) -> LoopsLock:
    """A lock whose holder's loop has been closed (``stack``: it took the lock through an ``AsyncExitStack``)."""
    lock = LoopsLock()
    held, close = threading.Event(), threading.Event()
    close.set()
    thread = threading.Thread(target=_hold_on_a_loop_then_close_it, args=(lock, held, close, stack))
    thread.start()
    thread.join(10)
    assert held.is_set() and lock.locked()
    return lock


def test_a_holder_whose_loop_was_closed_does_not_keep_it_from_a_task_that_comes_later():
    lock = _stranded()
    assert asyncio.run(asyncio.wait_for(_take(lock), 5)) and not lock.locked()


def test_a_holder_whose_loop_was_closed_does_not_keep_it_from_a_task_already_waiting():
    lock = LoopsLock()
    held, close = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hold_on_a_loop_then_close_it, args=(lock, held, close))
    thread.start()

    async def main() -> bool:
        assert await asyncio.to_thread(held.wait, 10)
        taking = asyncio.ensure_future(_take(lock))
        await asyncio.sleep(0.05)
        assert not taking.done()  # waits on the holder
        close.set()               # whose loop is then closed under it
        return await asyncio.wait_for(taking, 5)

    try:
        assert asyncio.run(main()) and not lock.locked()
    finally:
        close.set()
        thread.join(10)


@pytest.mark.parametrize("stack", [False, True], ids=["async with", "AsyncExitStack"])
def test_the_release_of_a_holder_the_lock_was_taken_from_does_not_free_it_for_the_new_one(stack):
    # The closed loop's task is collected at last, its coroutine closed: its ``async with`` exits, maybe while a
    # task of another loop (the new holder) runs. That exit must not release the new holder's lock, whichever frame
    # it comes from (an AsyncExitStack's exit is not its enter's).
    import gc

    lock = _stranded(stack)

    async def main() -> bool:
        async with lock:
            gc.collect()  # the stranded task, no longer held by the lock, goes
            return lock.locked()

    assert asyncio.run(asyncio.wait_for(main(), 5)) and not lock.locked()


def test_an_exit_from_another_frame_than_the_enter_frees_it():
    # An AsyncExitStack enters the lock in enter_async_context's frame and exits it in its own __aexit__'s: that
    # exit frees the lock, as an ``async with``'s does (the next task would otherwise wait for ever).
    lock = LoopsLock()

    async def main() -> bool:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(lock)
            assert lock.locked()
        return await asyncio.wait_for(_take(lock), 5)

    assert asyncio.run(main()) and not lock.locked()


@pytest.mark.parametrize("stack", [False, True], ids=["async with", "AsyncExitStack"])
def test_the_late_exit_of_a_waiter_passed_over_does_not_free_it_for_the_holder(stack):
    # A waiter whose loop was closed is passed over when the lock is released; its coroutine, closed when collected
    # later, took itself for the one handed the lock (no longer queued) and freed the next holder's lock.
    import gc

    lock = LoopsLock()

    def wait_on_a_loop_then_close_it() -> None:
        loop = asyncio.new_event_loop()
        loop.create_task(_take(lock, stack))
        for _ in range(5):
            loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()

    async def main() -> bool:
        async with lock:
            thread = threading.Thread(target=wait_on_a_loop_then_close_it)
            thread.start()
            thread.join(10)
        async with lock:  # the closed loop's waiter was passed over: this task holds it now
            gc.collect()  # that waiter's coroutine is closed
            return lock.locked()

    assert asyncio.run(asyncio.wait_for(main(), 5)) and not lock.locked()
