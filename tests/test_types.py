"""genroute ships py.typed: mypy, configured in pyproject.toml ([tool.mypy]), passes over the whole package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mypy_passes_over_the_package() -> None:
    pytest.importorskip("mypy", reason="mypy comes with the dev extra")
    # The repo's .mypy_cache (git-ignored) keeps a second run to seconds; the first takes about a minute.
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
                          "--cache-dir", str(REPO / ".mypy_cache")],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0, f"mypy found errors:\n{out.stdout}{out.stderr}"
