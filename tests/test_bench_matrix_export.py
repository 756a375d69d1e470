"""A benchmark run compiles with `genroute compile --outcomes`, as production outcomes and public matrices do."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from genroute.bench.harness import bench
from genroute.outcomes.cli import compile_main
from genroute.router.router import Router
from genroute.testing import GeminiTestServer

from .conftest import TEST_KEY

LABELS = ["refund", "card"]


def test_a_bench_run_writes_the_outcome_matrix_compile_reads_and_its_rows_are_refused_with_the_way_out(
        gemini_server: GeminiTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`genroute compile --outcomes out/results.jsonl` read the bench's rows as 60 empty records and wrote a
    stats.json of no entry, exit 0; no outcome matrix of the run was written for it to read."""
    data = tmp_path / "intents.jsonl"
    data.write_text("".join(json.dumps({"input": f"Question {i} about my {LABELS[i % 2]}", "label": LABELS[i % 2],
                                        "metadata": {"id": f"q{i}", "task": "intent", "label_set": LABELS}}) + "\n"
                            for i in range(30)), encoding="utf-8")
    engine = {"kind": "gemini", "base_url": gemini_server.base_url, "api_key": TEST_KEY}
    config = {"engines": {"gemini": engine},  # the echo names the label in `full`, never in `lite`
              "backends": {"lite": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite",
                                    "template": "Name the intent."},
                           "full": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
              "policy": {"kind": "static", "backend": "lite"}}
    # A backend that never answers (nothing listens at its engine's address) is left out, as bench's compile does.
    config["engines"]["nowhere"] = {**engine, "base_url": "http://127.0.0.1:9", "retry": {"attempts": 1}}
    config["backends"]["dead"] = {"kind": "prompt_template", "engine": "nowhere", "model": "gemini-2.5-flash"}
    with Router.from_config(config) as router:
        report = bench(router, data, backends=["lite", "full", "dead"], policy=True, out_dir=tmp_path / "run",
                       progress=False)
    assert [u.backend for u in report.unscored] == ["dead"]
    matrix = tmp_path / "run" / "outcomes.jsonl"
    assert report.files["outcomes"] == str(matrix)
    lines = [json.loads(line) for line in matrix.read_text(encoding="utf-8").splitlines()]
    assert [line["metadata"]["id"] for line in lines] == [f"q{i}" for i in range(30)]
    assert lines[1] == {"input": "Question 1 about my card", "output": "card", "metadata": {
        "id": "q1", "task": "intent", "label_set": LABELS}, "outcomes": lines[1]["outcomes"]}
    assert sorted(lines[1]["outcomes"]) == ["full", "lite"]  # the @policy rows are no candidate
    assert lines[1]["outcomes"]["full"]["score"] == 1.0 and lines[1]["outcomes"]["lite"]["score"] == 0.0
    assert lines[1]["outcomes"]["full"]["cost_usd"] > lines[1]["outcomes"]["lite"]["cost_usd"] > 0

    capsys.readouterr()
    assert compile_main(["--outcomes", str(matrix), "--out", str(tmp_path / "compiled"), "--no-learned"]) == 0
    stats = json.loads((tmp_path / "compiled" / "stats.json").read_text(encoding="utf-8"))["tasks"]["intent"]
    benched = json.loads((tmp_path / "run" / "stats.json").read_text(encoding="utf-8"))["tasks"]["intent"]
    for name in ("full", "lite"):
        assert (stats[name]["n"], stats[name]["quality"]) == (benched[name]["n"], benched[name]["quality"])
        assert stats[name]["cost_per_request_usd"] == pytest.approx(benched[name]["cost_per_request_usd"])
    policy = json.loads((tmp_path / "compiled" / "cost_aware.json").read_text(encoding="utf-8"))
    assert policy["default"] == "full"

    capsys.readouterr()
    rows = tmp_path / "run" / "results.jsonl"
    assert compile_main(["--outcomes", str(rows), "--out", str(tmp_path / "from-rows")]) == 2
    err = capsys.readouterr().err
    assert "--outcomes" in err and "results.jsonl holds rows" in err and "outcomes.jsonl" in err
    assert not (tmp_path / "from-rows" / "stats.json").exists()


def _matrix(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"input": f"question {i}", "metadata": {"id": f"q{i}", "task": "qa"},
                                        "outcomes": {"a": {"score": 1.0, "cost_usd": 0.002},
                                                     "b": {"score": float(i % 3 != 0), "cost_usd": 0.001}}}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def test_compile_warns_when_a_tasks_backends_were_scored_on_too_few_records_to_tell_apart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Compiled from 3 records, cost_aware.json chose between two backends with no word that 3 records decide
    nothing, where bench prints "no verdict" below its minimum."""
    caplog.set_level(logging.WARNING, logger="genroute")
    assert compile_main(["--outcomes", str(_matrix(tmp_path / "few.jsonl", 3)), "--out", str(tmp_path / "few"),
                         "--no-learned"]) == 0
    # genroute's records only: the handler takes every logger's (an earlier test's task collected here logs too).
    [warning] = [r.getMessage() for r in caplog.records
                 if r.levelno == logging.WARNING and r.name.startswith("genroute")]
    assert "task qa" in warning and "as few as 3 records, below the 20" in warning and "--min-n 20" in warning
    caplog.clear()
    assert compile_main(["--outcomes", str(_matrix(tmp_path / "enough.jsonl", 20)), "--out",
                         str(tmp_path / "enough"), "--no-learned"]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("genroute")]


def test_a_run_of_one_backend_writes_stats_json_as_a_run_of_two_does(
        gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    """A run of one backend compiles no policy, and wrote no stats.json either (a run of two did): a script reading
    each run's stats.json failed on it, or read the figures an earlier run left in --out."""
    data, config = _two_backends(gemini_server, tmp_path)
    out = tmp_path / "run"
    with Router.from_config(config) as router:
        two = bench(router, data, backends=["lite", "full"], out_dir=out, progress=False)
        assert two.compiled is not None and sorted(json.loads((out / "stats.json").read_text())["tasks"]["intent"]) \
            == ["full", "lite"]
        one = bench(router, data, backends=["full"], out_dir=tmp_path / "one", progress=False)
        bench(router, data, backends=["lite"], out_dir=tmp_path / "again", progress=False)
        again = bench(router, data, backends=["full"], out_dir=tmp_path / "again", progress=False)  # into lite's
        earlier = (out / "stats.json").read_bytes()
        kept = bench(router, data, backends=["full"], out_dir=out, progress=False)  # into the two-backend run's
    for report, where in ((one, tmp_path / "one"), (again, tmp_path / "again")):
        assert report.compiled is None and report.comparisons == ()
        assert report.files["stats"] == str(where / "stats.json")
        written = json.loads((where / "stats.json").read_text(encoding="utf-8"))
        assert sorted(written) == sorted(json.loads((out / "stats.json").read_text(encoding="utf-8")))  # same keys
        full = written["tasks"]["intent"]
        assert list(full) == ["full"]  # not the earlier run's lite
        summary = report.summaries[0]
        assert (full["full"]["n"], full["full"]["quality"], full["full"]["quality_ci"]) == (
            12, summary.quality, list(summary.quality_ci))
        assert full["full"]["cost_per_request_usd"] == pytest.approx(summary.cost_per_request_usd)
        assert summary.cost_per_request_usd > 0
    # Where an earlier run's cost_aware.json reads stats.json by its path, both stay as they were (a router may serve
    # them) and the run says so: its own figures are in its report.
    assert "stats" not in kept.files and (out / "stats.json").read_bytes() == earlier
    assert (out / "cost_aware.json").exists() and "stats.json, cost_aware.json" in (kept.compile_note or "")


def test_a_no_compile_run_leaves_an_earlier_runs_stats_and_policies_and_names_them(
        gemini_server: GeminiTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`genroute bench --no-compile` into an --out where an earlier run had compiled left that run's stats.json (and
    its policies) beside the new report without a word, so a script read another run's figures as this one's; for a
    while it removed them, which broke a router serving that cost_aware.json (it names stats.json by path: "policy.
    stats_path ... does not exist" at its next start). They stay as they were, and the run names them as an earlier
    run's in its summary and report."""
    out, config, compiled, printed = _rerun_after_a_compile(gemini_server, tmp_path, capsys,
                                                            ["--backends", "full", "--no-compile"])
    assert {name: (out / name).read_bytes() for name in compiled} == compiled  # untouched
    assert "Not compiled (--no-compile): " in printed and "stats.json" in printed and "earlier run's" in printed
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Not compiled (--no-compile)" in report and "they do not describe this run" in report


@pytest.mark.parametrize("narrower", [["--backends", "full"], ["--backends", "lite,full", "--limit", "1"]],
                         ids=["one backend", "one record"])
def test_a_run_too_small_to_compile_leaves_an_earlier_runs_policies_and_names_them(
        gemini_server: GeminiTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        narrower: list[str]) -> None:
    """A run that compiles nothing (one backend, one record) into an --out where an earlier run had compiled removed
    that run's cost_aware.json and learned files and wrote its own stats.json, so a router serving that
    cost_aware.json (which names stats.json by path) routed on another run's figures, or on a stats.json without its
    backends, at its next start: --no-compile had stopped doing so. It keeps them as --no-compile does, and names
    them as an earlier run's in its summary and report."""
    out, config, compiled, printed = _rerun_after_a_compile(gemini_server, tmp_path, capsys, narrower)
    assert {name: (out / name).read_bytes() for name in compiled} == compiled  # untouched
    assert "Not compiled: " in printed and "earlier run's" in printed
    assert all(name in printed for name in compiled)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "they do not describe this run" in report
    # The router the earlier run's policy was pasted into still starts, and routes as that run compiled.
    with Router.from_config({**config, "policy": json.loads(compiled["cost_aware.json"])}) as router:
        assert router.decide("Question 1 about my card").rungs[0].backend in {"lite", "full"}


def _rerun_after_a_compile(gemini_server: GeminiTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           args: list[str]) -> tuple[Path, dict[str, Any], dict[str, bytes], str]:
    """A run of two backends that compiles into ``--out``, then ``genroute bench ARGS`` into it: the directory, the
    config, the compiled files the first run wrote (name: bytes) and what the second printed."""
    import yaml

    from genroute.bench.cli import bench_main

    data, config = _two_backends(gemini_server, tmp_path)
    out = tmp_path / "run"
    with Router.from_config(config) as router:
        assert bench(router, data, backends=["lite", "full"], out_dir=out, progress=False).compiled is not None
    compiled = {p.name: p.read_bytes() for p in out.iterdir()
                if p.name in {"stats.json", "cost_aware.json", "learned.json", "learned.npz"}}
    assert {"stats.json", "cost_aware.json"} <= set(compiled)
    cfg = tmp_path / "genroute.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    capsys.readouterr()
    assert bench_main([str(data), "--config", str(cfg), *args, "--out", str(out), "--quiet"]) == 0
    return out, config, compiled, capsys.readouterr().out


def _two_backends(gemini_server: GeminiTestServer, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """12 intent records in ``tmp_path`` and a config of two backends on the loopback server (lite and full)."""
    data = tmp_path / "intents.jsonl"
    data.write_text("".join(json.dumps({"input": f"Question {i} about my {LABELS[i % 2]}", "label": LABELS[i % 2],
                                        "metadata": {"id": f"q{i}", "task": "intent", "label_set": LABELS}}) + "\n"
                            for i in range(12)), encoding="utf-8")
    engine = {"kind": "gemini", "base_url": gemini_server.base_url, "api_key": TEST_KEY}
    config = {"engines": {"gemini": engine},
              "backends": {"lite": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite",
                                    "template": "Name the intent."},
                           "full": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
              "policy": {"kind": "static", "backend": "lite"}}
    return data, config
