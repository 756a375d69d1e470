"""The CI skip guard (tests/skip_guard.py): a skip fails the run unless the install lists it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SAMPLE = '''
import pytest

def test_runs():
    pass

def test_needs_a_missing_extra():
    pytest.importorskip("genroute_no_such_module", reason="extra not installed")
'''


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    environ = {k: v for k, v in os.environ.items() if k != "GENROUTE_ALLOWED_SKIPS"}  # the outer run's list
    environ.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skip_guard", "-q", "-p", "no:cacheprovider",
                           str(tmp_path / "test_sample.py")], capture_output=True, text=True, cwd=tmp_path,
                          env=environ, timeout=120)


def test_a_skip_fails_the_run_in_ci(tmp_path):
    out = _pytest(tmp_path, GENROUTE_NO_SKIPS="1")
    assert out.returncode == 1, out.stdout
    assert "test_sample.py::test_needs_a_missing_extra: " in out.stdout and "unexpected skip" in out.stdout


def test_a_listed_skip_is_allowed_and_named(tmp_path):
    allowed = tmp_path / "light.txt"
    allowed.write_text("# tests the light install cannot run\ntest_sample.py::test_needs_a_missing_extra\n")
    out = _pytest(tmp_path, GENROUTE_NO_SKIPS="1", GENROUTE_ALLOWED_SKIPS=str(allowed))
    assert out.returncode == 0, out.stdout
    assert "not run in this install" in out.stdout and "test_needs_a_missing_extra" in out.stdout


def test_outside_ci_a_skip_is_only_a_skip(tmp_path):
    out = _pytest(tmp_path, GENROUTE_NO_SKIPS="0")
    assert out.returncode == 0, out.stdout
