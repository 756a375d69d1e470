"""Options more than one command takes (``--quiet``), defined once so that they read and behave alike."""

from __future__ import annotations

import argparse
import sys


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (there is none either when stderr is no terminal: a file or a pipe)")


def shows_progress(args: argparse.Namespace) -> bool:
    """Whether a command draws its progress bar: not with ``--quiet``, and only on a terminal (into a log file or a
    pipe a bar is only its frames' text)."""
    return not args.quiet and sys.stderr.isatty()
