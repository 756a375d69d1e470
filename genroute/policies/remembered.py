"""The request embeddings a policy that embeds requests (semantic, learned) remembers, and what deciding costs.

A repeated input is not embedded again, so deciding on it costs nothing and holds nothing in the router's
budgets; any other input is held at the embedder's estimate (``Policy.deciding_cost``). An input forgotten
between that estimate and the decision (other inputs pushed it out) is embedded without a hold; what that costs
is still spent once, after.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class RememberedEmbeddings(Generic[V]):
    """``embed(text)`` for the last ``size`` texts asked for, the least recently used forgotten first (0: none
    remembered). Thread-safe: decisions run in worker threads; an embedding is made outside the lock."""

    def __init__(self, embed: Callable[[str], V], size: int) -> None:
        self._embed = embed
        self.size = size
        self._kept: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> V:
        with self._lock:
            if text in self._kept:
                self._kept.move_to_end(text)
                return self._kept[text]
        vector = self._embed(text)
        if self.size:
            with self._lock:
                self._kept[text] = vector
                self._kept.move_to_end(text)
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
        return vector

    def known(self, text: str) -> bool:
        """Whether ``text``'s embedding is remembered (deciding on it embeds nothing)."""
        with self._lock:
            return text in self._kept

    def cache_clear(self) -> None:
        """Forget every embedding (another embedder's vectors are not comparable)."""
        with self._lock:
            self._kept.clear()


def deciding_cost(embedder: Any, remembered: RememberedEmbeddings[Any], text: str) -> float:
    """What deciding on ``text`` may cost: 0 if its embedding is remembered, else ``embedder``'s estimate (0 for an
    embedder without one, e.g. the offline one)."""
    estimate = getattr(embedder, "cost_estimate", None)
    return 0.0 if estimate is None or remembered.known(text) else estimate([text])
