"""Outcome matrices: loading, curve metrics against hand-computed cases, offline compile on a synthetic matrix
whose right routing is known, the refusal to judge on training records, and `genroute bench --outcomes`."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genroute.bench import curves
from genroute.bench.cli import bench_main
from genroute.bench.embedding_cache import CachedEmbedder
from genroute.bench.offline import compile_outcomes
from genroute.bench.matrix_stats import matrix_stats, matrix_summaries
from genroute.bench.outcomes import CandidatePrice, CandidatePricing, load_matrix, load_pricing
from genroute.errors import UsageError
from genroute.knowledge.embedders import LocalEmbedder
from genroute.policies.base import PolicyContext
from genroute.policies.learned import LearnedConfig, LearnedPolicy
from genroute.policies.semantic import SemanticConfig, SemanticPolicy
from genroute.types import GenerateRequest

#: Two estimators keep the tests quick (the default compares seven, by 5-fold cross-validation).
SPECS = ({"method": "knn", "k": 5}, {"method": "logreg"})
BOOKS = ["Hamlet", "the Odyssey", "Don Quixote", "War and Peace", "Faust", "Ulysses", "Moby Dick", "Dracula",
         "Emma", "Beloved", "Candide", "Lolita"]


def synthetic(n: int = 40, seed: int = 0, prefix: str = "") -> list[dict[str, Any]]:
    """Math questions: only A (cheap) and C (dear) are right. Trivia: only B (cheap) and C. The oracle sends
    math to A and trivia to B, at a tenth of C's cost."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, op = rng.randint(2, 999), rng.randint(2, 999), rng.choice("+*-")
        rows.append({"input": f"{prefix}Compute {a} {op} {b} and give the number.",
                     "metadata": {"task": "math", "id": f"{prefix}m{i}"},
                     "outcomes": {"A": {"score": 1.0, "cost_usd": 0.001}, "B": {"score": 0.0, "cost_usd": 0.001},
                                  "C": {"score": 1.0, "cost_usd": 0.01}}})
        rows.append({"input": f"{prefix}Trivia {i}: who wrote {rng.choice(BOOKS)}? (ref {rng.randint(1, 10**6)})",
                     "metadata": {"task": "trivia", "id": f"{prefix}t{i}"},
                     "outcomes": {"A": {"score": 0.0, "cost_usd": 0.001}, "B": {"score": 1.0, "cost_usd": 0.001},
                                  "C": {"score": 1.0, "cost_usd": 0.01}}})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


# -- metrics, by hand ------------------------------------------------------------------------------------

def test_hull_drops_dominated_and_concave_points() -> None:
    # (2, 0.6) lies under the chord from (1, 0.5) to (3, 0.9) (0.7 there); (2.5, 0.4) is dominated.
    assert curves.hull([(2, 0.6), (1, 0.5), (3, 0.9), (2.5, 0.4), (3, 0.8)]) == [(1, 0.5), (3, 0.9)]


def test_aiq_apgr_cost_saved_by_hand() -> None:
    points = [(1, 0.5), (2, 0.6), (3, 0.9)]
    # Hull (1, .5)-(3, .9): mean over [1, 3] is 0.7; over [1, 5] it runs flat at 0.9 after 3: (1.4 + 1.8) / 4.
    assert curves.aiq(points, 1, 3) == pytest.approx(0.7)
    assert curves.aiq(points, 1, 5) == pytest.approx((1.4 + 1.8) / 4)
    # Below the router's cheapest point it reaches nothing: over [0, 2] only [1, 2] counts, 0.5..0.7 -> 0.6/2.
    assert curves.aiq(points, 0, 2) == pytest.approx(0.3)
    assert curves.quality_at_cost(points, 2) == pytest.approx(0.7)
    assert curves.cost_at_quality(points, 0.8) == pytest.approx(2.5)
    assert curves.cost_at_quality(points, 0.95) is None
    # APGR between weak (1, 0.5) and strong (3, 0.9): (0.7 - 0.5) / (0.9 - 0.5) = 0.5 (a straight line).
    assert curves.apgr(points, (1, 0.5), (3, 0.9)) == pytest.approx(0.5)
    # A router reaching the strong quality at once recovers the whole gap on the way.
    assert curves.apgr([(1, 0.9)], (1, 0.5), (3, 0.9)) == pytest.approx(1.0)
    assert curves.apgr(points, (1, 0.9), (3, 0.5)) is None  # the "strong" one is worse: no gap to recover
    # 95 % of the best single (4, 1.0) is 0.95 — not on the hull; 0.855 of (4, 0.9) is at 2.775: 30.6 % saved.
    assert curves.cost_saved(points, (4, 1.0)) is None
    assert curves.cost_saved(points, (4, 0.9)) == pytest.approx(1 - (1 + 2 * (0.855 - 0.5) / 0.4) / 4)


# -- loading ---------------------------------------------------------------------------------------------

def test_load_matrix_gz_missing_candidates_and_pricing(tmp_path: Path) -> None:
    rows = synthetic(3)
    for r in rows:
        for o in r["outcomes"].values():
            del o["cost_usd"]
    rows.append({"input": "partial", "metadata": {"id": "p"}, "outcomes": {"A": {"score": 1.0}}})
    path = write_jsonl(tmp_path / "m.jsonl.gz", rows)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"A": {"size": "7B"}, "B": {"params_b": 14}, "C": {"size": "8x7B"}}))
    pricing = load_pricing(prices, output_tokens=100, usd_per_1m_per_billion=0.01)
    matrix = load_matrix(path, pricing=pricing)
    assert matrix.candidates == ("A", "B", "C") and len(matrix.records) == 6 and matrix.dropped == 1
    words = len(matrix.records[0].input.split())
    assert matrix.costs[0, 0] == pytest.approx((words + 100) * 0.07 / 1e6)
    assert matrix.costs[0, 2] == pytest.approx(8 * matrix.costs[0, 0])
    assert "per billion parameters" in matrix.cost_basis and matrix.records[0].task == "math"
    summary = matrix_summaries(matrix)[0]
    assert (summary.backend, summary.n, summary.metric) == ("A", 6, "outcome-matrix")
    with pytest.raises(UsageError) as err:
        load_matrix([{"input": "x", "outcomes": {"A": {"score": 2.0}}}])
    assert err.value.field == "outcomes" and "score" in str(err.value)
    with pytest.raises(UsageError) as err:
        load_matrix(path)  # no costs in the file, no pricing: fine (quality only) ...
        load_matrix(path, pricing=load_pricing(prices, usd_per_1m_per_billion=None))
    assert err.value.field == "prices.A"
    with pytest.raises(UsageError) as err:  # its records become bench records: label_set is a list there too
        load_matrix([{"input": "x", "metadata": {"label_set": "a,b"}, "outcomes": {"A": {"score": 1.0}}}])
    assert err.value.field == "outcomes" and err.value.message.startswith("record 1 (counting from 1): metadata: label_set: must be a list")


def test_prices_are_paid_on_the_token_counts_an_outcome_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    # A matrix giving each candidate's tokens per query (as SPROUT does, and the outcome store writes) was priced on
    # the query's words and --output-tokens, whatever the candidate had used: a verbose candidate cost as a terse one.
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"terse": {"input_usd_per_1m": 1.0, "output_usd_per_1m": 10.0},
                                  "verbose": {"input_usd_per_1m": 1.0, "output_usd_per_1m": 10.0}}))
    pricing = load_pricing(prices, output_tokens=100)
    rows = [{"input": "three words here", "outcomes": {
        "terse": {"score": 1.0, "input_tokens": 12, "output_tokens": 5},
        "verbose": {"score": 1.0, "output_tokens": 900}}}]  # input tokens not recorded: the query's words
    matrix = load_matrix(rows, pricing=pricing)
    assert matrix.costs[0].tolist() == pytest.approx([(12 * 1.0 + 5 * 10.0) / 1e6, (3 * 1.0 + 900 * 10.0) / 1e6])
    assert "tokens each outcome recorded" in matrix.cost_basis
    rows[0]["outcomes"]["terse"]["cost_usd"] = 0.5  # given: the file's cost, and the basis says whose are whose
    mixed = load_matrix(rows, pricing=pricing)
    assert mixed.costs[0, 0] == 0.5 and mixed.costs[0, 1] == matrix.costs[0, 1]
    assert mixed.cost_basis.startswith("cost_usd from the file for 1 of 2 outcomes; the others: cost = ")
    del rows[0]["outcomes"]["terse"]["cost_usd"]
    estimated = load_matrix([{"input": "three words here", "outcomes": {"terse": {"score": 1.0}}}], pricing=pricing)
    assert estimated.costs[0, 0] == pytest.approx((3 + 100 * 10.0) / 1e6)
    assert "the same token estimate for every candidate" in estimated.cost_basis
    rows[0]["outcomes"]["verbose"]["output_tokens"] = -900  # would pay the run back
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    assert bench_main(["--outcomes", str(data), "--prices", str(prices), "--out", str(tmp_path / "o")]) == 2
    assert "m.jsonl:1: outcomes.verbose.output_tokens: must be a whole number >= 0 (got -900)" in capsys.readouterr().err


def test_the_input_token_estimate_counts_a_character_of_an_unspaced_script_as_a_token() -> None:
    # A Chinese, Japanese or Thai question has no spaces: priced as "one word" whatever its length, it cost a
    # 40-character question as much as "Hi" — a multilingual matrix's costs were those of its English part.
    pricing = CandidatePricing(prices={"a": CandidatePrice(input_usd_per_1m=1.0, output_usd_per_1m=0.0)},
                               output_tokens=0)
    assert pricing.input_tokens("Compute 12 * 7.") == 4  # words, as before
    assert pricing.input_tokens("请计算十二乘以七等于多少") == 12
    assert pricing.input_tokens("请计算 12 乘以 7。") == 7  # 5 characters, and the words "12" and "7。"
    assert pricing.input_tokens("カードを紛失しました") == 10
    # Ideographs outside the BMP (CJK Extension B and later) and halfwidth katakana were "one word" a run.
    assert pricing.input_tokens("𠀀𠀁𠀂𪜀 x") == 5
    assert pricing.input_tokens("ｶｰﾄﾞｦﾌﾝｼﾂ") == 9
    assert pricing.input_tokens("〇〇株式会社") == 6  # 々 〆 〇 (U+3005-3007) were letters of "one word"
    assert pricing.input_tokens("〆切は日々々") == 6
    assert pricing.cost("请计算十二乘以七等于多少", "a") == pytest.approx(12 / 1e6)
    assert "a character each in Chinese, Japanese, Thai" in pricing.describe()


def test_embedding_cache_embeds_each_text_once(embedder: LocalEmbedder, tmp_path: Path) -> None:
    first = CachedEmbedder(embedder, tmp_path)
    a = first.embed_array(["one", "two"])
    # A new process with the same embedder: reads the file, embeds nothing.
    again = CachedEmbedder(_Refusing(embedder.model, embedder.fingerprint()), tmp_path)
    assert np.array_equal(again.embed_array(["two", "one"]), a[::-1])


def test_an_embedder_that_makes_other_vectors_under_the_same_name_does_not_read_the_cache(
        embedder: LocalEmbedder, tmp_path: Path) -> None:
    # The cache was keyed by the model's name alone: another model file or version under that name, or one reading
    # fewer tokens of each text, was handed the vectors the first had cached.
    long = " ".join(f"word{i}" for i in range(100))
    short = LocalEmbedder(max_length=8)
    assert short.model == embedder.model
    cut = CachedEmbedder(short, tmp_path).embed_array([long])
    whole = CachedEmbedder(embedder, tmp_path).embed_array([long])
    assert np.allclose(whole, embedder.embed_array([long]), atol=1e-6) and not np.allclose(whole, cut, atol=1e-3)
    with pytest.raises(AssertionError, match="embedded again"):   # another file or version: embedded anew
        CachedEmbedder(_Refusing(embedder.model, embedder.fingerprint() + "|1.0.1"), tmp_path).embed_array([long])


async def test_the_cache_knows_an_embedder_by_the_identity_a_request_shares_vectors_by(tmp_path: Path) -> None:
    # One definition (runtime.embeddings.vector_key) for both: a cache file is shared exactly by the embedders whose
    # vectors a request shares (a task type or a width apart: another file); one without a fingerprint, by its model.
    from genroute.engines.gemini import GeminiEngine
    from genroute.knowledge.embedders import GeminiEmbedder
    from genroute.runtime.embeddings import vector_key

    engine = GeminiEngine("g", {"api_key": "k", "base_url": "http://127.0.0.1:9"})
    try:
        embedders = [GeminiEmbedder(engine, dimension=64, task_type="RETRIEVAL_QUERY"),
                     GeminiEmbedder(engine, dimension=64, task_type="RETRIEVAL_QUERY"),
                     GeminiEmbedder(engine, dimension=64, task_type="SEMANTIC_SIMILARITY"),
                     GeminiEmbedder(engine, dimension=128, task_type="RETRIEVAL_QUERY")]
        paths = [CachedEmbedder(e, tmp_path).path for e in embedders]
    finally:
        await engine.aclose()
    keys = [vector_key(e) for e in embedders]
    assert [paths.index(p) for p in paths] == [keys.index(k) for k in keys] == [0, 0, 2, 3]
    anonymous = _Refusing("my-model", "")
    del anonymous.fingerprint
    assert vector_key(anonymous) is None and CachedEmbedder(anonymous, tmp_path).path.name.startswith(
        "embeddings-my-model-")


def test_a_cache_file_genroute_did_not_write_is_a_usage_error(embedder: LocalEmbedder, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # numpy's reader raised from deep inside (a traceback from `genroute bench`), and vectors of another width
    # were mixed with new ones.
    path, legacy = CachedEmbedder(embedder, tmp_path).path, CachedEmbedder(embedder, tmp_path).legacy_path
    np.savez(legacy, keys=np.array(["k"]), vectors=np.zeros((1, 8), dtype=np.float32))  # another embedder's width
    with pytest.raises(UsageError) as err:
        CachedEmbedder(embedder, tmp_path)
    assert err.value.field == "cache_dir" and str(legacy) in err.value.message
    for content in (b"garbage", b"PK\x03\x04 cut short", legacy.read_bytes()):
        path.write_bytes(content)
        with pytest.raises(UsageError) as err:
            CachedEmbedder(embedder, tmp_path)
        assert err.value.field == "cache_dir" and str(path) in err.value.message
    data = write_jsonl(tmp_path / "m.jsonl", synthetic(15))
    assert bench_main(["--outcomes", str(data), "--out", str(tmp_path / "out"), "--embedding-cache",
                       str(tmp_path)]) == 2
    assert "--embedding-cache: " in capsys.readouterr().err


class _Refusing:
    def __init__(self, model: str, fingerprint: str) -> None:
        self.model = model
        self.fingerprint = lambda: fingerprint

    def embed_array(self, texts: list[str]) -> np.ndarray:
        raise AssertionError(f"embedded again: {texts}")


# -- compiling on a matrix -------------------------------------------------------------------------------

def test_compile_routes_math_to_a_and_trivia_to_b(embedder: LocalEmbedder, tmp_path: Path) -> None:
    report = compile_outcomes(synthetic(), out_dir=tmp_path, embedder=embedder, min_n=10, specs=SPECS)
    rows = {r.name: r for r in report.rows}
    oracle = rows["oracle"]
    assert oracle.quality == 1.0 and set(oracle.picks) == {"A", "B"}
    assert rows["best single (train)"].picks == {"C": 24} and rows["best single (train)"].quality == 1.0
    for name in ("cost_aware (task label)", "learned (text + task) at best-single quality",
                 "learned (text only) at best-single quality", "semantic routes (text only) at best-single quality",
                 "learned (text + task) at CV-chosen cost weight (resolved)",
                 "learned (text only) at CV-chosen cost weight (one_se)"):
        assert rows[name].quality == 1.0, name
        assert rows[name].picks == oracle.picks, name  # math -> A, trivia -> B: the oracle's routing
        assert rows[name].cost_per_request_usd == pytest.approx(0.001)
    text_only = next(c for c in report.curves if c.name == "learned (text only)")
    assert text_only.aiq == pytest.approx(1.0) and text_only.cost_saved_at_95 == pytest.approx(0.9)
    saved = json.loads(Path(report.files["compiled"]).read_text())
    assert {"name", "quality", "cost_per_request_usd", "n", "picks"} <= set(saved["rows"][0])
    assert saved["n_eval"] == report.n_eval == 24 and saved["n_train"] == 56
    for name in ("curve", "stats", "learned-text", "learned-task", "markdown", "html"):
        assert Path(report.files[name]).exists(), name
    assert "Cost–quality curve" in Path(report.files["markdown"]).read_text()
    # The compiled model file is a learned policy a router loads: it decides as the comparison did, at the cost
    # weight the default rule (resolved) chose by cross-validation.
    policy = LearnedPolicy(LearnedConfig(model_path=report.files["learned-text"], default="C"), embedder=embedder)
    assert policy.cost_weight == rows["learned (text only) at CV-chosen cost weight (resolved)"].knob
    assert report.cost_weights["learned (text only)"]["resolved"]["weight"] == policy.cost_weight
    assert "by rule `resolved`" in report.markdown()
    context = PolicyContext(catalogue={})
    assert policy.decide(GenerateRequest(input="Compute 31 * 7 and give the number."), context).rungs[0].backend == "A"
    trivia = GenerateRequest(input="Trivia 99: who wrote Emma? (ref 5)")
    assert policy.decide(trivia, context).rungs[0].backend == "B"
    # The compiled semantic routes are a semantic policy config a person reads: training queries per candidate.
    semantic = json.loads(Path(report.files["semantic"]).read_text())
    assert semantic["kind"] == "semantic" and semantic["default"] == "C" and set(semantic["routes"]) == {"A", "B"}
    assert all(u.startswith("Compute") for u in semantic["routes"]["A"])
    assert all(u.startswith("Trivia") for u in semantic["routes"]["B"])
    routes = SemanticPolicy(SemanticConfig.model_validate(semantic), embedder=embedder)
    assert routes.decide(GenerateRequest(input="Compute 31 * 7 and give the number."), context).rungs[0].backend == "A"
    assert routes.decide(trivia, context).rungs[0].backend == "B"
    assert "Compiled semantic routes" in report.markdown()
    assert any(m["spec"].startswith("semantic routes (") and m["chosen"]
               for m in report.methods["semantic routes (text only)"])


def test_cross_validation_never_scores_a_training_query_by_its_own_copy(embedder: LocalEmbedder,
                                                                         tmp_path: Path) -> None:
    # Each question three times, a coin per question saying which of A and B is right: nothing in the text predicts
    # it. Copies in different folds found each other at similarity 1, so cross-validation reported the learned
    # router's out-of-fold quality at 0.88 and chose the estimator and the semantic cluster count that memorised
    # best; on the held-out questions all of them are a coin.
    rng = random.Random(0)
    rows = []
    for q in range(80):
        text = f"Question {q}: " + " ".join(rng.choice(BOOKS) for _ in range(4))
        a_right = rng.random() < 0.5
        rows += [{"input": text, "metadata": {"id": f"q{q}-{c}", "task": "t"},
                  "outcomes": {"A": {"score": float(a_right), "cost_usd": 0.001},
                               "B": {"score": float(not a_right), "cost_usd": 0.001}}} for c in range(3)]
    report = compile_outcomes(rows, out_dir=tmp_path, embedder=embedder, min_n=10, specs=SPECS)
    for name, by_rule in report.cost_weights.items():
        assert by_rule["best"]["best_quality"] < 0.7, name
    for name, methods in report.methods.items():
        assert all(m["validation_aiq"] < 0.7 for m in methods), (name, methods)


def test_the_compiled_cost_aware_config_decides_in_a_router_as_its_row_did(gemini_server: Any, tmp_path: Path) -> None:
    # compile_outcomes scored a cost_aware policy with each task's floor at 95 % of its best, but wrote only
    # stats.json: a cost_aware config on it (min_quality 0 unless told) sent every request to the cheapest candidate.
    from genroute import Router
    from genroute.bench.offline import split_by_text

    from .conftest import gemini_config

    rows = synthetic(30)
    for row in rows:  # C right on math only 80 % of the time: math goes to A (cheaper, always right), trivia to B
        row["outcomes"]["C"]["cost_usd"] = 0.0005
        if row["metadata"]["task"] == "math" and int(row["metadata"]["id"][1:]) % 5 == 0:
            row["outcomes"]["C"]["score"] = 0.0
    report = compile_outcomes(rows, out_dir=tmp_path / "out", learned=False, min_n=10)
    expected = next(r for r in report.rows if r.name == "cost_aware (task label)").picks
    config = gemini_config(gemini_server)
    config["backends"] = {c: config["backends"]["chat"] for c in ("A", "B", "C")}
    config["policy"] = json.loads(Path(report.files["cost_aware"]).read_text())
    # Absolute: a config resolves a relative *_path against its own directory, not the one compile ran in.
    assert Path(config["policy"]["stats_path"]).is_absolute()
    _, held = split_by_text(load_matrix(rows), holdout=0.3, seed=0)
    with Router.from_config(config) as router:
        decided = [router.decide(r.input, task=r.task).rungs[0].backend for r in held.records]
    assert {c: decided.count(c) for c in set(decided)} == expected and set(expected) == {"A", "C"}


def test_a_compiled_learned_model_refuses_another_embedder(embedder: LocalEmbedder, tmp_path: Path) -> None:
    # The model files compile_outcomes wrote did not say which embedder made their vectors, so a learned policy
    # given another one (another 384-wide model, say) routed on vectors the model had never seen, silently.
    from genroute.errors import ConfigError

    report = compile_outcomes(synthetic(15), out_dir=tmp_path, embedder=embedder, min_n=5, specs=SPECS)
    for name in ("learned-text", "learned-task"):
        LearnedPolicy(LearnedConfig(model_path=report.files[name], default="C"), embedder=embedder)
        with pytest.raises(ConfigError) as err:
            LearnedPolicy(LearnedConfig(model_path=report.files[name], default="C"), embedder=_Refusing("other-384", "other"))
        assert err.value.field.endswith("model_path") and "other-384" in err.value.message


def test_a_router_that_sends_everything_to_one_candidate_says_so_beside_its_win(tmp_path: Path) -> None:
    # cost_aware sent every evaluation record to A (its floor met on the only task) and A beat the training's best
    # single, C, on the later file: the comparison read "cost_aware (task label) wins", a routing win, when the
    # policy had routed nothing — any single candidate but C would have won the same.
    def rows(n: int, a: float, c: float, prefix: str) -> list[dict[str, Any]]:
        return [{"input": f"{prefix} question {i}", "metadata": {"task": "t", "id": f"{prefix}{i}"},
                 "outcomes": {"A": {"score": float(i % 100 < a * 100), "cost_usd": 0.001},
                              "C": {"score": float(i % 100 < c * 100), "cost_usd": 0.01}}} for i in range(n)]

    report = compile_outcomes(rows(100, 0.97, 1.0, "train"), eval_source=rows(100, 1.0, 0.5, "later"),
                              out_dir=tmp_path, learned=False, min_n=10)
    cmp = next(c for c in report.comparisons if (c.router, c.baseline) == ("cost_aware (task label)",
                                                                          "best single (train)"))
    assert cmp.verdict.startswith("cost_aware (task label) wins")
    assert cmp.verdict.endswith("cost_aware (task label) sent every record to A: a single candidate, nothing routed")
    assert "nothing routed" in report.markdown()


def test_the_report_says_what_the_evaluation_file_holds_that_training_does_not(tmp_path: Path) -> None:
    """An evaluation file's candidate the training file has no outcome of was left out, and records of a task no
    training record has were routed by fallbacks, both rightly but without a word in the report."""
    def rows(n: int, prefix: str, tasks: list[str], candidates: list[str]) -> list[dict[str, Any]]:
        return [{"input": f"{prefix} question {i}", "metadata": {"task": tasks[i % len(tasks)], "id": f"{prefix}{i}"},
                 "outcomes": {c: {"score": float((i + k) % 3 == 0), "cost_usd": 0.001 * (k + 1)}
                              for k, c in enumerate(candidates)}} for i in range(n)]

    train = rows(40, "train", ["a", "b"], ["A", "C"])
    report = compile_outcomes(train, eval_source=rows(30, "later", ["a", "b", "new"], ["A", "C", "D"]),
                              out_dir=tmp_path / "o", learned=False, min_n=10)
    assert report.notes == [
        "The evaluation file's candidate(s) D have no outcome in the training file: left out (no compiled policy "
        "routes to them); the evaluation is over A, C.",
        "10 of 30 evaluation records have a task no training record has (1 task(s): new): per-task best sends them "
        "to the best single, cost_aware (task label) to its default."]
    assert all(f"- {note}" in report.markdown() for note in report.notes)
    rows_by = {r.name: r for r in report.rows}
    assert rows_by["per-task best (train)"].n == 30 and report.candidates == ["A", "C"]
    plain = compile_outcomes(train, eval_source=rows(30, "later", ["a", "b"], ["A", "C"]), out_dir=tmp_path / "p",
                             learned=False, min_n=10)
    assert plain.notes == [] and "no training record has" not in plain.markdown()


def test_refuses_to_judge_on_training_records(embedder: LocalEmbedder, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", synthetic(20))
    overlapping = write_jsonl(tmp_path / "later.jsonl", synthetic(20, seed=1, prefix="x")[:10] + synthetic(20)[:1])
    with pytest.raises(UsageError) as err:
        compile_outcomes(train, eval_source=overlapping, out_dir=tmp_path / "o", embedder=embedder, specs=SPECS)
    assert err.value.field == "eval_outcomes" and "compiled from" in str(err.value)
    # Same text under another id is the same record too.
    renamed = synthetic(20)[:1]
    renamed[0]["metadata"]["id"] = "new-id"
    with pytest.raises(UsageError, match="1 input"):
        compile_outcomes(train, eval_source=renamed, out_dir=tmp_path / "o", embedder=embedder, specs=SPECS)
    # ... and so is the same text in other case or spacing.
    renamed[0]["input"] = "  " + renamed[0]["input"].upper().replace(" ", "  ")
    with pytest.raises(UsageError, match="1 input"):
        compile_outcomes(train, eval_source=renamed, out_dir=tmp_path / "o", embedder=embedder, specs=SPECS)
    later = write_jsonl(tmp_path / "later2.jsonl", synthetic(10, seed=1, prefix="x"))
    report = compile_outcomes(train, eval_source=later, out_dir=tmp_path / "ok", embedder=embedder, min_n=10,
                              specs=SPECS)
    assert report.n_train == 40 and report.n_eval == 20 and "another file" in report.evaluated_on


def test_two_files_without_ids_are_judged_one_on_the_other(tmp_path: Path) -> None:
    # Both files' records were numbered record-1, record-2...: --eval-outcomes refused every pair of id-less files
    # as sharing their records. An id both files give is still one record.
    train, later = synthetic(20), synthetic(10, seed=1, prefix="later ")
    for row in train + later:
        del row["metadata"]["id"]
    report = compile_outcomes(write_jsonl(tmp_path / "train.jsonl", train),
                              eval_source=write_jsonl(tmp_path / "later.jsonl", later), out_dir=tmp_path / "o",
                              learned=False, min_n=10)
    assert (report.n_train, report.n_eval) == (40, 20)
    later[0]["metadata"]["id"] = "record-1"  # given in the evaluation file: a training record's number, not its id
    compile_outcomes(train, eval_source=later, out_dir=tmp_path / "o2", learned=False, min_n=10)
    train[0]["metadata"]["id"] = "record-1"  # given in both: the same record
    with pytest.raises(UsageError, match="1 record id") as err:
        compile_outcomes(train, eval_source=later, out_dir=tmp_path / "o3", learned=False, min_n=10)
    assert err.value.field == "eval_outcomes"


def test_a_pipe_in_a_candidate_or_task_name_stays_in_its_table_cell(embedder: LocalEmbedder, tmp_path: Path) -> None:
    # A candidate "A|1" or a task "math|x" gave its rows a column more than the header: the tables broke.
    from .test_bench import assert_tables_keep_their_columns

    rows = synthetic(15)
    for row in rows:
        row["outcomes"]["A|1"] = row["outcomes"].pop("A")
        row["metadata"]["task"] += "|x"
    report = compile_outcomes(rows, out_dir=tmp_path, embedder=embedder, min_n=5, specs=SPECS)
    text = report.markdown()
    assert assert_tables_keep_their_columns(text) >= 4  # routers, curves, comparisons, estimators, routes
    assert "A\\|1" in text and "math\\|x" in text


def test_cli_outcomes_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "m.jsonl", synthetic(15))
    out = tmp_path / "out"
    assert bench_main(["--outcomes", str(data), "--out", str(out), "--min-verdict-n", "5"]) == 0
    printed = capsys.readouterr().out
    assert "per-task best (train)" in printed and "AIQ" in printed and "compiled.json" in printed
    assert "semantic.json (semantic)" in printed and "learned-text.npz (learned)" in printed
    rows = json.loads((out / "compiled.json").read_text())["rows"]
    assert {r["name"] for r in rows} >= {"random", "single A", "best single (train)", "oracle",
                                         "learned (text only) at best-single quality"}
    # --candidates routes between the named ones only.
    assert bench_main(["--outcomes", str(data), "--out", str(tmp_path / "ab"), "--candidates", "A,B"]) == 0
    assert json.loads((tmp_path / "ab" / "compiled.json").read_text())["candidates"] == ["A", "B"]
    # A and B cost the same: the front has one candidate, so the pairwise estimator does not apply, and says so.
    ab = compile_outcomes(data, out_dir=tmp_path / "ab2", candidates=["A", "B"], min_n=5,
                          specs=({"method": "knn", "k": 5}, {"method": "pairwise"}))
    pairwise = [m for m in ab.methods["learned (text only)"] if m["spec"] == "pairwise"]
    assert pairwise and pairwise[0]["validation_aiq"] is None and "cheaper candidate" in pairwise[0]["note"]
    assert "not applicable" in ab.markdown()
    capsys.readouterr()
    # The baselines and cost_aware alone need no embeddings.
    report = compile_outcomes(data, out_dir=tmp_path / "nl", learned=False, min_n=5)
    assert not report.methods and not any(r.name.startswith("learned") for r in report.rows)
    assert "cost_aware (task label)" in report.markdown() and "estimators" not in report.markdown()
    assert bench_main(["--outcomes", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert bench_main(["--out", str(out)]) == 2  # neither a dataset nor --outcomes
    with pytest.raises(SystemExit) as exited:  # it used to force every verdict, as --force-verdict does
        bench_main(["--outcomes", str(data), "--out", str(tmp_path / "neg"), "--min-verdict-n", "-5"])
    assert exited.value.code == 2 and "--min-verdict-n: must be at least 0" in capsys.readouterr().err


@pytest.mark.parametrize(("side", "where"), [
    ({"score": 0.0, "cost_usd": -0.001}, "outcomes.b.cost_usd:"),
    ({"score": 0.0, "cost_usd": float("nan")}, "outcomes.b.cost_usd:"),
    ({"score": 0.0, "cost_usd": float("inf")}, "outcomes.b.cost_usd:"),
    ({"score": 0.0, "cost_usd": 0.001, "latency_s": -1.0}, "outcomes.b.latency_s:"),
    ({"score": 0.0, "cost_usd": 0.001, "latency_s": float("inf")}, "outcomes.b.latency_s:"),
    ({"score": True, "cost_usd": 0.001}, "outcomes.b.score:"),
    # Strings and bools were read as numbers through pydantic's lax mode: "0.5" as 0.5, true as a cost of 1 USD.
    ({"score": "0.5", "cost_usd": 0.001}, "outcomes.b.score: must be a number between 0 and 1, not \"0.5\""),
    ({"score": 0.0, "cost_usd": "0.001"}, "outcomes.b.cost_usd: must be a number (USD), not \"0.001\""),
    ({"score": 0.0, "cost_usd": True}, "outcomes.b.cost_usd: must be a number (USD), not true"),
    ({"score": 0.0, "cost_usd": 0.001, "latency_s": "1.5"}, "outcomes.b.latency_s: must be a number (seconds)"),
    ({"score": 0.0, "cost_usd": 0.001, "latency_s": False}, "outcomes.b.latency_s: must be a number (seconds)"),
    ({"score": 0.0, "cost_usd": 0.001, "input_tokens": "12"}, "outcomes.b.input_tokens: must be a whole number"),
    ({"score": 0.0, "cost_usd": 0.001, "output_tokens": True}, "outcomes.b.output_tokens: must be a whole number"),
])
def test_a_bad_cost_latency_or_bool_score_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         side: dict[str, Any], where: str) -> None:
    # A negative or NaN cost crashed deep in BackendStats (rc 1, a pydantic traceback); true was taken as 1.0.
    rows = [{"input": f"q{i}", "metadata": {"id": f"q{i}"},
             "outcomes": {"a": {"score": 1.0, "cost_usd": 0.01}, "b": {"score": 0.0, "cost_usd": 0.001}}}
            for i in range(20)]
    rows[2]["outcomes"]["b"] = side
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UsageError) as err:
        load_matrix(path)
    assert err.value.field == "outcomes" and err.value.message.startswith(f"bad.jsonl:3: {where}")
    out = tmp_path / "out"
    assert bench_main(["--outcomes", str(path), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"genroute bench: error: --outcomes: bad.jsonl:3: {where}") and not out.exists()


def test_a_matrix_naming_no_candidate_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "empty.jsonl", [{"input": f"q{i}", "outcomes": {}} for i in range(20)])
    with pytest.raises(UsageError, match="names no candidate") as err:
        load_matrix(path)
    assert err.value.field == "outcomes"
    assert bench_main(["--outcomes", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "names no candidate" in capsys.readouterr().err


def test_a_top_level_id_and_task_are_read_as_the_datasets_are(tmp_path: Path) -> None:
    """{"id", "task", "input", "outcomes"} lines (the bench dataset's keys) had their id and task ignored: no task
    for cost_aware or the per-task best, and ids record-N, so two such files "shared" every id."""
    def flat(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": r["metadata"]["id"], "task": r["metadata"]["task"], "input": r["input"],
                 "outcomes": r["outcomes"]} for r in rows]

    train = write_jsonl(tmp_path / "train.jsonl", flat(synthetic(15)))
    matrix = load_matrix(train)
    assert matrix.ids[:2] == ["m0", "t0"] and set(matrix.tasks) == {"math", "trivia"}
    later = write_jsonl(tmp_path / "later.jsonl", flat(synthetic(8, seed=1, prefix="x")))
    report = compile_outcomes(train, eval_source=later, out_dir=tmp_path / "o", learned=False, min_n=5)
    assert report.n_eval == 16
    assert {r.name: r for r in report.rows}["per-task best (train)"].picks == {"A": 8, "B": 8}


@pytest.mark.parametrize(("key", "says"), [("quality", "outcomes.A.quality: not an outcome field"),
                                            ("cost", "outcomes.A.cost: not an outcome field")])
def test_a_score_or_cost_under_another_name_is_refused(tmp_path: Path, key: str, says: str) -> None:
    """"quality" for "score" dropped every record ("no record has an outcome for every candidate (3)"); "cost" for
    "cost_usd" priced every candidate at 0 ("no costs (quality only)")."""
    renamed = {"quality": "score", "cost": "cost_usd"}[key]
    rows = [{**r, "outcomes": {c: {(key if k == renamed else k): v for k, v in o.items()}
                               for c, o in r["outcomes"].items()}} for r in synthetic(5)]
    with pytest.raises(UsageError) as err:
        load_matrix(write_jsonl(tmp_path / "q.jsonl", rows))
    assert err.value.field == "outcomes" and err.value.message.startswith(f"q.jsonl:1: {says}")


def test_a_matrix_with_no_scored_record_says_where_a_score_is_missing(tmp_path: Path) -> None:
    rows = [{**r, "outcomes": {c: {"cost_usd": o["cost_usd"]} for c, o in r["outcomes"].items()}}
            for r in synthetic(5)]
    with pytest.raises(UsageError) as err:
        load_matrix(write_jsonl(tmp_path / "q.jsonl", rows))
    assert err.value.field == "outcomes"
    assert 'q.jsonl:1: outcomes.A has no "score" (its keys: cost_usd)' in err.value.message


def test_a_sparse_matrix_says_which_candidates_share_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    # Many candidates each scored on some queries (RouterEval's shape): the refusal listed every candidate and no way
    # on, so the user could not tell which to route between.
    rows = [{"input": f"q{i}", "outcomes": {c: {"score": 1.0} for c in ("a", "b", "c", "d")[i % 4:][:2]}}
            for i in range(12)]  # a+b, b+c, c+d, d alone
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    assert bench_main(["--outcomes", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "records scored per candidate: b 6, c 6, d 6, a 3 of 12; route between candidates that share records " \
           "(candidates, --candidates)" in err
    assert bench_main(["--outcomes", str(data), "--out", str(tmp_path / "o"), "--candidates", "b,c",
                       "--min-verdict-n", "1"]) == 2  # 3 records: too few to compile, but read
    assert "compiling needs at least 10 training records" in capsys.readouterr().err


def test_a_single_candidate_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One candidate (a file of one, or --candidates naming one) compiled every router into "always it" and reported
    # each comparison as "no difference detected": a report with nothing routed.
    data = write_jsonl(tmp_path / "m.jsonl", synthetic(15))
    assert bench_main(["--outcomes", str(data), "--out", str(tmp_path / "o"), "--candidates", "A"]) == 2
    assert "candidates: routing needs at least two candidates (got A)" in capsys.readouterr().err
    only = [{**row, "outcomes": {"A": row["outcomes"]["A"]}} for row in synthetic(15)]
    with pytest.raises(UsageError) as err:
        compile_outcomes(only, out_dir=tmp_path / "o2", learned=False)
    assert err.value.field == "outcomes"


def test_training_records_that_are_copies_of_one_input_are_refused_for_a_learned_router(
        embedder: LocalEmbedder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Copies of one input share a cross-validation fold (e5b45a7): twelve copies of one question made one fold, each
    # estimator was fitted on no record, and the refusal blamed the records ("knn (k=10): need one score per backend
    # for every training record" for every estimator).
    rows = synthetic(6)
    copies = [{**rows[i % 2], "input": rows[0]["input"], "metadata": {"task": "math", "id": f"c{i}"}} for i in range(12)]
    later = [{**r, "metadata": {**r["metadata"], "id": "e-" + r["metadata"]["id"]}} for r in rows[2:]]
    with pytest.raises(UsageError) as err:
        compile_outcomes(copies, eval_source=later, out_dir=tmp_path / "o", embedder=embedder, specs=SPECS)
    assert err.value.field == "outcomes" and "two distinct training inputs" in err.value.message
    assert "got 1 in 12 records" in err.value.message and not (tmp_path / "o").exists()
    train, held = write_jsonl(tmp_path / "c.jsonl", copies), write_jsonl(tmp_path / "l.jsonl", later)
    assert bench_main(["--outcomes", str(train), "--eval-outcomes", str(held), "--out", str(tmp_path / "o")]) == 2
    assert "outcomes: a learned router needs at least two distinct training inputs" in capsys.readouterr().err
    report = compile_outcomes(copies, eval_source=later, out_dir=tmp_path / "o", learned=False, min_n=1)
    assert report.n_train == 12  # the rest compiles


def test_a_candidate_no_record_has_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in --candidates used to drop every record: "no record has an outcome for every candidate"."""
    data = write_jsonl(tmp_path / "m.jsonl", synthetic(15))
    with pytest.raises(UsageError) as err:  # "Candidates: 2" and two rows "single A" for one candidate
        load_matrix(data, candidates=["A", "A"])
    assert err.value.field == "candidates" and "twice" in err.value.message
    with pytest.raises(UsageError) as err:
        load_matrix(data, candidates=["A", "Cc"])
    assert err.value.field == "candidates" and "'Cc'" in err.value.message and "A, B, C" in err.value.message
    assert bench_main(["--outcomes", str(data), "--candidates", "A,Cc", "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("genroute bench: error: --candidates:") and not (tmp_path / "o").exists()
    # An evaluation file without one of the training file's candidates is named as that file.
    later = write_jsonl(tmp_path / "later.jsonl", [{**r, "outcomes": {k: v for k, v in r["outcomes"].items()
                                                                      if k != "C"}} for r in synthetic(8, 1, "x")])
    with pytest.raises(UsageError) as err:
        compile_outcomes(data, eval_source=later, out_dir=tmp_path / "o", learned=False)
    assert err.value.field == "eval_outcomes" and "'C'" in err.value.message


@pytest.mark.parametrize(("prices", "per_billion", "field"), [
    ('{"A": {"input_usd_per_1m": Infinity}}', None, "prices.A.input_usd_per_1m"),
    ('{"A": {"input_usd_per_1m": 1, "output_usd_per_1m": NaN}}', None, "prices.A.output_usd_per_1m"),
    ('{"A": {"params_b": true}}', 0.1, "prices.A"),
    ('{"A": {"params_b": 7}}', math.inf, "usd_per_billion"),
    ('{"A": {"params_b": 7}}', -0.1, "usd_per_billion"),
    # A mistyped output price left the output priced as the input; other keys (a model name) are kept.
    ('{"A": {"input_usd_per_1m": 1, "ouput_usd_per_1m": 4, "model": "a/b"}}', None, "prices.A"),
    ('{"A": {"input_usd_per_1m": 1, "output_usd_per_1M": 4}}', None, "prices.A"),
])
def test_a_bad_price_entry_is_named(tmp_path: Path, prices: str, per_billion: float | None,
                                                   field: str) -> None:
    """An infinite price used to pass and fail the run at its statistics ("scores: a_scores[0] is inf")."""
    path = tmp_path / "prices.json"
    path.write_text(prices)
    with pytest.raises(UsageError) as err:
        load_pricing(path, usd_per_1m_per_billion=per_billion)
    assert err.value.field == field


def test_a_negative_seed_or_minimum_n_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "m.jsonl", synthetic(15))
    with pytest.raises(UsageError) as err:
        compile_outcomes(data, out_dir=tmp_path / "o", seed=-1, learned=False)
    assert err.value.field == "seed" and not (tmp_path / "o").exists()
    assert bench_main(["--outcomes", str(data), "--seed", "-1", "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("genroute bench: error: --seed:") and not (tmp_path / "o").exists()
    with pytest.raises(UsageError) as err:  # a negative --min-verdict-n gave verdicts at any n, silently
        compile_outcomes(data, out_dir=tmp_path / "o", min_n=-1, learned=False)
    assert err.value.field == "min_n" and not (tmp_path / "o").exists()


def test_negative_output_tokens_are_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"A": {"input_usd_per_1m": 1.0}, "B": {"input_usd_per_1m": 2.0},
                                  "C": {"input_usd_per_1m": 3.0}}))
    data = write_jsonl(tmp_path / "m.jsonl", synthetic(15))
    with pytest.raises(UsageError) as err:
        load_pricing(prices, output_tokens=-5)
    assert err.value.field == "output_tokens"
    argv = ["--outcomes", str(data), "--prices", str(prices), "--output-tokens", "-5", "--out", str(tmp_path / "o")]
    assert bench_main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("genroute bench: error: --output-tokens:") and "-5" in line


# -- estimators limited to the cost-quality front ------------------------------------------------------------

def test_pairwise_and_front_choose_only_on_the_cost_quality_front(tmp_path: Path) -> None:
    from genroute.policies.router_models import RouterModel, cost_quality_front, fit

    rng = np.random.default_rng(0)
    hard = np.arange(400) % 2 == 0
    x = np.where(hard[:, None], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]).astype(np.float32)
    x[:, 2] = rng.normal(0, 0.05, 400)
    # tiny: cheapest, rarely right; cheap: right on the easy half; strong: right on all; dear: dominated.
    scores = np.stack([rng.random(400) < 0.1, ~hard, np.ones(400, bool), rng.random(400) < 0.6], axis=1)
    cost = [0.5, 1.0, 10.0, 12.0]
    names = ["tiny", "cheap", "strong", "dear"]
    assert cost_quality_front(scores.mean(axis=0), np.array(cost)) == [0, 1, 2]
    front = fit(x, scores, names, method="knn", k=20, cost=cost, candidates="front")
    assert front.meta["allowed"] == [0, 1, 2]
    assert 3 not in set(front.choose(front.predict(x), 0.0))
    pair = fit(x, scores, names, method="pairwise", cost=cost)
    assert pair.meta["pair"] == [1, 2]  # the best candidate below the strong one on the front, and the strong one
    predicted = pair.predict(x)
    picks = pair.choose(predicted, 0.3)  # strong on the hard half (gain ~1 > 0.3 x 0.75), cheap on the easy one
    assert np.array_equal(picks, np.where(hard, 2, 1))
    assert set(pair.choose(predicted, 5.0)) == {1}  # the strong one's gain is never worth that much
    loaded = RouterModel.load(pair.save(tmp_path / "pair.npz"))
    assert np.array_equal(loaded.choose(loaded.predict(x), 0.3), picks)


def test_knn_predicts_many_queries_a_block_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The similarities of every evaluation query to every training record were held at once (and negated, a second
    # copy): 8,000 queries against 70,000 records peaked at 8.9 GB, a 100k-row matrix's 30,000 held-out at ~33 GB.
    from genroute.policies import router_models as rm

    model, queries = _knn(2000, 2000, k=20)
    whole = model.predict(queries)  # 4M similarities (16 MB): one block at the default size
    monkeypatch.setattr(rm, "KNN_BLOCK", 2 ** 17, raising=False)  # 64 queries a block
    blocked, peak = _traced(model.predict, queries)
    assert np.array_equal(blocked, whole)
    assert peak < 4 * 2 ** 20  # a block's similarities (0.5 MB, twice) and the result, not 2 x 16 MB


def _traced(fn: Any, *args: Any) -> tuple[Any, int]:
    """``fn(*args)`` and the peak of memory traced while it ran."""
    import tracemalloc

    tracemalloc.start()
    try:
        return fn(*args), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _knn(n_train: int, n_queries: int, *, k: int) -> tuple[Any, np.ndarray]:
    """A kNN router over ``n_train`` random 16-wide records of three candidates, and ``n_queries`` queries."""
    from genroute.policies import router_models as rm

    rng = np.random.default_rng(0)
    x = rm.normalise(rng.standard_normal((n_train, 16)).astype(np.float32))
    model = rm.fit(x, rng.random((n_train, 3)) < 0.5, ["a", "b", "c"], method="knn", k=k)
    return model, rm.normalise(rng.standard_normal((n_queries, 16)).astype(np.float32))


def test_a_knn_prediction_holds_a_bounded_block_of_similarities_by_default() -> None:
    # 2,048 queries against 8,192 training records (16.8 M similarities) were one block at the default size: the
    # float32 similarities, their negated copy and argpartition's int64 index of each, 268 MB traced (a fold of a
    # 20,000-record `genroute bench --outcomes` lifted the process by 560 MB). A block now holds KNN_BLOCK (2 ** 23)
    # of them, 16 bytes each at the peak: about 134 MB, and the same predictions.
    model, queries = _knn(8192, 2048, k=7)
    predicted, peak = _traced(model.predict, queries)
    one_by_one = np.concatenate([model.predict(queries[i:i + 1]) for i in range(0, 2048, 97)])
    assert predicted.shape == (2048, 3) and np.allclose(predicted[::97], one_by_one, atol=1e-6)
    assert peak < 180e6, f"{peak / 1e6:.0f} MB"


def test_per_task_best_over_many_tasks_is_each_tasks_best_by_hand() -> None:
    # Built a subset of the matrix per task, a pass over every record each: quadratic in a matrix with a task per
    # few queries (20,000 records in 2,000 tasks took 23 s, called five times a compile; now 0.3 s:
    # benchmarks/matrix_scale.py). The picks are checked against each task's best worked out by hand.
    from genroute.bench.baselines import per_task_best

    rng = np.random.default_rng(0)
    rows = [{"input": f"q{i}", "metadata": {"task": None if i % 50 == 0 else f"t{i % 40}", "id": f"q{i}"},
             "outcomes": {c: {"score": float(rng.random() < p), "cost_usd": cost}
                          for c, p, cost in (("a", 0.5, 0.001), ("b", 0.5, 0.002), ("c", 0.6, 0.003))}}
            for i in range(2000)]
    matrix = load_matrix(rows)
    picks = per_task_best(matrix, matrix)
    for task in {r.task for r in matrix.records}:
        mine = [i for i, r in enumerate(matrix.records) if r.task == task]
        means = [(-float(np.mean(matrix.scores[mine, j])), float(np.mean(matrix.costs[mine, j])), j) for j in range(3)]
        assert {int(picks[i]) for i in mine} == {min(means)[2]}, task


@pytest.mark.parametrize("names", [("a-small", "z-big"), ("z-small", "a-big")])
def test_a_tie_goes_to_the_backend_better_in_training_not_the_first_name(names: tuple[str, str],
                                                                        tmp_path: Path) -> None:
    # Two backends that answered a query's neighbours alike, at one price (or none given), tie: the first name in
    # the file won, so renaming "big" to "a-big" moved every such decision to it, and "small" to "a-small" back.
    from genroute.policies.router_models import RouterModel, fit

    small, big = names
    x = np.array([[1.0, 0.0]] * 10 + [[0.0, 1.0]] * 10, dtype=np.float32)
    both_right = [{small: 1.0, big: 1.0}] * 10  # the first topic: both right
    big_right = [{small: 0.0, big: 1.0}] * 10   # the second: only big
    order = sorted(names)
    scores = np.array([[row[b] for b in order] for row in both_right + big_right])
    model = fit(x, scores, order, method="knn", k=5, cost=[0.001, 0.001])
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert model.predict(query)[0].tolist() == [1.0, 1.0]
    assert order[int(model.choose(model.predict(query), 0.1)[0])] == big
    loaded = RouterModel.load(model.save(tmp_path / "m.npz"))
    assert order[int(loaded.choose(loaded.predict(query), 0.1)[0])] == big
    free = fit(x, scores, order, method="knn", k=5)  # no costs: quality only
    assert order[int(free.choose(free.predict(query), 0.0)[0])] == big


class _TopicEmbedder:
    """Two topics, two directions: a query's neighbours are the training records of its topic."""

    model = "topic-test"

    def embed_array(self, texts: list[str], **_: Any) -> np.ndarray:
        return np.array([[1.0, 0.0] if "first" in t else [0.0, 1.0] for t in texts], dtype=np.float32)


@pytest.mark.parametrize("names", [("b-good", "a-poor"), ("a-good", "b-poor")])
def test_a_tie_for_a_fallback_rung_goes_to_the_better_in_training_not_the_first_name(names: tuple[str, str],
                                                                                    tmp_path: Path) -> None:
    # The chosen backend broke ties by cost, then training quality (65c14348); the fallback rungs after it were
    # ranked by utility alone, so of two equally priced backends tied on a query the first name took the second
    # rung, and renaming one moved it.
    from genroute.policies.router_models import fit

    good, poor = names
    order = sorted(["big", good, poor])
    x = np.array([[1.0, 0.0]] * 10 + [[0.0, 1.0]] * 10, dtype=np.float32)
    # The first topic: big alone right; the second: good too. Good and poor cost the same, a tenth of big.
    rows = [{"big": 1.0, good: 0.0, poor: 0.0}] * 10 + [{"big": 1.0, good: 1.0, poor: 0.0}] * 10
    scores = np.array([[row[b] for b in order] for row in rows])
    cost = [{"big": 0.01, good: 0.001, poor: 0.001}[b] for b in order]
    path = fit(x, scores, order, method="knn", k=5, cost=cost).save(tmp_path / "m.npz")
    policy = LearnedPolicy(LearnedConfig(model_path=str(path), default="big", fallbacks=2), embedder=_TopicEmbedder())
    decision = policy.decide(GenerateRequest(input="the first topic"), PolicyContext(catalogue={}))
    assert [r.backend for r in decision.rungs] == ["big", good, poor]


@pytest.mark.parametrize(("content", "field"), [
    ({"a": {"input_usd_per_1m": -1}}, "prices.a.input_usd_per_1m"),
    ({"a": {"input_usd_per_1m": "cheap"}}, "prices.a.input_usd_per_1m"),
    (None, "prices"),  # a directory
])
def test_a_bad_prices_file_is_a_usage_error(tmp_path: Path, content: Any, field: str) -> None:
    path = tmp_path / "prices.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(json.dumps(content))
    with pytest.raises(UsageError) as err:
        load_pricing(path)
    assert err.value.field == field


def test_compile_reads_a_gzipped_matrix_and_keeps_its_output_when_nothing_matches(tmp_path: Path, capsys) -> None:
    from genroute.outcomes.cli import compile_main

    rows = synthetic(15)
    plain, packed = write_jsonl(tmp_path / "m.jsonl", rows), write_jsonl(tmp_path / "m.jsonl.gz", rows)
    out = tmp_path / "out"
    assert compile_main(["--outcomes", str(packed), "--out", str(out), "--no-learned"]) == 0
    from_gz = json.loads((out / "stats.json").read_text())
    assert compile_main(["--outcomes", str(plain), "--out", str(out), "--no-learned"]) == 0
    stats = (out / "stats.json").read_text()
    assert json.loads(stats)["tasks"] == from_gz["tasks"] and from_gz["tasks"]
    capsys.readouterr()
    # A task that matches nothing is refused; the stats an earlier run wrote stay as they were.
    assert compile_main(["--outcomes", str(plain), "--out", str(out), "--task", "no-such-task"]) == 2
    assert "--task" in capsys.readouterr().err
    assert (out / "stats.json").read_text() == stats
    (tmp_path / "a-file").write_text("")
    assert compile_main(["--outcomes", str(plain), "--out", str(tmp_path / "a-file")]) == 2
    assert "--out" in capsys.readouterr().err


def test_compile_refuses_a_matrix_without_costs_and_writes_nothing(tmp_path: Path, capsys) -> None:
    """A published matrix without costs (dcrouter, MMLU-Pro) compiled to an empty stats.json, exit 0, beside "learned.npz
    not trained: it needs records with their input and two or more scored backends" (it had both): it is refused,
    saying why and what compiles it, and an earlier compile's files stay as they were."""
    from genroute.outcomes.cli import compile_main

    rows = synthetic(15)
    out = tmp_path / "out"
    assert compile_main(["--outcomes", str(write_jsonl(tmp_path / "m.jsonl", rows)), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for row in rows:
        for side in row["outcomes"].values():
            del side["cost_usd"]
    costless = write_jsonl(tmp_path / "published.jsonl", rows)
    for target in (out, tmp_path / "fresh"):
        assert compile_main(["--outcomes", str(costless), "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("genroute compile: error: --outcomes: nothing to compile from ") and "cost_usd" in err
        assert "genroute bench --outcomes" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not (tmp_path / "fresh").exists()


def test_compile_trains_on_a_matrix_without_ids_and_refuses_an_id_given_twice(tmp_path: Path, capsys) -> None:
    """Ids are optional in a matrix: without them every record had the id "", so learned.npz was "not trained"
    (as if fewer than two records had inputs), and an id given twice merged two records for training."""
    from genroute.outcomes.cli import compile_main
    from genroute.policies.router_models import RouterModel

    rows = synthetic(15)
    for row in rows:
        del row["metadata"]["id"]
    out = tmp_path / "out"
    assert compile_main(["--outcomes", str(write_jsonl(tmp_path / "m.jsonl", rows)), "--out", str(out)]) == 0
    assert "not trained" not in capsys.readouterr().out
    assert RouterModel.load(out / "learned.npz").meta["n_train"] == 24  # 30 records, 6 kept back by train()
    rows[3]["metadata"]["id"] = rows[7]["metadata"]["id"] = "q"
    again = tmp_path / "again"
    assert compile_main(["--outcomes", str(write_jsonl(tmp_path / "d.jsonl", rows)), "--out", str(again)]) == 2
    assert "d.jsonl:8: duplicate record id 'q'" in capsys.readouterr().err
    assert not again.exists()


def test_report_rows_state_n_and_a_ci_and_curve_readings_are_point_estimates(tmp_path: Path) -> None:
    report = compile_outcomes(write_jsonl(tmp_path / "m.jsonl", synthetic(15)), out_dir=tmp_path / "out",
                              learned=False, min_n=5)
    text = report.markdown()
    assert "| router | quality [95 % CI] | $ per 1k requests | n |" in text
    random_row = next(r for r in report.rows if r.name == "random")
    low, high = random_row.quality_ci
    assert low < random_row.quality < high  # a mix of right and wrong picks: the interval has width
    assert f"| random | {random_row.quality:.3f} [{low:.3f}, {high:.3f}] |" in text
    best = next(r for r in report.rows if r.name == "best single (train)")
    # C is right everywhere: the exact interval's lower bound is the p with p ** n = 0.025, not the bootstrap's 1.
    assert best.quality == 1.0 and best.n == report.n_eval
    assert best.quality_ci == pytest.approx((0.025 ** (1 / report.n_eval), 1.0))
    saved = json.loads((tmp_path / "out" / "compiled.json").read_text())["rows"]
    assert next(r for r in saved if r["name"] == "random")["quality_ci"] == [low, high]
    assert f"point estimates on the {report.n_eval} evaluation records" in text
    # Each reading takes its operating points on the evaluation records themselves: the report says so.
    assert "chosen on the data they are quoted on, they are optimistic summaries" in text


def test_the_offline_comparison_table_says_how_many_records_its_distinct_inputs_are(tmp_path: Path) -> None:
    # The bench table said "6 inputs (33 records)" where inputs repeat; the offline one gave the input count alone
    # under the same "n" heading as its record counts.
    later = synthetic(10, seed=1, prefix="later ")
    repeats = [{**row, "metadata": {**row["metadata"], "id": f"{row['metadata']['id']}-again"}} for row in later[:4]]
    report = compile_outcomes(synthetic(), eval_source=later + repeats, out_dir=tmp_path, learned=False, min_n=10)
    cmp = next(c for c in report.comparisons if c.router == "cost_aware (task label)")
    assert (cmp.n, cmp.n_records) == (20, 24)
    assert "| cost_aware (task label) | best single (train) | 20 inputs (24 records) |" in report.markdown()


def test_a_matrix_without_latency_has_no_latency_not_zero(tmp_path: Path) -> None:
    # A side without latency_s read as 0.0 s: stats.json from such a matrix (most published ones) met any
    # cost_aware latency SLO, and the report's p50 column said every candidate answered instantly.
    from genroute.bench.report import markdown_table

    rows = synthetic(5)
    for row in rows[:4]:
        row["outcomes"]["C"]["latency_s"] = 2.0
    matrix = load_matrix(write_jsonl(tmp_path / "m.jsonl", rows))
    summaries = {s.backend: s for s in matrix_summaries(matrix, n_boot=100)}
    assert (summaries["A"].latency_p50_s, summaries["C"].latency_p50_s) == (None, 2.0)  # C: over the 4 it gave
    assert "| – | – | – |" in markdown_table([summaries["A"]])
    stats = matrix_stats(matrix, n_boot=100)
    assert stats.tasks["math"]["A"].latency_p95_s is None and stats.tasks["math"]["C"].latency_p95_s == 2.0


def test_a_holdout_that_leaves_too_few_training_records_names_the_flag(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "m.jsonl", synthetic(15))
    assert bench_main(["--outcomes", str(data), "--out", str(tmp_path / "out"), "--holdout", "0.99"]) == 2
    assert ("compiling needs at least 10 training records (got 1: --holdout 0.99 held out the other 29; a smaller "
            "one leaves more)") in capsys.readouterr().err


def test_a_report_on_an_owner_only_outcome_file_is_written_where_only_its_owner_may_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # An outcome store export is 0600 (it holds captured user text), and report.html / semantic.json quote its inputs:
    # they were written into a directory made with the umask (0755), readable by every local user.
    source = tmp_path / "export.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in synthetic(30)))
    source.chmod(0o600)
    compile_outcomes(source, out_dir=tmp_path / "new" / "out", learned=False, min_n=10)
    assert (tmp_path / "new" / "out").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new").stat().st_mode & 0o077  # only the directory it writes in, not its parents
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with caplog.at_level("WARNING", logger="genroute.bench"):
        compile_outcomes(source, out_dir=shared, learned=False, min_n=10)
    assert shared.stat().st_mode & 0o777 == 0o755  # the user's directory keeps its mode, with a word
    assert any(str(shared) in r.getMessage() and "other users" in r.getMessage() for r in caplog.records)
    source.chmod(0o644)  # a file anyone may read: a new directory is still its owner's (it holds the records'
    caplog.clear()       # inputs), but one others may enter is the user's choice, with no word
    compile_outcomes(source, out_dir=tmp_path / "open", learned=False, min_n=10)
    assert (tmp_path / "open").stat().st_mode & 0o777 == 0o700
    with caplog.at_level("WARNING", logger="genroute.bench"):
        compile_outcomes(source, out_dir=shared, learned=False, min_n=10)
    assert not any(str(shared) in r.getMessage() for r in caplog.records)
