"""``LogEvery``: a warning that may repeat often is logged at most once per interval, not once per occurrence."""

from __future__ import annotations

import time
from collections.abc import Callable


class LogEvery:
    """Says when a repeated warning is due again: the first time, then once ``seconds`` have passed since the last."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        """True (and counted as logged now) when nothing was logged in the last ``seconds``."""
        now = self.clock()
        if self._last is not None and now - self._last < self.seconds:
            return False
        self._last = now
        return True
