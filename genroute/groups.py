"""Records grouped by their input: repeated inputs counted once (the cost-weight rules' folds and means, every
paired comparison's cluster means). A leaf both the policies and the benchmark's statistics import."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from genroute.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray


def input_means(values: NDArray[Any], groups: Sequence[Hashable]) -> NDArray[Any]:
    """Rows averaged per group, groups in the order they first appear (a group of one row keeps it as it is): the
    one per-input mean of repeated inputs, for the cost-weight rules and every paired comparison
    (``genroute.bench.clusters.cluster_means``). ``ConfigError`` naming ``groups`` unless one group per row."""
    inverse, distinct = group_index(groups, len(values))
    if distinct == len(values):
        return values
    sums = np.zeros((distinct, values.shape[1]))
    np.add.at(sums, inverse, values)
    return sums / np.bincount(inverse)[:, None]


def group_index(groups: Sequence[Hashable], n: int) -> tuple[NDArray[Any], int]:
    """Each record's group as a number, in the order groups first appear (``arange(n)`` when none repeats), and
    how many groups there are."""
    if len(groups) != n:
        raise ConfigError(f"one group per record is needed (got {len(groups)} for {n})", field="groups")
    first: dict[Hashable, int] = {}
    return np.array([first.setdefault(g, len(first)) for g in groups], dtype=np.int64), len(first)
