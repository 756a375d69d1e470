"""Objects that hold a parent's threads, event loops or locks, forgotten in a forked child.

A process forked while a router runs (a pre-fork server, ``multiprocessing`` with ``fork``) copies that router's
memory but not its threads: a loop thread, a task in flight or a lock a parent's thread held would be waited on
for ever. Each such object registers with ``forget_at_fork`` and has its ``_forget_parent()`` called in the child,
right after the fork, before any of the child's own code runs.
"""

from __future__ import annotations

import os
import weakref
from typing import Any


def forget_at_fork(holder: Any) -> None:
    """Call ``holder._forget_parent()`` in every child forked while ``holder`` is alive."""
    _HOLDERS.add(holder)


#: Every holder alive.
_HOLDERS: weakref.WeakSet[Any] = weakref.WeakSet()


def _forget_parents() -> None:
    for holder in list(_HOLDERS):
        holder._forget_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents)
