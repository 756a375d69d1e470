"""Targets that failed on every record for a reason of the set-up, not of the model: an ICL/RAG collection that does
not exist, a model name the provider refuses, a tool module that cannot be imported, a custom scorer that always
raises. A run stops such a target after its first ``SETUP_LIMIT`` records (one warning naming it and the cause),
its report and exit status name every target with no scored row, compiling leaves them out, and a resumed run
reruns their failed rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

from pydantic import ConfigDict

from genroute.public_model import PublicModel

_log = logging.getLogger("genroute.bench")

#: A target whose first this many outcomes failed the same way (same error type and text) is stopped.
SETUP_LIMIT = 3
#: Failures that measure the model (an invalid answer, a tool loop, nothing retrieved, too slow): never a reason
#: to stop a target, however often they repeat.
MODEL_FAILURES = frozenset({"ValidationFailed", "ToolLoopExceeded", "NoRelevantContext", "DeadlineExceeded"})
#: Error types that are the caller's mistake (``genroute.errors.exit_status``: 2).
USAGE_ERRORS = frozenset({"UsageError", "ConfigError"})


class Row(Protocol):
    """What is read of a ``runner.Outcome`` (which the runner, importing this module, defines)."""

    @property
    def backend(self) -> str: ...

    @property
    def ok(self) -> bool: ...

    @property
    def error_type(self) -> str | None: ...

    @property
    def error(self) -> str | None: ...


class SetupWatch:
    """Watches each target's first outcomes of a run and stops the target when they all failed the same way."""

    def __init__(self, scored: Iterable[str] = (), *, limit: int = SETUP_LIMIT) -> None:
        self.limit = limit
        self._first: dict[str, list[Row]] = {}
        self._cleared = set(scored)  # targets that answered (now or in an earlier run): never stopped
        self.stopped: dict[str, Row] = {}

    def see(self, outcome: Row, *, left: int) -> None:
        """Count ``outcome``; ``left``: records of its target not started yet (named when it is stopped)."""
        target = outcome.backend
        if target in self._cleared or target in self.stopped:
            return
        if outcome.ok or outcome.error_type in MODEL_FAILURES:
            self._cleared.add(target)
            return
        first = self._first.setdefault(target, [])
        first.append(outcome)
        if len(first) < self.limit:
            return
        if any((o.error_type, o.error) != (first[0].error_type, first[0].error) for o in first):
            self._cleared.add(target)
            return
        self.stopped[target] = first[0]
        _log.warning("bench: stopped %r after its first %d records all failed with %s: %s (%d records "
                     "not run; fix it and rerun into the same output directory to run them)", target, len(first),
                     first[0].error_type, first[0].error, left)


class Unscored(PublicModel):
    """A target with no scored row: every row it has failed (or its answers could not be scored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    error_type: str
    error: str
    failed: int
    not_run: int = 0

    def line(self) -> str:
        """The target, how many rows failed and why, and how many records it never ran."""
        skipped = f"; stopped early, {self.not_run} records not run" if self.not_run else ""
        return (f"{self.backend}: no scored row: {self.failed} failed with {self.error_type}: "
                f"{self.error}{skipped}")


def unscored_targets(outcomes: Sequence[Row], records: int) -> list[Unscored]:
    """The targets of ``outcomes`` without a single scored row, in order of appearance, with their most common
    failure; ``records``: how many records the run had (the rest of a stopped target's were not run)."""
    rows: dict[str, list[Row]] = {}
    for o in outcomes:
        rows.setdefault(o.backend, []).append(o)
    found = []
    for target, mine in rows.items():
        if any(o.ok for o in mine):
            continue
        (error_type, error), _n = Counter((o.error_type or "", o.error or "") for o in mine).most_common(1)[0]
        found.append(Unscored(backend=target, error_type=error_type, error=error, failed=len(mine),
                              not_run=max(records - len(mine), 0)))
    return found


def unscored_markdown(unscored: Sequence[Unscored]) -> str:
    """The report's section on targets with no scored row."""
    lines = [f"- {u.line()}" for u in unscored]
    return ("\n".join(lines) + "\n\nThey are left out of the paired differences, the advisor and the compiled "
            "policies. Fix the cause and rerun the same command into the same output directory: their failed rows "
            "(and the records not run) are run again, the other rows are kept.")


def exit_status(unscored: Sequence[Unscored]) -> int:
    """What ``genroute bench`` returns when targets had no scored row: 2 when each failed with the caller's mistake
    (a usage or config error), else 1 (``genroute.errors.exit_status``)."""
    return 2 if all(u.error_type in USAGE_ERRORS for u in unscored) else 1
