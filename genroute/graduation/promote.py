"""The promotion rule: promote a challenger when its paired quality difference to the incumbent has a 95 % CI
lower bound above ``-margin`` and it is cheaper; otherwise say why not."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from genroute.bench.stats import PairedComparison, compare_paired
from genroute.outcomes.records import OutcomeRecord
from genroute.outcomes.stats import side_cost, uses_cloud_equivalent


class Promotion(BaseModel):
    """The decision, its statistics and the reasons."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    incumbent: str
    challenger: str
    margin: float
    n: int
    comparison: PairedComparison
    cost_basis: str
    incumbent_cost_usd: float
    challenger_cost_usd: float
    incumbent_latency_p50_s: float
    challenger_latency_p50_s: float
    incumbent_input_tokens: float
    challenger_input_tokens: float
    promote: bool
    reasons: tuple[str, ...]

    def line(self) -> str:
        """One report line."""
        c = self.comparison
        head = (f"decide: {self.challenger} vs {self.incumbent} on task {self.task!r}, n = {self.n} paired: quality "
                f"{c.mean_a:.3f} vs {c.mean_b:.3f}, difference {c.difference:+.3f}, 95% CI [{c.ci[0]:+.3f}, "
                f"{c.ci[1]:+.3f}] (margin {self.margin:g})"
                + (f", McNemar p = {c.mcnemar_p:.3g}" if c.mcnemar_p is not None else "")
                + f"; ${self.challenger_cost_usd * 1000:.4f} vs ${self.incumbent_cost_usd * 1000:.4f} per 1k "
                  f"({self.cost_basis}); p50 {self.challenger_latency_p50_s:.3f}s vs "
                  f"{self.incumbent_latency_p50_s:.3f}s")
        return head + (" -> PROMOTE" if self.promote else " -> keep the incumbent: " + "; ".join(self.reasons))


def decide_promotion(records: Sequence[OutcomeRecord], task: str, *, incumbent: str, challenger: str,
                     margin: float = 0.05, min_n: int = 100, seed: int = 0) -> Promotion:
    """Compare the two on every record of ``task`` where both were scored (shadow pairs, split or bench rows)."""
    paired = [r for r in records if r.task == task and r.outcomes.get(incumbent) is not None
              and r.outcomes.get(challenger) is not None and r.outcomes[incumbent].score is not None
              and r.outcomes[challenger].score is not None]
    a = [float(r.outcomes[challenger].score) for r in paired]  # type: ignore[arg-type]
    b = [float(r.outcomes[incumbent].score) for r in paired]  # type: ignore[arg-type]
    comparison = compare_paired(a, b, a=challenger, b=incumbent, min_n=min_n, seed=seed)
    cloud = uses_cloud_equivalent(paired)

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    costs = {name: mean([side_cost(r.outcomes[name], cloud) for r in paired]) for name in (incumbent, challenger)}
    latency = {name: statistics.median([r.outcomes[name].latency_s for r in paired]) if paired else 0.0
               for name in (incumbent, challenger)}
    tokens = {name: mean([float(r.outcomes[name].input_tokens) for r in paired]) for name in (incumbent, challenger)}
    reasons = []
    if len(paired) < min_n:
        reasons.append(f"only {len(paired)} paired outcomes; the decision needs {min_n}")
    elif comparison.ci[0] <= -margin:
        reasons.append(f"a quality loss larger than the margin is not ruled out (CI lower bound "
                       f"{comparison.ci[0]:+.3f} <= -{margin:g})")
    if costs[challenger] >= costs[incumbent]:
        reasons.append(f"not cheaper (${costs[challenger]:.6g} vs ${costs[incumbent]:.6g} per request)")
    return Promotion(
        task=task, incumbent=incumbent, challenger=challenger, margin=margin, n=len(paired), comparison=comparison,
        cost_basis="cloud-equivalent" if cloud else "measured", incumbent_cost_usd=costs[incumbent],
        challenger_cost_usd=costs[challenger], incumbent_latency_p50_s=latency[incumbent],
        challenger_latency_p50_s=latency[challenger], incumbent_input_tokens=tokens[incumbent],
        challenger_input_tokens=tokens[challenger], promote=not reasons, reasons=tuple(reasons))
