"""The router's learning side: feedback, challengers and promotion (refresh from outcomes: ``refreshing``).

A mixin of ``Router`` (kept apart so the request path stays one short module); every sync method is its async
twin run through the router's one sync bridge (``Portal``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from genroute.bounds import is_real
from genroute.config_errors import pydantic_validated, validator_message
from genroute.errors import GenrouteError, StateUnavailable, UsageError
from genroute.runtime.portal import Portal, run_sync
from genroute.state.promotions import ROLLED_BACK
from genroute.types import Decision, GenerateRequest, GenerateResult

if TYPE_CHECKING:
    from genroute.admission import Admission
    from genroute.backends.base import Backend
    from genroute.outcomes.records import OutcomeRecord
    from genroute.outcomes.settings import OutcomeSettings
    from genroute.policies.base import BackendInfo, Policy, PolicyContext
    from genroute.policies.challenger import ChallengerConfig
    from genroute.router.executor import Executor
    from genroute.state import StateStore
    from genroute.state.promotions import Promotion

_log = logging.getLogger(__name__)


class Learning:
    """Feedback, challengers and promotion (mixed into ``Router``; refresh is ``Refreshing``'s)."""

    backends: dict[str, Backend]
    policy: Policy
    context: PolicyContext
    catalogue: dict[str, BackendInfo]
    outcome_settings: OutcomeSettings | None
    state: StateStore
    _executor: Executor
    _portal: Portal
    _unsafe: dict[str, tuple[str, ...]]
    #: Each task's newest promotion in the shared state store that this router applied (or skipped).
    _promotions_seen: dict[str, Promotion]
    #: Whether the shared store's promotions were read once (at build, a refresh or the refresher's first turn).
    _promotions_read: bool
    _closed: bool
    #: The gates every attempt passes (breakers, rate limits, the policy's budgets); ``None`` when there are none.
    _gated: Admission | None

    def _build_gates(self) -> None: ...

    def _admission(self, policy: Policy) -> Admission | None: ...

    def _refuse_closed(self) -> None:
        """``UsageError`` once the router is closed (its sync API refuses through its closed loop thread)."""
        if self._closed:
            raise UsageError("the router is closed")

    # -- feedback --------------------------------------------------------------------------------------

    async def afeedback(self, result: GenerateResult | str, /, *, score: float | None = None,
                        label: str | None = None, input: str | None = None) -> OutcomeRecord:
        """Record how a served answer turned out (async): a ``score`` in [0, 1] and/or the right ``label``.

        ``result`` is the ``GenerateResult`` or its ``outcome_id`` (the trace id when traced). With
        ``outcomes.capture`` on, the input and the accepted output (the label, else the answer when ``score``
        passes) are kept as a labeled example after the scrub hook; otherwise no text is stored.
        ``input`` supplies the request text for a result this process no longer remembers. A ``judge:`` scorer's
        calls end at the router's ``timeout_s`` (else the shadows' default), as a request's would.
        """
        import functools
        import time

        from genroute.outcomes.feedback import Feedback
        from genroute.router.shadows import SHADOW_TIMEOUT_S

        self._refuse_closed()  # its store is closed: a record written now would outlive the router
        recorder = self._executor.outcomes
        if recorder is None:
            raise UsageError("feedback needs an `outcomes` section (or Router(outcomes=...))", field="outcomes")
        args = Feedback.parse(result, score=score, label=label, input=input)
        if isinstance(args.result, GenerateResult) and args.result.backend not in self.backends:
            # Another router's result: its outcome would be stored here under a backend no policy of this router
            # can route to, and compiled into statistics as if this router had served it.
            raise UsageError(f"this result was answered by backend {args.result.backend!r}, which this router does "
                             "not have: give the feedback to the router that served it", field="result")
        deadline = time.monotonic() + (self._executor.timeout_s or SHADOW_TIMEOUT_S)
        judge = functools.partial(self._executor.run_judge, GenerateRequest(input="feedback"),
                                  Decision.single("feedback", next(iter(self.backends)), "feedback"), deadline)
        return await recorder.feedback(args.result, score=args.score, label=args.label, input=args.input,
                                       run_judge=judge)

    def feedback(self, result: GenerateResult | str, /, *, score: float | None = None, label: str | None = None,
                 input: str | None = None) -> OutcomeRecord:
        """Sync ``afeedback`` (not from inside a running event loop)."""
        return run_sync(self.afeedback(result, score=score, label=label, input=input), "feedback",
                        portal=self._portal)

    async def adrain(self, timeout_s: float = 60.0) -> None:
        """Wait until the shadow runs in flight (and their outcome records) are done, at most ``timeout_s``."""
        check_seconds(timeout_s, "timeout_s", zero=True)
        self._refuse_closed()
        await self._executor.drain_shadows(timeout_s)

    def drain(self, timeout_s: float = 60.0) -> None:
        """Sync ``adrain``."""
        run_sync(self.adrain(timeout_s), "drain", portal=self._portal)

    # -- challengers -----------------------------------------------------------------------------------

    def add_challenger(self, name: str, backend: Backend, *, task: str, mode: Literal["shadow", "split"] = "shadow",
                       share: float = 1.0) -> None:
        """Add ``backend`` as ``name`` and route ``task`` to it as a shadow (measured) or a split arm."""
        from genroute.backends.base import Backend
        from genroute.policies.challenger import ChallengerPolicy
        from genroute.router.outcome_setup import refuse, unsafe_backends

        config = self._challenger_config({"task": task, "backend": name, "mode": mode, "share": share},
                                         backend_arg="name")
        if name in self.backends:
            raise UsageError(f"backend {name!r} already exists", field="name")
        if not isinstance(backend, Backend):
            raise UsageError(f"must be a genroute Backend, not {type(backend).__name__}", field="backend")
        unsafe = unsafe_backends({name: backend})
        if mode == "shadow":
            refuse(name, unsafe, field="backend")
        policy = ChallengerPolicy(config, inner=self.policy)
        # Checked before the router changes (a budget refuses a backend it has no cost estimate for).
        policy.validate_against({**self.catalogue, name: backend_info(name, backend)})
        self._add_backend(name, backend, unsafe)
        self._use_policy(policy)

    async def apromote(self, task: str, backend: str) -> None:
        """Send ``task`` to ``backend`` first from now on, the incumbent's rungs as fallbacks (async).

        With a shared ``state`` store (Redis) the promotion is recorded there first, and every router sharing the store
        applies it at its next read (``state.promotions_every_s``, each refresh, its build); a store that cannot take
        it raises ``StateUnavailable`` and nothing changes anywhere. Promoting the incumbent sends the task to it first
        and routes the challenger no more; ``arollback`` keeps measuring it.
        """
        if not isinstance(backend, str) or backend not in self.backends:  # ROLLED_BACK names none
            raise UsageError(f"unknown backend {backend!r}", field="backend")
        await self._record_promotion(task, backend)

    def promote(self, task: str, backend: str) -> None:
        """Sync ``apromote`` (not from inside a running event loop)."""
        run_sync(self.apromote(task, backend), "promote", portal=self._portal)

    async def arollback(self, task: str) -> None:
        """Undo ``task``'s promotion (async): its challenger goes back to the mode it had (a shadow or a split arm, at
        its share; one promoted without a challenger phase: a shadow of every request) and the policy it wraps answers
        first again, on every router sharing the state store (recorded as ``apromote`` records). ``UsageError`` if no
        challenger of ``task`` is promoted in this router."""
        await self._record_promotion(task, ROLLED_BACK)

    def rollback(self, task: str) -> None:
        """Sync ``arollback`` (not from inside a running event loop)."""
        run_sync(self.arollback(task), "rollback", portal=self._portal)

    async def _record_promotion(self, task: str, backend: str) -> None:
        self._refuse_closed()
        if self._promoted(task, backend) is None:  # a bad argument is refused before anything is recorded
            raise UsageError(f"no challenger of task {task!r} is promoted: nothing to roll back", field="task")
        recorded = await self.state.record_promotion(task, backend)
        if recorded is not None and recorded.newer_than(self._promotions_seen.get(task)):
            self._promotions_seen[task] = recorded
        policy = self._promoted(task, backend)  # built again: a refresh may have swapped the policy meanwhile
        if policy is not None:
            self._use_policy(policy)

    def _promoted(self, task: str, backend: str) -> Policy | None:
        """The current policy with ``backend`` first for ``task``, checked against this router (``UsageError``): the
        task's ``challenger`` layer changed (those around it kept), else a new one around the policy. ``backend``
        ``ROLLED_BACK``: the task's promoted layer back to its mode (None: none is promoted)."""
        from genroute.policies.challenger import ChallengerPolicy
        from genroute.router.outcome_setup import check_shadows

        if backend != ROLLED_BACK and (not isinstance(backend, str) or backend not in self.backends):
            raise UsageError(f"unknown backend {backend!r}", field="backend")
        outer: list[ChallengerPolicy] = []
        current = self.policy
        while isinstance(current, ChallengerPolicy) and current.config.task != task:
            outer.append(current)
            current = current.inner
        if isinstance(current, ChallengerPolicy):
            if backend == ROLLED_BACK:  # back to the mode it had (its backend, mode and share were kept)
                if not current.config.promoted:
                    return None
                update: dict[str, Any] = {"promoted": False}
            else:
                update = {"backend": backend, "promoted": True}
            policy = ChallengerPolicy(current.config.model_copy(update=update), inner=current.inner)
            for layer in reversed(outer):  # each promotion replaces the task's layer: replicas do not nest them
                policy = ChallengerPolicy(layer.config, inner=policy)
        elif backend == ROLLED_BACK:
            return None
        else:
            policy = ChallengerPolicy(self._challenger_config({"task": task, "backend": backend, "promoted": True}),
                                      inner=self.policy)
        policy.validate_against(self.catalogue)
        check_shadows(policy, self._unsafe)
        return policy

    async def _apply_promotions(self) -> bool:
        """Apply the promotions recorded in the shared state store that this router has not applied yet (a task's
        newest); one naming a backend this router does not have is skipped with one warning. Whether any applied."""
        applied = False
        found = await self.state.promotions()
        self._promotions_read = True
        for task, promotion in sorted(found.items(), key=lambda item: item[1].version):
            if not promotion.newer_than(self._promotions_seen.get(task)):
                continue
            self._promotions_seen[task] = promotion  # applied or skipped: looked at once
            try:
                policy = self._promoted(task, promotion.backend)
                if policy is None:  # a rollback of a task not promoted here: as it is to be already
                    continue
                self._use_policy(policy)
            except GenrouteError as exc:
                missing = promotion.backend != ROLLED_BACK and promotion.backend not in self.backends
                why = "this router has no such backend" if missing else str(exc)
                _log.warning("a promotion recorded in the state store (task %r to backend %r, version %d) is not "
                             "applied by this router: %s", task, promotion.backend, promotion.version, why)
                continue
            applied = True
        return applied

    def _challenger_config(self, fields: dict[str, Any], *, backend_arg: str = "backend") -> ChallengerConfig:
        """A ``challenger`` config around the current policy; ``UsageError`` naming the caller's bad argument
        (``backend_arg``: the argument that gave the config's ``backend``)."""
        from pydantic import ValidationError

        from genroute.policies.challenger import ChallengerConfig

        try:
            return pydantic_validated(ChallengerConfig, {"policy": self.policy.config.model_dump(), **fields})
        except ValidationError as exc:
            error = exc.errors()[0]
            field = str(error["loc"][0]) if error["loc"] else "task"
            raise UsageError(validator_message(error), field=backend_arg if field == "backend" else field) from None

    def _add_backend(self, name: str, backend: Backend, unsafe: Mapping[str, tuple[str, ...]]) -> None:
        from genroute.policies.base import PolicyContext
        from genroute.router.build import require_engine_limits, require_prices

        require_prices({name: backend}, self._executor.pricing)
        require_engine_limits({name: backend})
        self.backends[name] = backend  # the executor holds this same mapping
        self._unsafe.update(unsafe)
        self._executor.unsafe_shadows = frozenset(self._unsafe)
        self.catalogue = {**self.catalogue, name: backend_info(name, backend)}
        self.context = PolicyContext(catalogue=self.catalogue, stats=self.context.stats, budgets=self.context.budgets)
        self._build_gates()  # rate limits and breakers cover the new backend (_use_policy puts them in place)

    def _use_policy(self, policy: Policy) -> None:
        """Swap the policy in (checked first): decisions from now on are the new policy's."""
        from genroute.router.exploring import note_explore
        from genroute.router.outcome_setup import check_shadows

        policy.validate_against(self.catalogue)
        check_shadows(policy, self._unsafe)
        self._executor.use_policy(policy)
        self._executor.admission = self._gated = self._admission(policy)  # the new policy's budget gates
        self.policy = policy
        note_explore(self)


def backend_info(name: str, backend: Backend) -> BackendInfo:
    """What policies may know about ``backend`` (its catalogue entry)."""
    from genroute.policies.base import BackendInfo

    config = backend.config
    engine = backend.resources.engines.get(config.engine)
    return BackendInfo(
        name=name, kind=backend.kind, capabilities=backend.capabilities, tasks=tuple(config.tasks),
        provider=getattr(engine, "provider", "unknown"), model=config.model, facts=backend.facts(),
    )


def check_seconds(value: Any, field: str, *, zero: bool = False) -> None:
    """``UsageError`` naming ``field`` unless ``value`` is a finite number of seconds > 0 (≥ 0 with ``zero``)."""
    if not is_real(value) or not (
            math.isfinite(value) and (value >= 0 if zero else value > 0)):
        raise UsageError(f"must be a finite number of seconds {'>=' if zero else '>'} 0, got {value!r}", field=field)
