"""What a rung spent, and adding it up: a ``RunContext``'s usage and costs, summed into its request's ledger (a
shadow's or a validator's into its rung's)."""

from __future__ import annotations

from typing import Protocol

from genroute.types import NO_USAGE, Usage


class Spend(Protocol):
    """What a rung spent, or a sum of such: a ``RunContext`` or a request's ledger."""

    usage: Usage
    cost_usd: float
    cost_estimated: bool
    cache_storage_cost_usd: float
    cloud_equivalent_cost_usd: float | None


def add_spend(total: Spend, part: Spend) -> None:
    """Add ``part``'s usage and costs to ``total`` (a rung's to its request's ledger, a validator's to its rung)."""
    total.usage = part.usage if total.usage is NO_USAGE else total.usage + part.usage
    total.cost_usd += part.cost_usd
    total.cost_estimated = total.cost_estimated or part.cost_estimated
    total.cache_storage_cost_usd += part.cache_storage_cost_usd
    if part.cloud_equivalent_cost_usd is not None:
        total.cloud_equivalent_cost_usd = (total.cloud_equivalent_cost_usd or 0.0) + part.cloud_equivalent_cost_usd
