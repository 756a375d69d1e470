"""`genroute demo` as a newcomer runs it: a subprocess, offline, exit code 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.local
@pytest.mark.slow
def test_demo_runs_all_five_backends_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    env["GENROUTE_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", "demo", "--cache-dir", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for backend in ("template", "few_shot", "docs", "tools", "tuned"):
        assert f"│ {backend}" in out, f"backend {backend} missing from the demo table"
    assert "genroute.generate" in out and "execute_tool get_weather" in out and "retrieval demo_handbook" in out
