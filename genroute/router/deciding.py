"""A blocking policy's decision (semantic, learned: they embed the request), run off the event loop and costed.

What deciding may cost (a priced embedding of the request: ``Policy.deciding_cost``, the request's text at the
embedder's price) is held in the router's budgets before the policy decides, as a rung's estimate is before it
runs: a request the budgets have no room to decide for is refused with ``BudgetExceeded`` and nothing is
embedded. What deciding did cost goes into the request's ledger — the root span, the result, the error — and
settles the hold once, when the decision ends. A request that gives up first (its deadline, a cancellation)
leaves the worker thread embedding: its hold is settled at what that costs when it is done, and ``aclose`` waits
a moment for such decisions so the state store is not closed under them. One whose event loop ends under it
(``asyncio.run`` per call) has its hold settled when the worker thread ends, at what it cost, by the state store
without a loop (``StateStore.keep``: Redis gets it with its next call). A decision that cannot cost anything
(an offline embedder) holds nothing and makes no store call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from genroute.errors import BudgetExceeded
from genroute.runtime.billing import Charges, charge, charging
from genroute.runtime.deadlines import deadline_at

if TYPE_CHECKING:
    from genroute.admission import Admission, Reserved
    from genroute.errors import DeadlineExceeded
    from genroute.policies.base import Policy
    from genroute.types import Decision, GenerateRequest

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class CostedDecisions:
    """Runs a router's blocking decisions in worker threads, what each may cost held in its budgets first and
    settled at what it cost, once."""

    def __init__(self) -> None:
        #: Decisions and holds that outlived their request, and the settles they start when done.
        self.late: set[asyncio.Future[Any]] = set()

    async def run(self, decide: Callable[[], Decision], request: GenerateRequest, deadline: float | None,
                  expired: Callable[[], DeadlineExceeded], *, policy: Policy,
                  admission: Admission | None) -> Decision:
        """``decide()`` in a worker thread, bounded by ``deadline`` (then ``expired()`` is raised); what it may
        cost is held first (``BudgetExceeded`` when a budget has no room for it: ``decide`` is not run, and the
        policy's ``undecided`` decision, if any, is returned instead).

        ``policy`` is the one ``decide`` decides with (it estimates the cost) and ``admission`` the one its
        budgets are in: the router's of one moment, so that a policy promoted meanwhile cannot split them (the
        hold is settled in the admission it was taken in)."""
        reserved: Reserved = ()
        if admission is not None and (estimate := policy.deciding_cost(request)) > 0:
            try:
                reserved = await self._reserve(admission, request, estimate, deadline, expired)
            except BudgetExceeded as refused:
                undecided = policy.undecided(request, refused)  # a budget that downgrades
                if undecided is None:
                    raise
                return undecided
        charges = Charges()

        def settle_without_loop() -> None:
            if admission is not None and (charges.cost_usd or reserved):
                admission.spent_without_loop(request, charges.cost_usd, reserved)

        at_end = _SettleAtThreadEnd(settle_without_loop)
        with charging(charges):  # the worker thread inherits it
            work = asyncio.ensure_future(asyncio.to_thread(at_end.run, decide))
        try:
            return await _within(work, deadline, expired)
        finally:
            if work.done() and not work.cancelled():
                charge(charges.cost_usd, estimated=charges.estimated)  # into the request's ledger
                if admission is not None and (charges.cost_usd or reserved):
                    # Shielded: a caller cancelled now still has the hold settled, not left to lapse.
                    await asyncio.shield(self._track(self._spend(admission, request, charges.cost_usd, reserved)))
            else:
                def ended(done: asyncio.Future[Decision]) -> None:
                    if done.cancelled():  # its loop ended (asyncio.run per call): settled as the thread ends
                        at_end.cut()
                    else:
                        self._settle_later(admission, request, charges.cost_usd, reserved)

                if work.done():
                    ended(work)
                else:
                    self._track(work).add_done_callback(ended)

    async def finish(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for decisions still running after their request gave up, and their spends.

        Only those of the running loop: a router used from two loops (``generate`` on its portal's, ``agenerate`` on
        the application's) has late work on each, and another loop's futures cannot be awaited here (that loop's
        own shutdown ends them: the portal's ``close`` cancels what still runs on it).
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (mine := {f for f in list(self.late) if f.get_loop() is loop}) and (left := end - loop.time()) > 0:
            await asyncio.wait(mine, timeout=left)

    async def _reserve(self, admission: Admission, request: GenerateRequest, estimate: float,
                       deadline: float | None, expired: Callable[[], DeadlineExceeded]) -> Reserved:
        holding = asyncio.ensure_future(admission.reserve(request, estimate, deadline))
        try:
            return await _within(holding, deadline, expired)
        except BaseException:
            # The request gave up (its deadline, a cancellation) while the store was asked, or just as it answered:
            # what the store holds (now or when it answers) is released, since nothing else will settle it.
            self._track(holding).add_done_callback(lambda done: self._release(admission, request, done))
            raise

    def _release(self, admission: Admission, request: GenerateRequest, holding: asyncio.Future[Reserved]) -> None:
        if not holding.cancelled() and holding.exception() is None and holding.result():
            self._settle_later(admission, request, 0.0, holding.result())

    async def _spend(self, admission: Admission, request: GenerateRequest, cost_usd: float,
                     reserved: Reserved) -> None:
        try:
            await admission.spend(request, cost_usd, reserved)
        except Exception as error:  # the request goes on; the hold lapses with its TTL, charged at its estimate
            _log.warning("could not spend a decision's cost in the budget: %s: %s", type(error).__name__, error)

    def _settle_later(self, admission: Admission | None, request: GenerateRequest, cost_usd: float,
                      reserved: Reserved) -> None:
        if admission is not None and (cost_usd or reserved):
            self._track(asyncio.get_running_loop().create_task(self._spend(admission, request, cost_usd, reserved)))

    def _track(self, work: Awaitable[_T]) -> asyncio.Future[_T]:
        """``work`` as a future kept in ``late`` until it is done (``finish`` waits for it)."""
        future = asyncio.ensure_future(work)
        self.late.add(future)
        future.add_done_callback(self.late.discard)
        return future


class _SettleAtThreadEnd:
    """A decision's hold settled when its worker thread ends, should the event loop end under the decision first
    (``asyncio.run`` per call cancels it there while the thread goes on embedding): at what it cost by then."""

    def __init__(self, settle: Callable[[], None]) -> None:
        self._settle = settle
        self._lock = threading.Lock()
        self._ended = self._cut = False

    def run(self, decide: Callable[[], Decision]) -> Decision:
        """``decide()`` (in the worker thread)."""
        try:
            return decide()
        finally:
            with self._lock:
                self._ended, cut = True, self._cut
            if cut:
                self._settle()

    def cut(self) -> None:
        """The decision's loop ended under it: its hold is settled when the thread ends (now, if it has)."""
        with self._lock:
            self._cut, ended = True, self._ended
        if ended:
            self._settle()


async def _within(work: asyncio.Future[_T], deadline: float | None, expired: Callable[[], DeadlineExceeded]) -> _T:
    """``work``'s result, waited for until ``deadline`` (then ``expired()`` is raised); ``work`` goes on either way."""
    try:
        with deadline_at(deadline) as block:
            return await asyncio.shield(work)
    except TimeoutError:
        if not block.expired():  # work's own TimeoutError (a socket timeout, say): not the request's deadline
            raise
        raise expired() from None
