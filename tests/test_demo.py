"""`genroute demo` as a newcomer runs it: a subprocess, offline, exit code 0; and its bundled tuning data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from importlib.resources import files

import pytest

from genroute.demo.tune import ADAPTER_NAME, TRAIN_DATA, summary_line
from genroute.tuning.data import load_examples

DATA = files("genroute.demo") / "data"


@pytest.mark.local
@pytest.mark.slow
def test_demo_runs_all_five_backends_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    env["GENROUTE_CACHE_DIR"] = str(tmp_path / "cache")
    # --no-tune keeps this test fast; `.ci/run` runs the plain demo, which trains the adapter.
    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", "demo", "--no-tune", "--cache-dir", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for backend in ("template", "few_shot", "docs", "tools", "tuned"):
        assert f"│ {backend}" in out, f"backend {backend} missing from the demo table"
    assert "genroute.generate" in out and "execute_tool get_weather" in out and "retrieval demo_handbook" in out
    assert "no LoRA adapter found" in out and not list((tmp_path / "demo").glob("review-lora*.gguf"))


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
