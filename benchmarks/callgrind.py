"""One place that counts a child process's instructions under valgrind's callgrind (load cannot move the count).

Used by ``overhead_instructions.py``, ``throughput_instructions.py`` and ``retry_instructions.py``. Children run
with ``PYTHONHASHSEED=0`` so that string hashing (dict and set layout) is the same in every run.

A child can mark a measured window with ``in_window(fn)``: with ``window=True`` callgrind then counts only what
the calling thread executes inside it (collection is toggled on entry to and exit from the C function behind
``sys.call_tracing``, which nothing else calls), not start-up, imports, warm-up, shutdown or other threads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any, Callable

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

# The interpreter's C function that sys.call_tracing calls the window through; callgrind toggles on it.
WINDOW_FUNCTION = "_PyEval_CallTracing"


def in_window(fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` as the measured window (see the module docstring)."""
    return sys.call_tracing(fn, ())


def run(args: list[str], *, label: str = "", not_applicable: int | None = None,
        window: bool = False) -> tuple[int, str] | None:
    """Instructions ``python ARGS`` executed (only inside its ``in_window`` call when ``window``) and its stdout;
    ``None`` when it exits with ``not_applicable`` (e.g. a missing optional package); ``RuntimeError`` (with
    ``label`` and valgrind's last output) when the run fails."""
    toggle = ["--collect-atstart=no", f"--toggle-collect={WINDOW_FUNCTION}"] if window else []
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *toggle,
                           sys.executable, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    if not_applicable is not None and proc.returncode == not_applicable:
        return None
    found = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        prefix = f"{label}: " if label else ""
        raise RuntimeError(f"{prefix}valgrind run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if window and int(found.group(1)) == 0:
        raise RuntimeError(f"{label}: nothing counted: no in_window call, or this interpreter's symbols do not "
                           f"name {WINDOW_FUNCTION}")
    return int(found.group(1)), proc.stdout


def instructions(args: list[str], *, label: str = "", not_applicable: int | None = None) -> int | None:
    """Instructions the whole ``python ARGS`` process executed (``run`` without a window, the count only)."""
    result = run(args, label=label, not_applicable=not_applicable)
    return None if result is None else result[0]
