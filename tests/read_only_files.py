"""Files made read-only for a test, for root too: import the fixture into a test module
(``from .read_only_files import read_only  # noqa: F401``)."""

from __future__ import annotations

import contextlib
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A directory on a 1 MB tmpfs of its own, and a function that fills it to the last byte (a disk that is full).
    Mounting needs root, as CI runs; anyone else is told so (there is no full disk to be had without it)."""
    if os.geteuid() != 0:
        pytest.fail("a full disk is a small tmpfs mounted for the test: run the tests as root (CI does)")
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)

    def fill() -> None:
        with open(where / "filler", "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:  # ENOSPC: full
                pass

    try:
        yield where, fill
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """This process may write no file past ``limit`` bytes (``RLIMIT_FSIZE``, ``ulimit -f``: a write past it fails with
    EFBIG; Python ignores SIGXFSZ) until the block ends: a limit reached for real, as a quota would be (this kernel has
    no quotas). Only what the block writes should grow files then."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
