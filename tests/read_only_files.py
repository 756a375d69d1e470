"""Files made read-only for a test, for root too: import the fixture into a test module
(``from .read_only_files import read_only  # noqa: F401``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def read_only() -> Iterator[Callable[..., None]]:
    """Makes paths read-only (immutable for root, whom permission bits do not stop), undone after the test."""
    made: list[Path] = []

    def flip(path: Path, on: bool) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)
        else:
            path.chmod(path.stat().st_mode & ~0o222 if on else path.stat().st_mode | 0o200)

    def make(*paths: Path) -> None:
        for path in paths:
            flip(path, True)
            made.append(path)

    yield make
    for path in reversed(made):
        flip(path, False)
