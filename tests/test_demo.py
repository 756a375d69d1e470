"""`genroute demo` as a newcomer runs it: a subprocess, offline, exit code 0; and its bundled tuning data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from importlib.resources import files
from pathlib import Path

import pytest
from rich.console import Console

from genroute.demo.render import results_table
from genroute.demo.tune import (ADAPTER_NAME, SUMMARY_NAME, TRAIN_DATA, TUNE_MODULES, adapter_path, summary_line,
                                tune_options, train_review_adapter)
from genroute.tuning.data import load_examples
from genroute.types import Citation, DecisionRecord, GenerateResult, ToolCall

DATA = files("genroute.demo") / "data"


@pytest.mark.local
@pytest.mark.slow
def test_demo_without_an_adapter_runs_the_four_other_backends_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    env["GENROUTE_CACHE_DIR"] = str(tmp_path / "cache")
    # --no-tune keeps this test fast; `.ci/run` runs the plain demo, which trains the adapter.
    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", "demo", "--no-tune", "--cache-dir", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for backend in ("template", "few_shot", "docs", "tools"):
        assert f"│ {backend}" in out, f"backend {backend} missing from the demo table"
    assert "│ tuned" not in out  # no adapter, so no tuned model: the base model does not pass for one
    assert "genroute.generate" in out and "execute_tool get_weather" in out and "retrieval demo_handbook" in out
    assert "no LoRA adapter found" in out and not list((tmp_path / "demo").glob("review-lora*.gguf"))
    # The tool call and the citations are printed as text, not swallowed as rich markup.
    answers = table_column(out, 4)
    assert "[tools: get_weather({'city': " in answers and "→ ok]" in answers
    assert "[cited: " in answers


@pytest.mark.local
@pytest.mark.slow
def test_the_demo_trains_its_adapter_in_a_private_directory_not_at_a_planted_name(tmp_path: Path) -> None:
    # The adapter was trained in <cache>/.review-lora.<pid>.tmp, a name anyone able to write in a shared cache
    # directory (--cache-dir) could plant first: a link there to their directory had the adapter the demo then
    # serves written where they could replace it, and tune_result.json left with them.
    for module in TUNE_MODULES:
        pytest.importorskip(module, reason="the demo trains its adapter with the tune-local extra")
    from genroute.tuning.local_lora import LocalTuneConfig

    cache, theirs = tmp_path / "shared", tmp_path / "theirs"
    cache.mkdir()
    theirs.mkdir()
    (cache / f".review-lora.{os.getpid()}.tmp").symlink_to(theirs)
    (cache / SUMMARY_NAME).symlink_to(tmp_path / "bashrc")  # the summary, now written into the cache, goes past it
    # One step of a rank-1 adapter: what is checked is where the files go, not what the adapter learns.
    config = LocalTuneConfig(**{**tune_options(), "max_steps": 1, "rank": 1, "progress": False})
    summary = train_review_adapter(cache, config=config)
    assert list(theirs.iterdir()) == [] and not (tmp_path / "bashrc").exists()
    assert adapter_path(cache).is_file() and summary["adapter_path"] == str(adapter_path(cache))
    assert json.loads((cache / SUMMARY_NAME).read_text())["steps"] == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted([ADAPTER_NAME, SUMMARY_NAME,
                                                              f".review-lora.{os.getpid()}.tmp"])


def table_column(out: str, index: int) -> str:
    """The text of one column of the printed table, its wrapped lines joined by spaces."""
    rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    return " ".join(cells[index].strip() for cells in rows if len(cells) == 10 and cells[index].strip())


def rendered(table: object) -> str:
    console = Console(record=True, width=400, color_system=None)
    console.print(table)
    return console.export_text()


def test_table_prints_model_text_tool_calls_and_citations_literally():
    decision = DecisionRecord(policy="ladder", reason="needs_tools [/bold] set")
    hostile = GenerateResult(
        text="Use [/x] and [bold]not bold[/bold]", backend="tools", model="m", decision=decision,
        tool_calls=(ToolCall(name="get_weather", args={"city": "[Paris]"}),),
        citations=(Citation(chunk_id="abcdef0123456789", source="doc.md", score=0.1),),
    )
    out = rendered(results_table([({"input": "Weather [in] Paris?"}, "calls a tool", hostile)]))
    assert "[tools: get_weather({'city': '[Paris]'}) → ok] Use [/x] and [bold]not bold[/bold]" in out
    assert "[cited: abcdef01]" in out
    assert "Weather [in] Paris?" in out and "needs_tools [/bold] set" in out


def test_long_answers_are_clipped_but_keep_citations():
    result = GenerateResult(text="word " * 100, backend="docs", model="m",
                            decision=DecisionRecord(policy="ladder", reason="r"),
                            citations=(Citation(chunk_id="0123456789", source="d", score=0.1),))
    out = rendered(results_table([({"input": "q"}, "grounded", result)]))
    assert "…" in out and "[cited: 01234567]" in out


def test_review_training_data_is_binary_balanced_and_attributed():
    examples = load_examples(DATA / TRAIN_DATA, min_examples=100)
    counts = Counter(e.output for e in examples)
    assert set(counts) == {"negative", "positive"} and counts["negative"] == counts["positive"]
    assert all(e.label == e.output for e in examples)
    notice = (DATA / "NOTICE.md").read_text(encoding="utf-8")
    assert "DynaSent" in notice and "CC BY 4.0" in notice and "Potts" in notice


def test_summary_line_names_size_time_and_validation_loss():
    summary = json.loads('{"adapter_bytes": 2959104, "train_seconds": 61.9, "steps": 39, "train_examples": 101,'
                         ' "validation_loss": 0.263, "initial_validation_loss": 20.1}')
    assert summary_line(summary) == (f"trained {ADAPTER_NAME}: 3.0 MB, 62 s training (39 steps on 101 reviews), "
                                     "validation loss 0.263 (before: 20.10)")


def test_the_demo_console_hands_a_closed_pipe_to_the_command():
    # `genroute demo | head -2`: rich's console exited with 1 (SystemExit) where every other command ends with 141.
    script = ("import sys\nfrom genroute.demo.render import DemoConsole\n"
              "try:\n    DemoConsole().print('row ' * 100_000)\n"
              "except BrokenPipeError:\n    sys.stderr.write('broken pipe')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the table is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == "broken pipe", err
