"""Routing policies; ``build_policy`` turns a config mapping into a policy (nested policies use it too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext

__all__ = ["BackendInfo", "Policy", "PolicyConfig", "PolicyContext", "build_policy"]


def build_policy(raw: Mapping[str, Any] | PolicyConfig, *, field: str = "policy", place: str | None = None) -> Policy:
    """Validate ``raw`` against its kind's config model and build the policy; errors name ``field``. ``place``:
    ``Policy.place`` (default: ``field``; a pass-through wrapper hands down its own)."""
    from genroute.config import validate_kind
    from genroute.registry import plugin_failures

    cls, config = validate_kind("policies", raw, field=field)
    # ``field`` is set before ``__init__`` so construction errors (stats files, nested policies) name it.
    policy_cls: type[Policy] = cls
    policy = policy_cls.__new__(policy_cls)
    policy.field = field
    policy.place = field if place is None else place
    with plugin_failures(cls, field=field):
        policy_cls.__init__(policy, config)
    return policy
