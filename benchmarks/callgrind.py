"""One place that counts a child process's instructions under valgrind's callgrind (load cannot move the count).

Used by ``overhead_instructions.py``, ``throughput_instructions.py`` and ``retry_instructions.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys


def instructions(args: list[str], *, label: str = "", not_applicable: int | None = None) -> int | None:
    """Instructions ``python ARGS`` executed; ``None`` when it exits with ``not_applicable`` (e.g. a missing
    optional package); ``RuntimeError`` (with ``label`` and valgrind's last output) when the run fails."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, *args],
                          capture_output=True, text=True, check=False)
    if not_applicable is not None and proc.returncode == not_applicable:
        return None
    found = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        prefix = f"{label}: " if label else ""
        raise RuntimeError(f"{prefix}valgrind run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return int(found.group(1))
