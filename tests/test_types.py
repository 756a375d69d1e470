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


@pytest.mark.slow
def test_the_router_builder_takes_only_a_class_whose_instances_keep_their_config_file(tmp_path: Path) -> None:
    """build.py set ``router._config_file`` on whatever ``cls`` made, under ``# type: ignore[attr-defined]``: its
    ``R`` was any type. It is bound now to what the builder sets (``Router`` declares it), so mypy checks the
    assignment and refuses a class that is no router."""
    pytest.importorskip("mypy", reason="mypy comes with the dev extra")
    snippet = tmp_path / "build_snippet.py"
    snippet.write_text("from genroute.router.build import build_router\nfrom genroute.router.router import Router\n\n\n"
                       "class NotARouter:\n    pass\n\n\nrouter: Router = build_router(Router, 'app.yaml')\n"
                       "other = build_router(NotARouter, 'app.yaml')\n")
    errors, out = _mypy_errors(snippet)
    assert len(errors) == 1 and "build_snippet.py:10:" in errors[0] and '"NotARouter"' in errors[0], out


@pytest.mark.slow
def test_a_history_of_dicts_as_the_docs_build_it_type_checks(tmp_path: Path) -> None:
    """``Router.generate``'s ``history`` keyword was typed ``list[Turn] | None``: an app keeping its conversation as
    the docs do (``{"role": "user", "text": ...}`` dicts, which validate into ``Turn``s) failed mypy on every call
    (``list[dict[str, str]]`` is no ``list[Turn]``). It takes any sequence of ``Turn``s or such mappings; a mistyped
    one (a number for a turn) is still flagged. The same for ``generation``: a dict of settings, as
    docs/migrating.md passes it, was no ``RequestGeneration``."""
    pytest.importorskip("mypy", reason="mypy comes with the dev extra")
    snippet = tmp_path / "history_snippet.py"
    snippet.write_text(
        "from genroute import Router, Turn\n\n\n"
        "def chat(router: Router) -> None:\n"
        "    history = [{'role': 'user', 'text': 'Hi, I am Ada.'}, {'role': 'model', 'text': 'Hello Ada.'}]\n"
        "    router.generate('Who am I?', history=history)\n"
        "    router.generate('Who am I?', history=[{'role': 'user', 'text': 'hi'}, Turn(role='model', text='hey')])\n"
        "    router.stream('Who am I?', history=(Turn(role='user', text='hi'),))\n"
        "    router.generate('Who am I?', history=[1])\n"
        "    router.generate('Name a colour.', generation={'temperature': 1.2, 'max_output_tokens': 8})\n")
    errors, out = _mypy_errors(snippet)
    assert len(errors) == 1 and "history_snippet.py:9:" in errors[0], out


def _mypy_errors(snippet: Path) -> tuple[list[str], str]:
    """mypy's errors on ``snippet`` (the package's own settings; its imports followed silently), and its output."""
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--cache-dir",
                          str(REPO / ".mypy_cache"), "--follow-imports=silent", str(snippet)],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    return [line for line in out.stdout.splitlines() if ": error:" in line], out.stdout
