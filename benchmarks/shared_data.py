"""Where the benchmarks find the shared public data, so they run from a clone: never an absolute machine path.

The shared converted datasets (see their README) live in ``../shared/data`` beside the repository checkout.
Scripts take ``--shared-data DIR``; without it ``GENROUTE_SHARED_DATA`` is used, else ``<repo>/../shared/data``.
The small subsets committed under ``benchmarks/data/`` need none of this.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

REPO = Path(__file__).resolve().parents[1]
#: The subsets committed with the repository.
BENCH_DATA = REPO / "benchmarks" / "data"
ENV = "GENROUTE_SHARED_DATA"


def default_dir() -> Path:
    """``$GENROUTE_SHARED_DATA``, else ``../shared/data`` beside the repository (for a ``git worktree``: beside
    its main checkout)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    beside = REPO.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return beside
    main_checkout = Path(common).parent
    return main_checkout.parent / "shared" / "data" if common else beside


def add_option(parser: argparse.ArgumentParser) -> None:
    """``--shared-data DIR``."""
    parser.add_argument("--shared-data", type=Path, default=None, metavar="DIR",
                        help=f"the shared public data directory (default: ${ENV}, else ../shared/data beside the "
                             "repository)")


def resolve(directory: Path | None, *names: str) -> Path:
    """The shared data directory, checked to hold ``names``; exits with a clear message otherwise."""
    path = Path(directory) if directory is not None else default_dir()
    missing = [n for n in names if not (path / n).exists()]
    if not path.is_dir() or missing:
        what = f"{path} has no {', '.join(missing)}" if path.is_dir() else f"no directory {path}"
        raise SystemExit(f"shared data not found: {what}. Pass --shared-data DIR (the repository's "
                         f"../shared/data) or set {ENV}.")
    return path
