"""No silent skips in CI: with ``GENROUTE_NO_SKIPS=1`` (``.ci/run`` sets it) a skipped test fails the run.

docs/install.md says every test runs in CI (``local`` and ``chroma_server`` included), so a skip there means a
capability went untested: a missing extra, server or binary. An install that cannot run some tests names them in
a file given by ``GENROUTE_ALLOWED_SKIPS`` (one node id or test-file path per line, ``#`` comments), e.g.
``tests/skips/light_install.txt`` for ``GENROUTE_EXTRAS=local,dev``; those may skip, and are listed at the end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

_skipped: dict[str, str] = {}


def _active() -> bool:
    return os.environ.get("GENROUTE_NO_SKIPS") == "1"


def _allowed() -> list[str]:
    path = os.environ.get("GENROUTE_ALLOWED_SKIPS")
    if not path:
        return []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _is_allowed(nodeid: str, allowed: list[str]) -> bool:
    return any(nodeid == entry or nodeid.startswith(entry + "::") or nodeid.startswith(entry + "[")
               for entry in allowed)


def _record(report: Any) -> None:
    if report.skipped and not getattr(report, "wasxfail", None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped[report.nodeid] = reason


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test (skips happen in setup, or in the call for ``pytest.skip``)."""
    _record(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """Remember modules skipped at import (``pytest.importorskip`` at module level)."""
    _record(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test skipped that this install is expected to run."""
    if not _active():
        return
    allowed = _allowed()
    unexpected = {n: r for n, r in _skipped.items() if not _is_allowed(n, allowed)}
    if unexpected and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    """List unexpected skips (failures here) and the allowed ones (what this install cannot run)."""
    if not _active() or not _skipped:
        return
    allowed = _allowed()
    tr = terminalreporter
    unexpected = {n: r for n, r in _skipped.items() if not _is_allowed(n, allowed)}
    if unexpected:
        tr.section("skipped, but CI must run them (GENROUTE_NO_SKIPS=1)", red=True)
        for nodeid, reason in sorted(unexpected.items()):
            tr.line(f"{nodeid}: {reason}")
        tr.line(f"{len(unexpected)} unexpected skip(s): failing the run")
    expected = sorted(n for n in _skipped if _is_allowed(n, allowed))
    if expected:
        tr.section("not run in this install (listed in GENROUTE_ALLOWED_SKIPS)")
        for nodeid in expected:
            tr.line(f"{nodeid}: {_skipped[nodeid]}")
