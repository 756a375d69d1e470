"""Policies as tables: (request, context) -> decision, and config errors that name the field."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from genroute.errors import ConfigError
from genroute.policies import build_policy
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.policies.stats import BackendStats, BenchStats
from genroute.types import GenerateRequest


def req(text: str = "hello", **fields: Any) -> GenerateRequest:
    return GenerateRequest(input=text, **fields)


CATALOGUE = {
    "prompt": BackendInfo("prompt", "prompt_template"),
    "icl": BackendInfo("icl", "icl", frozenset({"examples"}), facts={"example_counts": {"bank": 40, "rare": 3}}),
    # A general ICL backend that reports only a total: it says nothing about any one task.
    "icl_total": BackendInfo("icl_total", "icl", frozenset({"examples"}), facts={"example_count": 500}),
    "rag": BackendInfo("rag", "rag", frozenset({"knowledge"}), tasks=("qa",), facts={"collection": "docs"}),
    "tools": BackendInfo("tools", "function_calling", frozenset({"tools"})),
    "tuned": BackendInfo("tuned", "tuned", frozenset({"tuned"}), tasks=("sentiment",)),
    "big": BackendInfo("big", "prompt_template"),
}
CTX = PolicyContext(catalogue=CATALOGUE)


def rungs(policy: Any, request: GenerateRequest, ctx: PolicyContext = CTX) -> list[str]:
    return [r.backend for r in policy.decide(request, ctx).rungs]


# -- static ---------------------------------------------------------------------------------------------

def test_static_always_the_backend() -> None:
    policy = build_policy({"kind": "static", "backend": "prompt"})
    decision = policy.decide(req(task="anything"), CTX)
    assert [r.backend for r in decision.rungs] == ["prompt"]
    assert decision.policy == "static" and "prompt" in decision.reason


# -- rules ----------------------------------------------------------------------------------------------

RULES = {
    "kind": "rules",
    "rules": [
        {"name": "tools", "when": {"needs_tools": True}, "backend": "tools"},
        {"name": "knowledge", "when": {"needs_knowledge": True}, "backend": "rag", "fallbacks": ["prompt"]},
        {"name": "vip", "when": {"metadata": {"tier": "gold"}}, "backend": "big"},
        {"name": "bank-en", "when": {"task": ["bank", "cards"], "metadata_in": {"lang": ["en", "en-GB"]}},
         "backend": "icl", "validators": ["nonempty"]},
        {"name": "long", "when": {"min_chars": 50}, "backend": "big"},
        {"name": "short-json", "when": {"max_chars": 10, "input_regex": r"^\{"}, "backend": "tuned"},
    ],
    "default": "prompt",
}


@pytest.mark.parametrize(("request_", "expected", "rule"), [
    (req(metadata={"needs_tools": True, "tier": "gold"}), ["tools"], "tools"),
    (req(metadata={"fresh": True}), ["rag", "prompt"], "knowledge"),
    (req(metadata={"tier": "gold"}), ["big"], "vip"),
    (req(metadata={"tier": "silver"}), ["prompt"], None),
    (req(task="cards", metadata={"lang": "en-GB"}), ["icl"], "bank-en"),
    (req(task="cards", metadata={"lang": "fr"}), ["prompt"], None),
    (req(task="bank"), ["prompt"], None),
    (req("x" * 50), ["big"], "long"),
    (req("x" * 49), ["prompt"], None),
    (req('{"a": 1}'), ["tuned"], "short-json"),
    (req('{"a": 1}   '), ["prompt"], None),
])
def test_rules_first_match(request_: GenerateRequest, expected: list[str], rule: str | None) -> None:
    decision = build_policy(RULES).decide(request_, CTX)
    assert [r.backend for r in decision.rungs] == expected
    assert (f"{rule} matched" in decision.reason) if rule else ("default" in decision.reason)


def test_rules_validators_and_explain() -> None:
    policy = build_policy(RULES)
    decision = policy.decide(req(task="bank", metadata={"lang": "en"}), CTX)
    assert decision.rungs[0].validators == ("nonempty",)
    assert dict(policy.explain(req(task="bank")))["bank-en"] == "metadata_in.lang"


# -- ladder ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("request_", "expected", "signal"), [
    (req(), ["prompt"], "prompt_template (prompt): no stronger signal (request has no task for few-shot"),
    (req(task="bank"), ["icl"], "icl (icl): task 'bank' has 40 labeled examples >= 8"),
    (req(task="rare"), ["prompt"], "no stronger signal (task 'rare' has 3 labeled examples < 8)"),
    (req(task="unknown"), ["prompt"], "(task 'unknown' has 0 labeled examples < 8)"),
    (req(task="sentiment"), ["tuned"], "task 'sentiment' has a tuned backend"),
    (req(task="qa"), ["rag"], "grounded on collection 'docs'"),
    (req(metadata={"needs_knowledge": True}), ["rag"], "request needs knowledge"),
    (req(task="sentiment", metadata={"fresh": True}), ["rag"], "request needs knowledge"),
    (req(task="bank", metadata={"needs_tools": True}), ["tools"], "request needs tools"),
])
def test_ladder(request_: GenerateRequest, expected: list[str], signal: str) -> None:
    decision = build_policy({"kind": "ladder"}).decide(request_, CTX)
    assert [r.backend for r in decision.rungs] == expected
    assert signal in decision.reason


@pytest.mark.parametrize(("request_", "expected"), [
    (req(), ["prompt"]),
    (req(task="bank"), ["prompt", "icl"]),
    (req(task="sentiment"), ["prompt", "tuned"]),
    (req(task="qa"), ["prompt", "rag"]),
    (req(metadata={"needs_knowledge": True}), ["rag"]),
    (req(metadata={"needs_tools": True}), ["tools"]),
])
def test_ladder_cascade_climbs(request_: GenerateRequest, expected: list[str]) -> None:
    decision = build_policy({"kind": "ladder", "cascade": True}).decide(request_, CTX)
    assert [r.backend for r in decision.rungs] == expected
    assert all(r.validators == ("nonempty",) for r in decision.rungs[:-1])
    assert decision.rungs[-1].validators == ()


def test_ladder_min_examples_and_pins() -> None:
    assert rungs(build_policy({"kind": "ladder", "min_examples": 2}), req(task="rare")) == ["icl"]
    assert rungs(build_policy({"kind": "ladder", "min_examples": 1}), req()) == ["prompt"]  # no task, no ICL
    pinned_icl = build_policy({"kind": "ladder", "backends": {"icl": "icl_total"}})
    assert rungs(pinned_icl, req(task="bank")) == ["prompt"]  # a total says nothing about task 'bank'
    pinned = build_policy({"kind": "ladder", "backends": {"prompt_template": "big"}})
    assert rungs(pinned, req()) == ["big"]
    with pytest.raises(ConfigError) as err:
        pinned.validate_against({"prompt": CATALOGUE["prompt"]})
    assert err.value.field == "policy.backends.prompt_template"


# -- cascade --------------------------------------------------------------------------------------------

def test_cascade_rungs_and_shadow() -> None:
    policy = build_policy({"kind": "cascade", "rungs": [
        {"backend": "prompt", "validators": ["json", "regex:^\\{"]},
        {"backend": "big", "fall_through_on_rejected": True}, {"backend": "tuned"}],
        "shadow": ["icl"], "shadow_rate": 0.25})
    decision = policy.decide(req(), CTX)
    assert [r.backend for r in decision.rungs] == ["prompt", "big", "tuned"]
    assert decision.rungs[0].validators == ("json", "regex:^\\{") and decision.rungs[1].fall_through_on_rejected
    assert decision.shadow == ("icl",) and decision.shadow_rate == 0.25
    assert decision.reason.startswith("cascade: prompt[json")


# -- split ----------------------------------------------------------------------------------------------

SPLIT = {"kind": "split", "arms": [{"backend": "prompt", "weight": 90},
                                    {"name": "canary", "weight": 10, "policy": {"kind": "static", "backend": "big"}}]}


def test_split_is_stable_per_key_and_weighted() -> None:
    policy = build_policy(SPLIT)
    again = build_policy(SPLIT)
    arms = [rungs(policy, req(key=f"user-{i}"))[0] for i in range(4000)]
    assert arms == [rungs(again, req(key=f"user-{i}"))[0] for i in range(4000)]  # same key, same arm
    share = Counter(arms)["big"] / len(arms)
    assert 0.07 < share < 0.13
    decision = policy.decide(req("no key here"), CTX)
    assert "by hash of input" in decision.reason
    assert decision.rungs == policy.decide(req("no key here"), CTX).rungs


def test_split_salt_reshuffles() -> None:
    a = [rungs(build_policy(SPLIT), req(key=str(i)))[0] for i in range(300)]
    b = [rungs(build_policy({**SPLIT, "salt": "v2"}), req(key=str(i)))[0] for i in range(300)]
    assert a != b


# -- cost_aware -----------------------------------------------------------------------------------------

def stats(**entries: tuple[float, float, float]) -> BenchStats:
    """backend=(quality, p95 s, $ per request) for task 'bank'."""
    return BenchStats(tasks={"bank": {b: BackendStats(n=100, quality=q, quality_ci=(q - 0.05, q + 0.05),
                                                      latency_p50_s=p95 / 2, latency_p95_s=p95,
                                                      cost_per_request_usd=c)
                                      for b, (q, p95, c) in entries.items()}})


STATS = stats(prompt=(0.5, 0.4, 0.0001), icl=(0.8, 1.2, 0.0004), tuned=(0.85, 0.6, 0.0002),
              big=(0.95, 3.0, 0.002))


@pytest.mark.parametrize(("targets", "task", "expected"), [
    ({"min_quality": 0.7, "max_p95_latency_s": 2.0}, "bank", "tuned"),
    ({"min_quality": 0.4}, "bank", "prompt"),
    ({"min_quality": 0.9}, "bank", "big"),
    ({"min_quality": 0.9, "max_p95_latency_s": 2.0}, "bank", "prompt"),  # nothing eligible -> default
    ({"min_quality": 0.8, "use_ci_low": True}, "bank", "big"),
    ({"min_quality": 0.4, "tasks": {"bank": {"min_quality": 0.82}}}, "bank", "tuned"),
    ({"min_quality": 0.4}, "other", "prompt"),
    ({"min_quality": 0.4, "candidates": ["icl", "big"]}, "bank", "icl"),
])
def test_cost_aware(targets: dict[str, Any], task: str, expected: str, tmp_path: Path) -> None:
    path = STATS.save(tmp_path / "stats.json")
    policy = build_policy({"kind": "cost_aware", "stats_path": str(path), "default": "prompt", **targets})
    decision = policy.decide(req(task=task), CTX)
    assert decision.rungs[0].backend == expected
    if "default" not in decision.reason:
        assert "cheapest of" in decision.reason and "$" in decision.reason and "quality" in decision.reason


def test_a_stats_file_of_another_config_is_refused_or_read_for_the_backends_it_shares(tmp_path: Path) -> None:
    """A stats file whose backends were all renamed sent every request to the default, each decision saying
    that none of the measured backends met the floor; one that shares some counts only those."""
    renamed = stats(old_prompt=(0.9, 0.4, 0.0001), old_big=(0.95, 3.0, 0.002)).save(tmp_path / "renamed.json")
    policy = build_policy({"kind": "cost_aware", "stats_path": str(renamed), "default": "prompt"})
    with pytest.raises(ConfigError) as err:
        policy.validate_against(CATALOGUE)
    assert err.value.field == "policy.stats_path" and "old_big, old_prompt" in err.value.message
    shared = stats(prompt=(0.5, 0.4, 0.0001), gone=(0.99, 0.1, 0.00001)).save(tmp_path / "shared.json")
    policy = build_policy({"kind": "cost_aware", "stats_path": str(shared), "default": "prompt", "min_quality": 0.9})
    policy.validate_against(CATALOGUE)
    decision = policy.decide(req(task="bank"), CTX)
    assert decision.rungs[0].backend == "prompt"
    assert "none of 1 measured backend(s) for task 'bank' has quality >= 0.9" in decision.reason


def test_cost_aware_reads_context_stats_and_fallbacks() -> None:
    policy = build_policy({"kind": "cost_aware", "min_quality": 0.7, "default": "prompt", "fallbacks": 2})
    ctx = PolicyContext(catalogue=CATALOGUE, stats=STATS)
    assert rungs(policy, req(task="bank"), ctx) == ["tuned", "icl", "big"]
    assert "no benchmark statistics" in policy.decide(req(task="bank"), CTX).reason


def test_stats_round_trip(tmp_path: Path) -> None:
    path = STATS.save(tmp_path / "s" / "stats.json")
    assert BenchStats.load(path) == STATS
    assert STATS.cost("icl", "bank") == 0.0004 and STATS.cost("icl", "nope") == 0.0004
    assert STATS.cost_bound("icl", "bank", margin=2) == 0.0008 and STATS.cost_bound("ghost") is None
    assert STATS.get("bank", "missing") is None
    path.write_text('{"version": 1, "tasks": {"t": {"b": {"n": 1}}}}')
    with pytest.raises(ConfigError) as err:
        BenchStats.load(path)
    assert err.value.field == "stats_path" and "quality" in str(err.value)


# -- config errors name the field ----------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "field"), [
    ({"kind": "static"}, "policy.backend"),
    ({"kind": "nope"}, "policy.kind"),
    ({"backend": "x"}, "policy.kind"),
    ({"kind": "rules", "rules": [{"when": {"input_regex": "("}, "backend": "x"}], "default": "p"},
     "policy.rules.0.when.input_regex"),
    ({"kind": "rules", "rules": [{"when": {"colour": "red"}, "backend": "x"}], "default": "p"},
     "policy.rules.0.when.colour"),
    ({"kind": "ladder", "backends": {"magic": "x"}}, "policy.backends.magic"),
    ({"kind": "cascade", "rungs": []}, "policy.rungs"),
    ({"kind": "cascade", "rungs": [{"backend": "a"}], "shadow_rate": 2}, "policy.shadow_rate"),
    ({"kind": "split", "arms": [{"weight": 1}]}, "policy.arms.0"),
    ({"kind": "split", "arms": [{"weight": 0, "backend": "a"}]}, "policy.arms.0.weight"),
    ({"kind": "split", "arms": [{"weight": 1, "policy": {"kind": "static"}}]}, "policy.arms.0.policy.backend"),
    ({"kind": "cost_aware", "stats_path": "/nonexistent/stats.json", "default": "p"}, "policy.stats_path"),
    ({"kind": "budget", "inner": {"kind": "static", "backend": "a"}, "budget_usd": 1}, "policy.costs"),
    ({"kind": "budget", "inner": {"kind": "static", "backend": "a"}, "budget_usd": 1, "costs": {"a": 0.1},
      "on_exhausted": "downgrade"}, "policy.downgrade_to"),
    ({"kind": "budget", "inner": {"kind": "static", "backend": "a"}, "budget_usd": 1, "costs": {"a": 0.1},
      "cost_margin": 0.5}, "policy.cost_margin"),
    ({"kind": "budget", "inner": {"kind": "static"}, "budget_usd": 1, "max_cost_per_request": 0.1},
     "policy.inner.backend"),
    ({"kind": "learned", "model_path": "/nonexistent/router.npz", "default": "p"}, "policy.model_path"),
    ({"kind": "semantic", "default": "p", "search": "chroma"}, "policy.search"),
    # A rule that could never match.
    ({"kind": "rules", "rules": [{"when": {"min_chars": 50, "max_chars": 10}, "backend": "x"}], "default": "p"},
     "policy.rules.0.when.max_chars"),
    # Infinite weights: the arm's edge was NaN and every request went to the other arm.
    ({"kind": "split", "arms": [{"weight": float("inf"), "backend": "a"}, {"weight": 1, "backend": "b"}]},
     "policy.arms.0.weight"),
    ({"kind": "explore", "share": 0.5, "cost_weight": float("inf"), "policy": {"kind": "static", "backend": "a"}},
     "policy.cost_weight"),
    # A quality floor every backend met (NaN: "quality 0.286 >= nan") or none could (above 1, the top score).
    ({"kind": "cost_aware", "default": "p", "min_quality": float("nan")}, "policy.min_quality"),
    ({"kind": "cost_aware", "default": "p", "min_quality": 1.5}, "policy.min_quality"),
    ({"kind": "cost_aware", "default": "p", "tasks": {"t": {"min_quality": float("nan")}}},
     "policy.tasks.t.min_quality"),
    ({"kind": "cost_aware", "default": "p", "tasks": {"t": {"min_quality": -0.1}}}, "policy.tasks.t.min_quality"),
])
def test_config_errors_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_policy(raw)
    # pydantic reports a bad dict key as ``<path>.[key]``; the path is what matters here.
    assert err.value.field is not None and err.value.field.removesuffix(".[key]") == field


@pytest.mark.parametrize(("raw", "field"), [
    ({"kind": "static", "backend": "ghost"}, "policy.backend"),
    ({"kind": "rules", "rules": [{"backend": "prompt", "fallbacks": ["ghost"]}], "default": "prompt"},
     "policy.rules.0.fallbacks.0"),
    ({"kind": "rules", "rules": [], "default": "ghost"}, "policy.default"),
    ({"kind": "cascade", "rungs": [{"backend": "prompt"}], "shadow": ["ghost"]}, "policy.shadow.0"),
    ({"kind": "split", "arms": [{"weight": 1, "policy": {"kind": "static", "backend": "ghost"}}]},
     "policy.arms.0.policy.backend"),
    ({"kind": "cost_aware", "default": "ghost"}, "policy.default"),
    ({"kind": "budget", "inner": {"kind": "static", "backend": "prompt"}, "budget_usd": 1,
      "costs": {"ghost": 0.1}}, "policy.costs.ghost"),
])
def test_unknown_backends_name_the_field(raw: dict[str, Any], field: str) -> None:
    policy = build_policy(raw)
    with pytest.raises(ConfigError) as err:
        policy.validate_against(CATALOGUE)
    assert err.value.field == field and "ghost" in str(err.value)


# -- files and figures that cannot be used are config errors at build ----------------------------------

def _stats_file(path: Path, quality: float) -> str:
    entry = {"n": 10, "quality": quality, "latency_p50_s": 0.1, "latency_p95_s": 0.2, "cost_per_request_usd": 0.0}
    path.write_text(json.dumps({"version": 1, "tasks": {"*": {"prompt": entry}}}), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("quality", [1.5, -1.0, float("nan"), float("inf")])
def test_a_quality_outside_0_1_is_refused_when_stats_are_read(quality: float, tmp_path: Path) -> None:
    path = _stats_file(tmp_path / "stats.json", quality)
    with pytest.raises(ConfigError) as err:  # explore's Beta draw raised a raw ValueError on every request
        build_policy({"kind": "cost_aware", "stats_path": path, "default": "prompt"})
    assert err.value.field == "policy.stats_path" and "quality" in err.value.message


def test_explore_draws_from_stats_built_without_validation() -> None:
    entry = BackendStats.model_construct(n=10, quality=1.5, cost_per_request_usd=0.0)
    nan = BackendStats.model_construct(n=10, quality=float("nan"), cost_per_request_usd=0.0)
    ctx = PolicyContext(catalogue=CATALOGUE, stats=BenchStats.model_construct(tasks={"*": {"big": entry,
                                                                                          "prompt": nan}}))
    policy = build_policy({"kind": "explore", "share": 1.0, "candidates": ["big", "prompt"],
                           "policy": {"kind": "static", "backend": "prompt"}})
    picked = {rungs(policy, req(f"q{i}"), ctx)[0] for i in range(20)}
    assert picked <= {"big", "prompt"} and "big" in picked


def _unreadable(tmp_path: Path, what: str) -> str:
    if what == "directory":
        (tmp_path / "adir").mkdir()
        return str(tmp_path / "adir")
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"backend": "prompt", "utterance": "caf\xe9"}\n')  # not UTF-8
    return str(path)


@pytest.mark.parametrize("what", ["directory", "not UTF-8"])
@pytest.mark.parametrize(("raw", "field"), [
    ({"kind": "semantic", "default": "prompt"}, "routes_file"),
    ({"kind": "cost_aware", "default": "prompt"}, "stats_path"),
    ({"kind": "budget", "inner": {"kind": "static", "backend": "prompt"}, "budget_usd": 1}, "stats_path"),
])
def test_unreadable_files_are_config_errors(raw: dict[str, Any], field: str, what: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build_policy({**raw, field: _unreadable(tmp_path, what)}, field="policy.arms.0.policy")
    assert err.value.field == f"policy.arms.0.policy.{field}"


def test_a_routes_row_without_a_backend_name_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "routes.jsonl"
    path.write_text(json.dumps({"backend": None, "utterance": "hello"}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:  # it became the backend 'None'
        build_policy({"kind": "semantic", "default": "prompt", "routes_file": str(path)})
    assert err.value.field == "policy.routes_file" and "line 1" in err.value.message


def _model_file(tmp_path: Path, method: str = "knn", *, meta: Any = None, **arrays: Any) -> str:
    """A model written by ``fit`` and ``save``, its meta or arrays then replaced."""
    import numpy as np

    from genroute.policies.router_models import fit

    rng = np.random.default_rng(0)
    saved = fit(rng.standard_normal((12, 4)), rng.random((12, 2)), ["prompt", "big"], method=method,
                cost=[0.1, 1.0]).save(tmp_path / "model.npz")
    with np.load(saved) as data:
        stored = {k: data[k] for k in data.files}
    if meta is not None:
        stored["meta"] = np.array(json.dumps(meta(json.loads(str(stored["meta"])))))
    np.savez(saved, **{**stored, **arrays})
    return str(saved)


def _without(key: str) -> Any:
    return lambda meta: {k: v for k, v in meta.items() if k != key}


@pytest.mark.parametrize(("method", "change"), [
    ("knn", {"meta": lambda meta: {**meta, "method": "forest"}}),  # named the field 'method'
    ("knn", {"meta": lambda meta: "hello"}),  # raw AttributeError
    ("knn", {"meta": _without("k")}),  # built, then a raw KeyError at the first request
    ("blend", {"meta": lambda meta: {**meta, "k": "7"}}),
    ("knn", {"meta": _without("backends")}),
    ("knn", {"meta": lambda meta: {**meta, "backends": ["prompt", None]}}),
    ("knn", {"meta": lambda meta: {**meta, "cost": [0.1]}}),
    ("pairwise", {"meta": lambda meta: {**meta, "pair": [0, 5]}}),
    ("knn", {"s": [[0.5, 0.5, 0.5]] * 12}),  # three backends' scores for two backends
    ("logreg", {"b": [0.0]}),
    ("mlp", {"w2": [[0.0, 0.0]]}),  # one hidden unit where w1 has more
])
def test_malformed_model_files_are_config_errors(method: str, change: dict[str, Any], tmp_path: Path) -> None:
    path = _model_file(tmp_path, method, **change)
    with pytest.raises(ConfigError) as err:
        build_policy({"kind": "learned", "model_path": path, "default": "prompt"}, field="policy.arms.0.policy")
    assert err.value.field == "policy.arms.0.policy.model_path" and path in err.value.message
