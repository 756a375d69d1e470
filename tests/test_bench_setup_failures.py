"""A backend that fails on every record for a reason of the set-up (a missing ICL collection, a model name the
server refuses, a custom scorer that always raises): stopped early, named in the report and the exit status,
left out of the compiled policies, and run again when the run resumes after the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from genroute.bench import abench
from genroute.cli import main
from genroute.bench.runner import Outcome
from genroute.bench.setup_failures import SETUP_LIMIT, SetupWatch
from genroute.policies.stats import BenchStats
from genroute.router.router import Router
from genroute.testing import GeminiTestServer
from genroute.testing.replies import Response, error_body

from .test_bench import POSITIVE, config, generate_calls, records, sentiment_server

WRONG_MODEL = "gemini-2.5-flahs"


@pytest.fixture
def server(gemini_server: GeminiTestServer) -> GeminiTestServer:
    sentiment_server(gemini_server)
    # As the API answers a model name it does not know.
    gemini_server.route("POST", rf".*/models/{WRONG_MODEL}:.*", lambda _s, _r, _m: Response(
        status=404, body=error_body(404, f"models/{WRONG_MODEL} is not found for API version v1beta")))
    return gemini_server


def broken_config(server: GeminiTestServer, tmp_path: Path, *, model: str = WRONG_MODEL) -> dict[str, Any]:
    cfg = config(server, pricing={WRONG_MODEL: {"input": 0.3, "output": 2.5}})
    cfg["knowledge"] = {"path": str(tmp_path / "chroma"), "embedder": {"kind": "gemini", "engine": "gemini"}}
    cfg["backends"]["icl"] = {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash",
                              "collection": "sentiment-examples", "selector": "fixed", "k": 2}
    cfg["backends"]["typo"] = {"kind": "prompt_template", "engine": "gemini", "model": model}
    return cfg


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def calls_to(server: GeminiTestServer, model: str) -> int:
    return sum(1 for r in server.requests if f"/models/{model}:" in r.path)


async def test_a_backend_failing_on_its_set_up_is_stopped_named_left_out_and_rerun_once_fixed(
        server: GeminiTestServer, tmp_path: Path) -> None:
    from genroute.knowledge import aload_examples

    out = tmp_path / "out"
    run = {"backends": ["cheap", "smart", "icl", "typo"], "out_dir": out, "progress": False, "concurrency": 1}
    async with Router.from_config(broken_config(server, tmp_path)) as router:
        report = await abench(router, records(), **run)
    # Each broken backend ran its first records, not all ten; the others ran every record.
    by_backend: dict[str, list[dict[str, Any]]] = {}
    for row in rows(out):
        by_backend.setdefault(row["backend"], []).append(row)
    assert {b: len(r) for b, r in by_backend.items()} == {"cheap": 10, "smart": 10, "icl": SETUP_LIMIT,
                                                          "typo": SETUP_LIMIT}
    assert calls_to(server, WRONG_MODEL) == SETUP_LIMIT
    assert {r["error_type"] for r in by_backend["icl"]} == {"UsageError"}
    # The report names each backend that never answered, and why.
    unscored = {u.backend: u for u in report.unscored}
    assert set(unscored) == {"icl", "typo"}
    assert "unknown collection 'sentiment-examples'" in unscored["icl"].error
    assert unscored["typo"].error_type == "BackendRejected" and "is not found" in unscored["typo"].error
    assert unscored["typo"].not_run == 10 - SETUP_LIMIT
    text = Path(report.files["markdown"]).read_text()
    assert "## No scored row" in text and "typo: no scored row: 3 failed with BackendRejected" in text
    # Neither is compared, nor compiled into a policy: stats.json and the policies know only cheap and smart.
    assert all({c.a, c.b} <= {"cheap", "smart"} for c in report.comparisons)
    assert report.compiled is not None and set(report.compiled.left_out) == {"icl", "typo"}
    stats = BenchStats.load(report.compiled.stats_path)
    assert set(stats.tasks["sentiment"]) == {"cheap", "smart"}
    for path in report.compiled.policy_files.values():
        written = Path(path).read_text()
        assert "icl" not in written and "typo" not in written, path
    assert "Left out of the compiled policies" in text

    # The user loads the examples and fixes the model name: a plain resume runs the broken backends again (their
    # failed rows and the records they never ran), and keeps the rows of the others.
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"input": f"The food was {w}.", "output": "positive" if w in POSITIVE
                                            else "negative"}) + "\n" for w in ("tasty", "cold")))
    calls = generate_calls(server)
    async with Router.from_config(broken_config(server, tmp_path, model="gemini-2.5-flash")) as router:
        await aload_examples(router.resources.knowledge, [examples], collection="sentiment-examples")
        again = await abench(router, records(), **run)
    assert generate_calls(server) - calls == 20  # icl and typo on every record; cheap and smart not again
    assert not again.unscored and all(row["ok"] for row in rows(out)) and len(rows(out)) == 40
    assert again.compiled is not None and not again.compiled.left_out


def test_cli_exits_non_zero_naming_the_backend_with_no_scored_row(server: GeminiTestServer, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"input": r.input, "output": r.output, "label": r.label,
                                        "metadata": {"id": r.id}}) + "\n" for r in records()))
    cfg = tmp_path / "genroute.yaml"
    cfg.write_text(yaml.safe_dump(broken_config(server, tmp_path)))
    out = tmp_path / "out"
    argv = [str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--concurrency", "1"]
    # A missing collection is the user's mistake: 2, as for any usage or config error.
    assert main(["bench", *argv, "--backends", "smart,icl"]) == 2
    captured = capsys.readouterr()
    assert "| smart | 10 |" in captured.out
    assert "genroute bench: error: icl: no scored row: 3 failed with UsageError" in captured.err
    assert "genroute: warning: bench: stopped 'icl' after its first 3 records" in captured.err  # when it stopped
    assert "7 records not run" in captured.err
    # A scorer that raises on every answer: no backend is scored, nothing is compiled, the run fails (1).
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_scorer.py").write_text("def score(record, result):\n    return record.metadata['gold']\n")
    (tmp_path / "fixed_scorer.py").write_text("def score(record, result):\n    return float(record.output == "
                                              "result.text.strip())\n")
    scored = [*argv[:3], "--out", str(tmp_path / "scored"), "--quiet", "--concurrency", "1", "--backends", "smart"]
    assert main(["bench", *scored, "--scorer", "broken_scorer:score"]) == 1
    err = capsys.readouterr().err
    assert "smart: no scored row: 3 failed with ScorerError: KeyError: 'gold'" in err
    assert not (tmp_path / "scored" / "cost_aware.json").exists()
    # Fixed (another scorer, as no row was scored with the first): the same output directory runs every record.
    assert main(["bench", *scored, "--scorer", "fixed_scorer:score"]) == 0
    assert len(rows(tmp_path / "scored")) == 10 and all(r["ok"] for r in rows(tmp_path / "scored"))
    # One backend has nothing to route between: the report says so rather than compile a policy onto it.
    assert "Not compiled: smart is the only backend with a scored row" in capsys.readouterr().out


def failed(backend: str, error_type: str, error: str) -> Outcome:
    return Outcome(backend=backend, record_id=error, ok=False, scorer="exact", error_type=error_type, error=error)


def test_only_the_same_set_up_error_from_the_first_record_stops_a_backend() -> None:
    watch = SetupWatch(["resumed"])
    streaks = {
        "same": [failed("same", "BackendRejected", "404 NOT_FOUND")] * SETUP_LIMIT,
        # The model's own failures measure it, however often they repeat.
        "invalid": [failed("invalid", "ValidationFailed", "not JSON")] * SETUP_LIMIT,
        "varied": [failed("varied", "BackendRejected", f"400 record {i} too long") for i in range(SETUP_LIMIT)],
        "answered": [Outcome(backend="answered", record_id="a", ok=True, scorer="exact"),
                     *[failed("answered", "UsageError", "bad")] * SETUP_LIMIT],
        "resumed": [failed("resumed", "UsageError", "bad")] * SETUP_LIMIT,  # scored in an earlier run
    }
    for outcomes in streaks.values():
        for outcome in outcomes:
            watch.see(outcome, left=5)
    assert set(watch.stopped) == {"same"}


def test_the_pareto_chart_draws_no_point_for_a_target_that_never_answered(tmp_path: Path) -> None:
    """A backend the bench stopped (every row failed) was drawn on the Pareto chart at cost 0 and quality 0, where
    it read as the cheapest point and sat on the front."""
    from genroute.bench.report import Summary, charted, pareto_front, pareto_png

    def summary(name: str, quality: float, cost: float, failures: dict[str, int]) -> Summary:
        return Summary(backend=name, n=3, metric="exact", quality=quality, quality_ci=(quality, quality),
                       latency_p50_s=None, latency_p95_s=None, latency_p99_s=None, input_tokens=1.0,
                       output_tokens=1.0, cached_input_tokens=0.0, cost_per_request_usd=cost, failures=failures)

    ran = summary("chat", 0.6, 0.001, {"BackendUnavailable": 1})
    stopped = summary("icl", 0.0, 0.0, {"UsageError": 3})
    assert [s.backend for s in charted([ran, stopped])] == ["chat"]
    assert pareto_front([(s.backend, s.cost_per_request_usd, s.quality) for s in [ran, stopped]]) == ["chat", "icl"]
    assert pareto_png([ran, stopped], tmp_path / "p.png").stat().st_size > 0
    assert pareto_png([stopped], tmp_path / "none.png").stat().st_size > 0  # nothing to draw: an empty chart
