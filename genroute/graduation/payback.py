"""The graduation advisor's line: break-even of a tuned challenger from the measured traffic volume, the measured
per-request costs and the tuning run's actual cost (``adecide`` adds it to the report)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genroute.graduation.promote import Promotion
    from genroute.outcomes.records import OutcomeRecord


#: The shortest span of request times (first to last) a monthly volume is estimated from: a burst in a test or the first
#: minutes of traffic scaled to a month read as millions of requests and a pay-back "in 0.0 hours". Below it the advisor
#: states the rate over that window and gives no monthly figure and no pay-back period.
MIN_VOLUME_WINDOW_S = 3600.0


def advise(records: list[OutcomeRecord], promotion: Promotion, *, tuning_cost_usd: float | None,
           tuning_cpu_s: float | None) -> str:
    """Break-even from measured volume, measured per-request costs and the actual tuning cost."""
    volume, monthly, no_volume = _volume(records)
    tokens = (f"input tokens per request {promotion.incumbent_input_tokens:.0f} ({promotion.incumbent}) vs "
              f"{promotion.challenger_input_tokens:.0f} ({promotion.challenger})")
    if promotion.incumbent_cost_usd is None or promotion.challenger_cost_usd is None:
        return f"{volume}; {tokens}; saving unknown: a backend recorded no cost"
    saving = promotion.incumbent_cost_usd - promotion.challenger_cost_usd
    if tuning_cost_usd is None:
        cost = (f"tuning took {tuning_cpu_s:.0f} CPU-s on this machine (give its price to compute a pay-back)"
                if tuning_cpu_s is not None else "tuning cost not given")
        return f"{volume}; {tokens}; saving ${saving * 1000:.4f} per 1k requests ({promotion.cost_basis}); {cost}"
    if monthly is None:
        return f"{volume}; {tokens}; tuning ${tuning_cost_usd:.4f}: {no_volume}"
    if saving <= 0:
        return f"{volume}; {tokens}; tuning ${tuning_cost_usd:.4f}: never pays back (the tuned model saves nothing)"
    months = tuning_cost_usd / (saving * monthly)
    return (f"{volume}; {tokens}; saving ${saving * 1000:.4f} per 1k requests; tuning ${tuning_cost_usd:.4f} pays "
            f"back in {months * 30 * 24:.1f} hours of this traffic")


def _volume(records: list[OutcomeRecord]) -> tuple[str, float | None, str]:
    """The volume as the advisor states it, the monthly volume it estimates (``None`` below ``MIN_VOLUME_WINDOW_S``
    of request times, or without them) and, when there is none, why."""
    times = sorted(float(r.metadata["at"]) for r in records if isinstance(r.metadata.get("at"), int | float))
    span_s = times[-1] - times[0] if len(times) > 1 else 0.0
    head = f"measured volume {len(records)} requests"
    if span_s <= 0:
        return f"{head} (no request times)", None, "no request times to measure a volume from"
    if span_s < MIN_VOLUME_WINDOW_S:
        minimum = f"{MIN_VOLUME_WINDOW_S / 3600:g} h"
        return (f"{head} in {span_s:.1f} s ({len(times) / span_s * 3600:,.0f}/hour over that window; a monthly volume "
                f"is estimated from at least {minimum} of traffic)", None,
                f"no pay-back period from {len(times)} requests over {span_s:.1f} s (under {minimum} of traffic)")
    monthly = len(times) / span_s * 30 * 86400
    return f"{head} in {span_s / 3600:.2f} h (~{monthly:,.0f}/month at that rate)", monthly, ""
