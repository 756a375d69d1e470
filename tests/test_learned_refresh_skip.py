"""A ``learned`` policy refreshed from outcomes fits again only when what the fit reads changed: the training rows
(new records, a record rewritten with another score or cost) or its settings; not on a refresh that brought nothing
new, nor when backend facts (an ICL backend's example count, the catalogue) changed, which the fit does not read.

Fits are counted through the public seam: ``Router.refresh()`` returns whether the policy changed, and a fit swaps
in a new policy object (its model file rewritten)."""

from __future__ import annotations

import json

from genroute import Router
from genroute.knowledge.examples import aload_examples
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side
from genroute.policies.learned import LearnedPolicy, train

from .conftest import gemini_config

CARD = [f"where is my card number {i}" for i in range(12)]
FEE = [f"what fee did you charge me {i}" for i in range(12)]


def fill(tmp_path, n, *, chat_cost=0.0001, start=0):
    """Records ``start``..``start + n`` (ids kept: a second fill of the same ids rewrites them)."""
    store = OutcomeStore(tmp_path / "outcomes.db")
    texts = CARD + FEE
    for i in range(start, start + n):
        store.upsert_sync(OutcomeRecord(
            input=texts[i % len(texts)], output="x", metadata={"id": f"r{i}", "task": "bank"},
            outcomes={"chat": Side(score=float(i % 24 < 12), cost_usd=chat_cost, latency_s=0.1),
                      "pro": Side(score=1.0, cost_usd=0.001, latency_s=0.1)}))


def test_a_refresh_fits_the_learned_policy_only_when_its_training_rows_changed(gemini_server, tmp_path):
    train([{"input": t, "backend": b, "score": float(b == "pro"), "cost_usd": c, "record_id": t}
           for t in CARD + FEE for b, c in (("chat", 0.0001), ("pro", 0.001))], tmp_path / "learned.npz")
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"input": f"review {i}", "output": "positive",
                                            "metadata": {"task": "bank"}}) + "\n" for i in range(3)))
    cfg = gemini_config(gemini_server)
    cfg["backends"]["pro"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-pro"}
    cfg["backends"]["icl"] = {**cfg["backends"]["chat"], "kind": "icl", "collection": "examples",
                              "selector": "fixed", "tasks": ["bank"]}
    cfg["knowledge"] = {"path": str(tmp_path / "chroma"), "embedder": {"kind": "local"}}
    cfg["policy"] = {"kind": "learned", "model_path": str(tmp_path / "learned.npz"), "default": "pro"}
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "min_n": 20}
    refreshed = tmp_path / "learned.refreshed.npz"
    with Router.from_config(cfg) as router:
        fill(tmp_path, 24)
        assert router.refresh() is True   # the first fit on production outcomes
        first = router.policy
        assert isinstance(first, LearnedPolicy) and first.model.meta["n_train"] == 24
        assert router.decide("where is my card number 99").rungs[0].backend == "chat"
        refreshed.unlink()   # each fit writes it

        assert router.refresh() is False   # nothing new: no fit
        assert router.refresh() is False
        assert router.policy is first and not refreshed.exists()

        # Backend facts change (the ICL backend's example count, read again by the refresh): the fit reads none.
        router._portal.call(aload_examples(router.resources.knowledge, [examples], collection="examples"))
        before = router.catalogue["icl"].facts["example_count"]
        assert router.refresh() is False
        assert router.catalogue["icl"].facts["example_count"] == before + 3
        assert router.policy is first and not refreshed.exists()

        fill(tmp_path, 24, start=24)   # new records: fit again
        assert router.refresh() is True
        second = router.policy
        assert second is not first and second.model.meta["n_train"] == 48 and refreshed.exists()
        assert router.refresh() is False and router.policy is second

        fill(tmp_path, 24, chat_cost=0.0002)   # the same records rewritten, another cost: the rows changed
        assert router.refresh() is True and router.policy is not second
        third = router.policy
        assert router.refresh() is False and router.policy is third


def test_a_refresh_fits_with_the_estimator_options_the_model_was_compiled_with(tmp_path):
    # A logistic regression compiled with l2=0.5 (or a pairwise model with its rank, an mlp with its hidden size) was
    # refit by each refresh with the defaults: the options its file records were not passed on.
    from genroute.policies import build_policy
    from genroute.policies.base import BackendInfo, PolicyContext, PolicyUpdate
    from genroute.policies.stats import BenchStats

    rows = [{"input": t, "backend": b, "score": float(b == "pro" or t in CARD), "cost_usd": c, "record_id": t,
             "task": None} for t in CARD + FEE for b, c in (("chat", 0.0001), ("pro", 0.001))]
    train(rows, tmp_path / "learned.npz", method="logreg", l2=0.5, epochs=20, test_share=0.0)
    policy = build_policy({"kind": "learned", "model_path": str(tmp_path / "learned.npz"), "default": "pro"})
    context = PolicyContext(catalogue={b: BackendInfo(name=b, kind="x") for b in ("chat", "pro")})
    new = policy.refreshed(PolicyUpdate(stats=BenchStats(), rows=rows, context=context, min_n=2))
    assert new is not None and new.model.method == "logreg"
    assert new.model.meta["options"] == {"l2": 0.5, "epochs": 20}
    assert new.refreshed(PolicyUpdate(stats=BenchStats(), rows=rows, context=context, min_n=2)) is None


def test_a_refresh_fits_with_the_seed_the_model_was_trained_with(tmp_path):
    # The model file did not store training's seed: every refresh fit with seed 0 (an mlp's initial weights).
    import numpy as np

    from genroute.policies import build_policy
    from genroute.policies.base import BackendInfo, PolicyContext, PolicyUpdate
    from genroute.policies.router_models import RouterModel
    from genroute.policies.stats import BenchStats

    rows = [{"input": t, "backend": b, "score": float(b == "pro" or t in CARD), "cost_usd": c, "record_id": t,
             "task": None} for t in CARD + FEE for b, c in (("chat", 0.0001), ("pro", 0.001))]
    options = {"method": "mlp", "hidden": 8, "epochs": 3, "test_share": 0.0}
    for seed in (0, 7):
        train(rows, tmp_path / f"seed{seed}.npz", seed=seed, **options)
    context = PolicyContext(catalogue={b: BackendInfo(name=b, kind="x") for b in ("chat", "pro")})

    def refreshed(path):
        policy = build_policy({"kind": "learned", "model_path": str(path), "default": "pro"})
        new = policy.refreshed(PolicyUpdate(stats=BenchStats(), rows=rows, context=context, min_n=2))
        assert new is not None
        return new.model

    seven, zero = RouterModel.load(tmp_path / "seed7.npz"), RouterModel.load(tmp_path / "seed0.npz")
    assert seven.meta["seed"] == 7 and not np.array_equal(seven.arrays["w1"], zero.arrays["w1"])
    again = refreshed(tmp_path / "seed7.npz")
    assert again.meta["seed"] == 7 and np.array_equal(again.arrays["w1"], seven.arrays["w1"])
    # A model file written before the seed was stored still loads, and refreshes with 0 as it did.
    older = RouterModel(seven.method, seven.backends, seven.arrays, {k: v for k, v in seven.meta.items() if k != "seed"})
    older.save(tmp_path / "older.npz")
    assert "seed" not in RouterModel.load(tmp_path / "older.npz").meta
    assert np.array_equal(refreshed(tmp_path / "older.npz").arrays["w1"], zero.arrays["w1"])
