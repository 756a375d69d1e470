"""The ``genroute`` command's entry point, outside the genroute package so that loading the package is part of the
command: a Ctrl-C while it loads (the first ~30 ms) ends it as one later does, with one line and status 130, not a
``KeyboardInterrupt`` traceback. (One during the interpreter's own start-up, before any of genroute runs, is Python's
to report.)"""

from __future__ import annotations

import sys


def main() -> int:
    """Entry point of the ``genroute`` command (``genroute.cli.main`` once loaded)."""
    try:
        from genroute.cli import main as command
    except KeyboardInterrupt:
        print("genroute: interrupted", file=sys.stderr)
        return 130
    return command()
