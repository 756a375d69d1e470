"""Refreshing a router: ``refresh``/``arefresh`` and the scheduled refresher (a mixin of ``Router``).

A refresh re-reads the backends' facts (``_refresh_facts``), applies the promotions recorded in a shared state store, and with an outcome
store refreshes the policy from the outcomes accumulated since the last one. The refresher runs them on the running
loop every ``outcomes.refresh_every_s`` (and reads the promotions every ``state.promotions_every_s``): started by the
first request, it keeps the current policy when a refresh fails and logs it (once a minute at most, with the count of
failures since; the first success after it is logged too, at INFO).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from genroute.errors import StateUnavailable
from genroute.log_every import LogEvery
from genroute.policies.base import PolicyContext
from genroute.router.inflight import call_on
from genroute.router.learning import backend_info
from genroute.runtime.portal import Portal, run_sync

if TYPE_CHECKING:
    from genroute.outcomes.running import RunningOutcomes
    from genroute.outcomes.settings import OutcomeSettings
    from genroute.backends.base import Backend
    from genroute.policies.base import BackendInfo, Policy
    from genroute.router.executor import Executor
    from genroute.router.refresh_record import RefreshRecord
    from genroute.state import StateStore

#: The learning side's logger, as before these methods moved here: an operator's logging settings for it still apply.
_log = logging.getLogger("genroute.router.learning")


class Refreshing:
    """``refresh``/``arefresh`` and the refresher task (mixed into ``Router``)."""

    backends: dict[str, Backend]
    catalogue: dict[str, BackendInfo]
    policy: Policy
    context: PolicyContext
    outcome_settings: OutcomeSettings | None
    state: StateStore
    _executor: Executor
    _portal: Portal
    _refresher: asyncio.Task[None] | None
    #: Whether the shared store's promotions were read once (at build, a refresh or the refresher's first turn).
    _promotions_read: bool
    _closed: bool
    #: The outcome statistics refreshes read, kept up to date from the store's changes (made by the first refresh).
    _running: RunningOutcomes | None = None
    #: The last scheduled refresh's outcome, and the counter of failed ones (``genroute.router.health``).
    _refresh_record: RefreshRecord
    # ``Learning``'s (declared, not defined: a stub here would come first in ``Router``'s order).
    _apply_promotions: Callable[[], Coroutine[Any, Any, bool]]
    _use_policy: Callable[[Policy], None]
    _refuse_closed: Callable[[], None]

    async def arefresh(self) -> bool:
        """Re-read backend facts and apply the promotions recorded in a shared state store; with an outcome store,
        refresh the policy from accumulated outcomes.

        ``cost_aware`` (and ``explore``) merge the outcome statistics over their benchmark ones (per task and
        backend, once scored on ``outcomes.min_n`` records); ``learned`` retrains on records with captured input.
        Returns whether the policy changed.
        """
        self._refuse_closed()
        failed = await self._refresh_facts()  # one backend's failed reload costs only its own facts: raised last
        changed = await self._refresh_policy()
        if failed is not None:
            raise failed
        return changed

    async def _refresh_facts(self) -> Exception | None:
        """Re-read every backend's data and facts (e.g. after loading examples) so policies decide on current data.

        Requests go on meanwhile with what the backends and the catalogue held: each is swapped in once read (facts
        read a store, so off the event loop). A backend whose reload fails keeps its facts, the others are
        refreshed: the first failure is returned (a note names its backend) for ``arefresh`` to raise."""
        backends = dict(self.backends)
        reloads = await asyncio.gather(*(backend.reload() for backend in backends.values()), return_exceptions=True)
        failed: dict[str, Exception] = {}
        for name, outcome in zip(backends, reloads, strict=True):
            if isinstance(outcome, Exception):
                failed[name] = outcome
            elif isinstance(outcome, BaseException):  # a cancellation is not a backend's failure
                raise outcome
        backends = {name: b for name, b in backends.items() if name not in failed}
        facts = await asyncio.to_thread(lambda: {name: backend_info(name, b) for name, b in backends.items()})
        # Swapped in on the loop, over the catalogue as it is now: a backend added meanwhile (graduation) stays.
        self.catalogue = {**self.catalogue, **facts}
        self.context = PolicyContext(catalogue=self.catalogue, stats=self.context.stats, budgets=self.context.budgets)
        if not failed:
            return None
        first = next(iter(failed.values()))
        first.add_note(f"reloading backend(s) {sorted(failed)} failed: their facts were kept, the other backends' "
                       "refreshed")
        return first

    async def _refresh_policy(self) -> bool:
        promoted = await self._apply_promotions()
        recorder = self._executor.outcomes
        if recorder is None or self.outcome_settings is None:
            return promoted
        from genroute.outcomes.running import RunningOutcomes
        from genroute.policies.base import PolicyUpdate

        settings = self.outcome_settings
        running = self._running
        if running is None or running.store is not recorder.store:
            running = self._running = RunningOutcomes(recorder.store, min_n=settings.min_n)
        stats, rows = await running.read()  # the records written since the last refresh, folded in

        def build(base: Policy) -> Policy | None:  # training embeds inputs: off the event loop
            update = PolicyUpdate(stats=stats, rows=list(rows), context=self.context, min_n=settings.min_n)
            return base.refreshed(update)

        for _ in range(3):
            base = self.policy
            policy = await asyncio.to_thread(build, base)
            if self.policy is base:
                break
            # A promotion swapped the policy in meanwhile: the refresh of the one before would undo it.
        else:
            return promoted
        if policy is None:
            return promoted
        self._use_policy(policy)
        return True

    def refresh(self) -> bool:
        """Sync ``arefresh`` (not from inside a running event loop)."""
        return run_sync(self.arefresh(), "refresh", portal=self._portal)

    def _start_refresher(self) -> None:
        """Refresh every ``outcomes.refresh_every_s`` and read the shared store's promotions every
        ``state.promotions_every_s`` on the running loop (started by the first request, and again by the first on
        another loop once the loop it ran on has ended it: ``asyncio.run`` per call). A router that has not read the
        promotions yet (built in code, not by ``from_config``/``acreate``) reads them at once, beside that request."""
        running = self._refresher
        if running is not None and not running.done() and not running.get_loop().is_closed():
            return
        every = self.outcome_settings.refresh_every_s if self.outcome_settings is not None else None
        periods = {name: s for name, s in (("refresh", every), ("promotions", self.state.promotions_every_s))
                   if s is not None}
        if not periods:
            return

        async def loop() -> None:
            clock = asyncio.get_running_loop().time
            due = {name: clock() + s for name, s in periods.items()}
            if "promotions" in due and not self._promotions_read:  # a router built in code: read them now, not later
                due["promotions"] = clock()
            quiet_until = 0.0  # a store down for long: one warning a minute about reading its promotions, not 12
            # A refresh failing for long (a 5 s refresh through a 10 min outage: 120 failures) warns once a minute with
            # the count since; the counter (``genroute.refresh.failures``) counts each. The first success after a
            # warned failure says so, once, at INFO (a recovery is no warning).
            refresh_log = LogEvery(60.0, clock)
            unlogged = failing = 0
            warned = False
            while True:
                name = min(due, key=due.__getitem__)
                await asyncio.sleep(max(0.0, due[name] - clock()))
                if self._closed:  # closed from another event loop, which could not cancel this task
                    return
                due[name] = clock() + periods[name]
                try:
                    await (self.arefresh() if name == "refresh" else self._apply_promotions())
                    if name == "refresh":
                        self._refresh_record.succeeded()
                        if warned:  # counts the failures not warned of: the next warning counts those after
                            _log.info("scheduled refresh succeeded again, after %d failed", failing)  # good news
                            unlogged = 0
                        failing, warned = 0, False
                except Exception as exc:  # a failed refresh keeps the current policy; the next one retries
                    self._refresh_record.failed(name, exc)
                    if isinstance(exc, StateUnavailable) and name == "promotions":
                        continue  # the store warns of its outage itself (once a minute), with what to do
                    if name == "refresh":
                        failing += 1
                        unlogged += 1
                        if not refresh_log.due():
                            continue
                        notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))  # which backend
                        since = f"; {unlogged} failed since the last such warning" if unlogged > 1 else ""
                        _log.warning("scheduled refresh failed: %s: %s%s (retried every %g s, the policy kept; logged "
                                     "once a minute%s)", type(exc).__name__, exc, notes, periods[name], since)
                        unlogged, warned = 0, True
                    elif clock() >= quiet_until:
                        quiet_until = clock() + 60.0
                        _log.warning("reading the promotions recorded in the state store failed (retried every "
                                     "%.1f s; logged once a minute): %s: %s", periods[name], type(exc).__name__, exc)

        self._refresher = asyncio.get_running_loop().create_task(loop())

    async def _stop_refresher(self) -> None:
        task, self._refresher = self._refresher, None
        if task is None:
            return
        if task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:  # on an application's loop, the router closed from another thread: or it refreshes the closed router
            call_on(task.get_loop(), task.cancel)
