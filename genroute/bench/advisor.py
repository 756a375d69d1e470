"""The graduation advisor: when does a tuned model's short prompt pay back its tuning cost versus few-shot ICL?

ICL pays for its examples on every request (prompt inflation); a tuned model pays once for tuning and then
sends the bare input. From the measured cost per request of both (or of the prompt-template backend as a
stand-in for the tuned model's bare prompt, when no tuned backend was measured), a monthly volume and a
tuning cost, the advisor gives the break-even month and volume.

Defaults (documented assumptions; override them for your provider and data):

- ``tuning_usd_per_1m_tokens = 5.0``: supervised tuning list price per 1M training tokens for a
  Flash-class Gemini model on Vertex AI (tokens x epochs are billed);
- ``training_examples = 1000`` and ``epochs = 3``; tokens per training example = the measured input+output
  tokens of the tuned (or stand-in) backend;
- ``tuned_monthly_fixed_usd = 0``: tuned Gemini endpoints bill per token at the base model's rates; set it
  for a dedicated deployment;
- local models cost nothing per token: the advisor then uses the cloud-equivalent cost (what the same tokens
  would cost on the configured reference Gemini model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from genroute.bench.report import Summary


class AdvisorSettings(BaseModel):
    """What the advisor assumes; every field can be set from the CLI or the API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    monthly_requests: int = Field(default=100_000, ge=1)
    tuning_cost_usd: float | None = Field(default=None, ge=0, description="Overrides the estimate below.")
    tuning_usd_per_1m_tokens: float = Field(default=5.0, ge=0)
    training_examples: int = Field(default=1000, ge=1)
    epochs: int = Field(default=3, ge=1)
    tuned_monthly_fixed_usd: float = Field(default=0.0, ge=0)
    horizon_months: int = Field(default=12, ge=1, description="Pay-back horizon for the volume threshold.")


class GraduationAdvice(BaseModel):
    """The break-even estimate and the sentence the report prints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    icl_backend: str
    tuned_backend: str
    tuned_measured: bool = Field(description="False: a prompt-template backend stood in for the tuned model.")
    cost_basis: str
    icl_cost_per_request_usd: float
    tuned_cost_per_request_usd: float
    icl_input_tokens: float
    tuned_input_tokens: float
    tuning_cost_usd: float
    monthly_requests: int
    monthly_saving_usd: float
    break_even_months: float | None
    break_even_requests: float | None
    requests_per_month_for_horizon: float | None
    text: str


def advise(summaries: Sequence[Summary], settings: AdvisorSettings | None = None, *,
           icl: str | None = None, tuned: str | None = None, kinds: dict[str, str] | None = None
           ) -> GraduationAdvice | None:
    """Advice from the summaries (backends found by name or ``kinds``: name -> backend kind); None if no ICL."""
    settings = settings or AdvisorSettings()
    kinds = kinds or {}
    by_name = {s.backend: s for s in summaries}

    def find(*wanted: str) -> Summary | None:
        for s in summaries:
            if kinds.get(s.backend) in wanted or (s.backend in wanted and s.backend not in kinds):
                return s
        return None

    icl_s = by_name.get(icl) if icl else find("icl")
    tuned_s = by_name.get(tuned) if tuned else find("tuned")
    measured = tuned_s is not None
    if tuned_s is None:
        tuned_s = find("prompt_template")
    if icl_s is None or tuned_s is None:
        return None
    cloud = all(s.cost_per_request_usd == 0 and s.cloud_equivalent_per_request_usd is not None
                for s in (icl_s, tuned_s))
    basis = "cloud-equivalent" if cloud else "measured"

    def cost(s: Summary) -> float:
        return (s.cloud_equivalent_per_request_usd or 0.0) if cloud else s.cost_per_request_usd

    c_icl, c_tuned = cost(icl_s), cost(tuned_s)
    tokens_per_example = tuned_s.input_tokens + tuned_s.output_tokens
    tuning = settings.tuning_cost_usd
    if tuning is None:
        tuning = (settings.training_examples * tokens_per_example * settings.epochs
                  * settings.tuning_usd_per_1m_tokens / 1_000_000)
    saving_per_request = c_icl - c_tuned
    volume = settings.monthly_requests
    monthly = volume * saving_per_request - settings.tuned_monthly_fixed_usd
    months = tuning / monthly if monthly > 0 else None
    total = tuning / saving_per_request if saving_per_request > 0 and settings.tuned_monthly_fixed_usd == 0 else None
    if months is not None and total is None:
        total = months * volume
    horizon = None
    if saving_per_request > 0:
        horizon = (tuning / settings.horizon_months + settings.tuned_monthly_fixed_usd) / saving_per_request
    stand_in = "" if measured else f" ({tuned_s.backend}'s bare prompt standing in for a tuned model)"
    head = (f"ICL ({icl_s.backend}) sends {icl_s.input_tokens:.0f} input tokens per request vs "
            f"{tuned_s.input_tokens:.0f} for {tuned_s.backend}{stand_in}: ${c_icl * 1000:.4f} vs "
            f"${c_tuned * 1000:.4f} per 1k requests ({basis} cost). Tuning estimated at ${tuning:.2f}.")
    if months is None:
        verdict = (f" At {volume:,} requests/month the tuned model never pays back "
                   f"(monthly saving ${monthly:.2f}); stay with ICL.")
    else:
        verdict = (f" At {volume:,} requests/month it saves ${monthly:.2f}/month and pays back after "
                   f"{months:.1f} months (~{total:,.0f} requests); to pay back within "
                   f"{settings.horizon_months} months you need >= {math.ceil(horizon or 0):,} requests/month.")
    quality = ""
    if tuned_s.quality_ci[1] < icl_s.quality_ci[0]:
        quality = (f" Caution: {tuned_s.backend} scores lower ({tuned_s.quality:.3f} vs {icl_s.quality:.3f},"
                   " CIs apart): graduate only if tuning closes that gap.")
    return GraduationAdvice(
        icl_backend=icl_s.backend, tuned_backend=tuned_s.backend, tuned_measured=measured, cost_basis=basis,
        icl_cost_per_request_usd=c_icl, tuned_cost_per_request_usd=c_tuned,
        icl_input_tokens=icl_s.input_tokens, tuned_input_tokens=tuned_s.input_tokens, tuning_cost_usd=tuning,
        monthly_requests=volume, monthly_saving_usd=monthly, break_even_months=months,
        break_even_requests=total, requests_per_month_for_horizon=horizon, text=head + verdict + quality,
    )
