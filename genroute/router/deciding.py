"""A blocking policy's decision (semantic, learned: they embed the request), run off the event loop and costed.

What deciding cost (a priced embedding of the request) goes into the request's ledger — the root span, the
result, the error — and is spent in the router's budgets once, when the decision ends. A request that gives up
first (its deadline, a cancellation) leaves the worker thread embedding: what that costs is spent when it is
done, and ``aclose`` waits a moment for such decisions so the state store is not closed under them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from genroute.runtime.billing import Charges, charge, charging

if TYPE_CHECKING:
    from genroute.admission import Admission
    from genroute.errors import DeadlineExceeded
    from genroute.types import Decision, GenerateRequest

_log = logging.getLogger(__name__)


class CostedDecisions:
    """Runs a router's blocking decisions in worker threads and spends what each cost in its budgets, once."""

    def __init__(self, admission: Callable[[], Admission | None]) -> None:
        #: The router's current admission (a promoted policy brings its own budgets).
        self.admission = admission
        #: Decisions that outlived their request, and the spends they start when done.
        self.late: set[asyncio.Future[Any]] = set()

    async def run(self, decide: Callable[[], Decision], request: GenerateRequest, deadline: float | None,
                  expired: Callable[[], DeadlineExceeded]) -> Decision:
        """``decide()`` in a worker thread, bounded by ``deadline`` (then ``expired()`` is raised)."""
        charges = Charges()
        with charging(charges):  # the worker thread inherits it
            work = asyncio.ensure_future(asyncio.to_thread(decide))
        try:
            if deadline is None:
                return await asyncio.shield(work)
            try:
                return await asyncio.wait_for(asyncio.shield(work), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise expired() from None
        finally:
            if work.done():
                charge(charges.cost_usd, estimated=charges.estimated)  # into the request's ledger
                await self._spend(request, charges)
            else:
                self.late.add(work)
                work.add_done_callback(self.late.discard)
                work.add_done_callback(lambda _: self._spend_later(request, charges))

    async def finish(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for decisions still running after their request gave up, and their spends."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.late and (left := end - loop.time()) > 0:
            await asyncio.wait(set(self.late), timeout=left)

    async def _spend(self, request: GenerateRequest, charges: Charges) -> None:
        admission = self.admission()
        if not charges.cost_usd or admission is None:
            return
        try:
            await admission.spend(request, charges.cost_usd)
        except Exception as error:  # the request goes on; the spend is lost, as an unsettled hold would be
            _log.warning("could not spend a decision's cost in the budget: %s: %s", type(error).__name__, error)

    def _spend_later(self, request: GenerateRequest, charges: Charges) -> None:
        if charges.cost_usd:
            task = asyncio.get_running_loop().create_task(self._spend(request, charges))
            self.late.add(task)
            task.add_done_callback(self.late.discard)
