"""A policy kind from an installed third-party package, named in config through its entry point.

The package lives in ``tests/plugin_pkg``; CI installs it with
``pip install --no-build-isolation --no-deps -e tests/plugin_pkg``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from genroute.errors import ConfigError
from genroute.policies import build_policy
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.registry import kinds
from genroute.types import GenerateRequest

INSTALL = "pip install --no-build-isolation --no-deps -e tests/plugin_pkg"


@pytest.fixture(autouse=True)
def _installed() -> None:
    names = {ep.name for ep in entry_points(group="genroute.policies")}
    assert "shortest_name" in names, f"the example plugin is not installed; run: {INSTALL}"


def test_plugin_kind_is_listed_and_builds_from_config() -> None:
    assert "shortest_name" in kinds("policies")
    policy = build_policy({"kind": "shortest_name", "prefix": "b"})
    catalogue = {n: BackendInfo(n, "prompt_template") for n in ("alpha", "beta", "bz", "c")}
    decision = policy.decide(GenerateRequest(input="hi"), PolicyContext(catalogue=catalogue))
    assert decision.rungs[0].backend == "bz" and decision.policy == "shortest_name"


def test_plugin_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        build_policy({"kind": "shortest_name", "prefx": "b"}, field="policy.arms.0.policy")
    assert err.value.field == "policy.arms.0.policy.prefx"


def test_plugin_kind_nests_inside_builtin_policies() -> None:
    split = build_policy({"kind": "split", "arms": [{"weight": 1, "policy": {"kind": "shortest_name"}}]})
    catalogue = {n: BackendInfo(n, "prompt_template") for n in ("long-name", "x")}
    decision = split.decide(GenerateRequest(input="hi", key="k"), PolicyContext(catalogue=catalogue))
    assert decision.rungs[0].backend == "x"
