"""The graduation advisor: does a tuned model's short prompt pay back its tuning cost versus few-shot ICL, and is
it as good?

ICL pays for its examples on every request (prompt inflation); a tuned model pays once for tuning and then
sends the bare input. The advisor works only from what was measured and what it is told, and says where each
number came from:

- cost per request: measured for both backends (or the cloud-equivalent cost when both run on a free local
  model); a prompt-template backend stands in for the tuned model's bare prompt when no tuned backend ran;
- tuning cost: told (``tuning_cost_usd``); else for a Vertex AI tuned model the pricing table's training price
  for its base model (or ``tuning_usd_per_1m_tokens``) × training tokens × epochs, the tokens told
  (``training_tokens``) or ``training_examples`` × the tuned backend's measured tokens per request; for a local
  LoRA the training CPU time measured by ``genroute tune --local`` (``tune_result.json`` beside the adapter, or
  ``tuning_cpu_seconds``) × ``cpu_usd_per_hour``. A missing input leaves the cost unknown and the text says which;
- quality: the paired difference tuned − ICL on the same records (``genroute.bench.stats``); unresolved (the CI
  holds 0 or the exact test does not reject), not resolved for want of records (fewer than
  ``stats.MIN_PAIRED_N`` shared inputs, repeats of one input counting once) or not measured makes the verdict
  "inconclusive".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, TypedDict

from pydantic import ConfigDict, Field

from genroute.bench.report import Summary
from genroute.bench.runner import Outcome
from genroute.bench.stats import PairedComparison
from genroute.bounds import is_real
from genroute.config_errors import check_list
from genroute.graduation.trained import TunedInfo as TunedInfo  # where it was defined before; bench reads it here
from genroute.graduation.trained import trained_inputs
from genroute.public_model import ConfigModel, PublicModel
from genroute.runtime.pricing import TRAINING_PRICE_CAVEAT


class AdvisorSettings(ConfigModel):
    """What the advisor is told; anything left ``None`` is taken from measurements or reported as unknown."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    monthly_requests: int | None = Field(default=None, ge=1, description="Expected volume; else per-volume figures.")
    tuning_cost_usd: float | None = Field(default=None, ge=0, description="The tuning cost, if known.")
    tuning_usd_per_1m_tokens: float | None = Field(default=None, ge=0, description="Overrides the pricing table.")
    training_tokens: int | None = Field(default=None, ge=1, description="Training tokens per epoch.")
    training_examples: int | None = Field(default=None, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    tuning_cpu_seconds: float | None = Field(default=None, ge=0, description="Local tuning CPU time, if not measured.")
    cpu_usd_per_hour: float | None = Field(default=None, ge=0, description="Price of one CPU-hour (local tuning).")
    tuned_monthly_fixed_usd: float = Field(default=0.0, ge=0, description="A dedicated deployment's monthly cost.")
    horizon_months: int = Field(default=12, ge=1, description="Pay-back horizon for the volume threshold.")


class GraduationAdvice(PublicModel):
    """The verdict, the numbers behind it and the sentence the report prints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    icl_backend: str
    tuned_backend: str
    tuned_measured: bool = Field(description="False: a prompt-template backend stood in for the tuned model.")
    cost_basis: str
    icl_cost_per_request_usd: float
    tuned_cost_per_request_usd: float
    icl_input_tokens: float
    tuned_input_tokens: float
    tuning_cost_usd: float | None
    tuning_cost_basis: str = Field(description="Where the tuning cost came from, or what is missing.")
    monthly_requests: int | None
    monthly_saving_usd: float | None
    break_even_months: float | None
    break_even_requests: float | None
    requests_per_month_for_horizon: float | None
    quality: PairedComparison | None = Field(description="tuned − ICL on the same records (those whose input the "
                                                         "tuned model was not trained on).")
    trained_on: int = Field(default=0, description="Benchmark records whose input the local tuned model was trained "
                                                   "on (its tune_result.json says): left out of ``quality``.")
    verdict: Literal["graduate", "stay with ICL", "inconclusive"]
    text: str


def advise(summaries: Sequence[Summary], settings: AdvisorSettings | None = None, *,
           icl: str | None = None, tuned: str | None = None, kinds: dict[str, str] | None = None,
           outcomes: Sequence[Outcome] = (), tuned_info: TunedInfo | None = None, training_price: tuple[str, float]
           | None = None, seed: int = 0, inputs: Mapping[str, str] | None = None) -> GraduationAdvice | None:
    """Advice from the summaries and outcomes (backends found by name or ``kinds``: name -> kind); None if no ICL.

    ``training_price``: the pricing table's ``(model, USD per 1M training tokens)`` for the tuned model's base;
    ``inputs``: record id -> input key, so that records sharing an input count as one (``paired.compare_named``).
    """
    summaries = check_list(summaries, Summary, field="summaries")
    outcomes = check_list(outcomes, Outcome, field="outcomes")
    settings = settings or AdvisorSettings()
    kinds = kinds or {}
    by_name = {s.backend: s for s in summaries}

    def find(*wanted: str) -> Summary | None:
        return next((s for s in summaries
                     if kinds.get(s.backend) in wanted or (s.backend in wanted and s.backend not in kinds)), None)

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
    tuning, tuning_basis = tuning_cost(settings, tuned_info, training_price,
                                       tokens_per_example=tuned_s.input_tokens + tuned_s.output_tokens)
    payback = _payback(settings, tuning, c_icl - c_tuned)
    trained = trained_inputs(tuned_info) if measured else frozenset()
    seen = {o.record_id for o in outcomes if inputs is not None and inputs.get(o.record_id) in trained}
    quality = _quality([o for o in outcomes if o.record_id not in seen], icl_s.backend, tuned_s.backend, seed=seed,
                       inputs=inputs) if measured else None
    verdict = _verdict(quality, measured, tuned_s.backend)
    stand_in = "" if measured else f" ({tuned_s.backend}'s bare prompt standing in for a tuned model)"
    text = (f"ICL ({icl_s.backend}) sends {icl_s.input_tokens:.0f} input tokens per request vs "
            f"{tuned_s.input_tokens:.0f} for {tuned_s.backend}{stand_in}: ${c_icl * 1000:.4f} vs "
            f"${c_tuned * 1000:.4f} per 1k requests ({basis} cost). Tuning cost: {tuning_basis}. "
            + payback["text"] + " " + _quality_text(quality, measured, verdict, tuned_s.backend)
            + (f" {tuned_s.backend} was tuned on the inputs of {len(seen)} of these records: they are left out of "
               "its quality comparison (a model scored on its training data measures recall, not quality)."
               if seen else ""))
    return GraduationAdvice(
        icl_backend=icl_s.backend, tuned_backend=tuned_s.backend, tuned_measured=measured, cost_basis=basis,
        icl_cost_per_request_usd=c_icl, tuned_cost_per_request_usd=c_tuned,
        icl_input_tokens=icl_s.input_tokens, tuned_input_tokens=tuned_s.input_tokens, tuning_cost_usd=tuning,
        tuning_cost_basis=tuning_basis, monthly_requests=settings.monthly_requests,
        monthly_saving_usd=payback["monthly"], break_even_months=payback["months"],
        break_even_requests=payback["total"], requests_per_month_for_horizon=payback["horizon"],
        quality=quality, trained_on=len(seen), verdict=verdict, text=text.strip(),
    )


def tuning_cost(settings: AdvisorSettings, info: TunedInfo | None, training_price: tuple[str, float] | None, *,
                tokens_per_example: float) -> tuple[float | None, str]:
    """The tuning cost in USD (None when an input is missing) and a sentence saying where it came from."""
    if settings.tuning_cost_usd is not None:
        return settings.tuning_cost_usd, f"${settings.tuning_cost_usd:.2f} as given"
    if info is not None and info.where == "local":
        return _local_cost(settings, info)
    if settings.tuning_usd_per_1m_tokens is not None:
        price, price_text = settings.tuning_usd_per_1m_tokens, f"${settings.tuning_usd_per_1m_tokens:.2f}/1M " \
                                                               "training tokens as given"
    elif training_price is not None:
        price, price_text = training_price[1], f"${training_price[1]:.2f}/1M training tokens (pricing table: " \
                                               f"{training_price[0]}, {TRAINING_PRICE_CAVEAT}: --tuning-price " \
                                               "gives yours)"
    else:
        model = info.base_model if info is not None and info.base_model else "the tuned model's base"
        return None, f"unknown: no training price for {model} in the pricing table (give --tuning-price)"
    if settings.training_tokens is not None:
        tokens, tokens_text = float(settings.training_tokens), f"{settings.training_tokens:,} tokens as given"
    elif settings.training_examples is not None:
        tokens = settings.training_examples * tokens_per_example
        tokens_text = (f"{settings.training_examples:,} examples × {tokens_per_example:.0f} tokens measured per "
                       f"request = {tokens:,.0f} tokens")
    else:
        return None, f"unknown: {price_text}, but the training set size was not given (--training-examples)"
    if settings.epochs is None:
        return None, f"unknown: {price_text} × {tokens_text}, but the number of epochs was not given (--epochs)"
    usd = price * tokens * settings.epochs / 1_000_000
    return usd, f"${usd:.2f} = {price_text} × {tokens_text} × {settings.epochs} epochs"


def _local_cost(settings: AdvisorSettings, info: TunedInfo) -> tuple[float | None, str]:
    seconds, source = settings.tuning_cpu_seconds, "as given"
    if seconds is None and info.tune_result and Path(info.tune_result).is_file():
        seconds, source = _measured_seconds(Path(info.tune_result))
        if seconds is None:
            return None, f"unknown: {source}; give --tuning-cpu-seconds"
    if seconds is None:
        return None, ("unknown: no measured training time for the local adapter (no tune_result.json beside it; "
                      "give --tuning-cpu-seconds)")
    if settings.cpu_usd_per_hour is None:
        return None, (f"{seconds:,.0f} CPU-seconds {source}, not priced: give --cpu-usd-per-hour "
                      "for a dollar figure")
    usd = seconds / 3600 * settings.cpu_usd_per_hour
    return usd, f"${usd:.4f} = {seconds:,.0f} CPU-seconds {source} × ${settings.cpu_usd_per_hour:.3f}/CPU-hour"


def _measured_seconds(path: Path) -> tuple[float | None, str]:
    """The training time ``tune_result.json`` records (CPU time, else wall time) and where it comes from; None and
    why when the file holds no such number (the advisor runs after every benchmark call: it must not fail then)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path.name} cannot be read ({type(exc).__name__})"
    for key, what in (("train_cpu_seconds", "measured"), ("train_seconds", "wall time measured")):
        value = result.get(key) if isinstance(result, dict) else None
        if value is not None:
            if is_real(value) and math.isfinite(value) and value >= 0:
                return float(value), f"{what} ({path.name})"
            return None, f"{path.name} holds no time in seconds ({key}: {value!r})"
    return None, f"{path.name} records no training time"


class _Payback(TypedDict):
    """What ``_payback`` works out; ``text`` says it."""

    text: str
    monthly: float | None
    months: float | None
    total: float | None
    horizon: float | None


def _payback(settings: AdvisorSettings, tuning: float | None, saving: float) -> _Payback:
    out = _Payback(text="", monthly=None, months=None, total=None, horizon=None)
    fixed = settings.tuned_monthly_fixed_usd
    volume = settings.monthly_requests
    if saving <= 0:
        out["text"] = "The tuned model is not cheaper per request: it never pays back on cost."
        return out
    monthly = None if volume is None else volume * saving - fixed
    out["monthly"] = monthly
    if tuning is None:
        per_k = f"It saves ${saving * 1000:.4f} per 1k requests"
        out["text"] = per_k + (f" (${monthly:.2f}/month at {volume:,} requests/month); "
                               if volume is not None else "; ") + "pay-back not computed without a tuning cost."
        return out
    total = tuning / saving if fixed == 0 else None
    horizon = (tuning / settings.horizon_months + fixed) / saving
    out["total"], out["horizon"] = total, horizon
    need = f"to pay back within {settings.horizon_months} months it needs >= {math.ceil(horizon):,} " \
           "requests/month"
    if volume is None or monthly is None:
        after = "" if total is None else f"It pays back after ~{total:,.0f} requests; "
        out["text"] = f"{after}{need} (no monthly volume given: --monthly-requests)."
        return out
    if monthly <= 0:
        out["text"] = f"At {volume:,} requests/month it never pays back (monthly saving ${monthly:.2f}); {need}."
        return out
    months = tuning / monthly
    if total is None:
        total = months * volume
    out["months"], out["total"] = months, total
    out["text"] = (f"At {volume:,} requests/month it saves ${monthly:.2f}/month and pays back after "
                   f"{months:.1f} months (~{total:,.0f} requests); {need}.")
    return out


def _quality(outcomes: Sequence[Outcome], icl: str, tuned: str, *, seed: int,
             inputs: Mapping[str, str] | None) -> PairedComparison | None:
    from genroute.bench.paired import compare_named, scores_by_target
    from genroute.bench.stats import MIN_PAIRED_N

    scores: Mapping[str, Mapping[str, float]] = scores_by_target(outcomes)
    if tuned not in scores or icl not in scores or not set(scores[tuned]) & set(scores[icl]):
        return None
    return compare_named(tuned, icl, scores, seed=seed, min_n=MIN_PAIRED_N, inputs=inputs)


def _verdict(quality: PairedComparison | None, measured: bool, tuned: str
             ) -> Literal["graduate", "stay with ICL", "inconclusive"]:
    if not measured or quality is None or quality.decision != "win":
        return "inconclusive"
    return "graduate" if quality.winner == tuned else "stay with ICL"


def _quality_text(quality: PairedComparison | None, measured: bool, verdict: str, tuned: str) -> str:
    if not measured:
        return ("Verdict: inconclusive — no tuned backend was measured, so its quality is unknown; tune one and "
                "benchmark it beside ICL.")
    if quality is None:
        return "Verdict: inconclusive — the tuned and ICL backends share no scored records."
    if verdict == "inconclusive":
        return f"Verdict: inconclusive — tuned vs ICL quality: {quality.verdict}."
    if verdict == "graduate":
        return f"Verdict: graduate on quality — {quality.verdict}."
    return f"Verdict: stay with ICL — {tuned} scores lower: {quality.verdict}."
