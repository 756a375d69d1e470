"""``import checkout`` before genroute in a benchmark script: the genroute it runs is this checkout's.

``python benchmarks/x.py`` puts ``benchmarks/`` first on ``sys.path`` (so this module is found), then the entries of
``PYTHONPATH``, then the standard library and site-packages, where another genroute may be installed (an editable
install of another checkout too): without this, that one is imported. This puts the directory above
``benchmarks/`` right after ``PYTHONPATH``'s entries: an installed genroute no longer wins, and a checkout named
in ``PYTHONPATH`` still does (how ``cost_probe.py``, ``hostile_probe.py`` and the ``reingest_*`` scripts measure an
older checkout for a "before" figure).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def put_first() -> None:
    """``ROOT`` on ``sys.path`` after the script's directory and ``PYTHONPATH``'s entries, unless already there."""
    named = "" if sys.flags.ignore_environment else os.environ.get("PYTHONPATH", "")
    # Python adds each PYTHONPATH entry (an empty one too: the working directory) after sys.path[0].
    position = min(len(sys.path), 1 + (len(named.split(os.pathsep)) if named else 0))
    if str(ROOT) not in sys.path[:position]:
        sys.path.insert(position, str(ROOT))


put_first()
