"""``genroute.explore`` on a request's root span: what an ``explore`` policy did with it.

Only a router whose policy has an ``explore`` policy in it records it, so that no other router's requests pay for
the check: its ``_adecide`` is wrapped on the instance (``note_explore``), where the class's method serves the rest.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from genroute.policies.base import Policy
    from genroute.types import Decision, GenerateRequest


def explores(policy: Policy) -> bool:
    """Whether ``policy`` is an ``explore`` policy or hands requests to one (``nested``, at any depth)."""
    return policy.kind == "explore" or any(explores(p) for p in policy.nested)


def note_explore(router: Any) -> None:
    """Have ``router`` (a ``Router``, its policy just set) record each request's ``Decision.explore`` on the
    request's root span as ``genroute.explore`` if its policy explores; else decide as its class does."""
    vars(router).pop("_adecide", None)  # a copy's (``Router.replacing``) or the previous policy's
    if not explores(router.policy):
        return
    # Weak: a router held by its own attribute would live on, loop thread and all, until the next GC pass.
    method = weakref.WeakMethod(router._adecide)

    async def deciding(request: GenerateRequest, deadline: float | None = None, *,
                       preview: bool = False) -> Decision:
        decide = method()
        assert decide is not None, "a router that decides is alive"
        decision: Decision = await decide(request, deadline, preview=preview)
        if decision.explore is not None and not preview:  # a preview (``Router.decide``) is no request: no span
            # ``RootSpan`` decides with the request's span current (a no-op tracer's stand-in, which records nothing,
            # over a caller's span).
            trace.get_current_span().set_attribute("genroute.explore", decision.explore)
        return decision

    vars(router)["_adecide"] = deciding
