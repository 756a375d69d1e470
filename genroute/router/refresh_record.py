"""The outcome of a router's last scheduled refresh (for ``router.health``), and the count of failed ones."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from genroute.errors import without_secrets
from genroute.runtime.telemetry import instrument

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

#: The most characters of a refresh's error kept for health.
ERROR_CHARS = 300


class RefreshRecord:
    """The last scheduled refresh's outcome, and the ``genroute.refresh.failures`` counter (one per router)."""

    def __init__(self, meter: Meter) -> None:
        self.at: float | None = None
        self.error: str | None = None
        self._failures = instrument(meter.create_counter, "genroute.refresh.failures", unit="{refresh}",
                                    description="Scheduled refreshes (outcomes, or reading promotions) that failed")

    def succeeded(self) -> None:
        """A scheduled refresh that ended well."""
        self.at, self.error = time.time(), None

    def failed(self, name: str, exc: BaseException) -> None:
        """Count a failed scheduled ``name`` (``refresh`` or ``promotions``); a refresh's is kept for health."""
        self._failures.add(1, {"genroute.refresh": name, "error.type": type(exc).__name__})
        if name == "refresh":
            self.at, self.error = time.time(), without_secrets(f"{type(exc).__name__}: {exc}")[:ERROR_CHARS]
