"""The promotion rule: promote a challenger when its quality difference to the incumbent has a 95 % lower bound
above ``-margin`` on at least ``min_n`` records and it is cheaper; otherwise say why not.

The decision is run again and again as traffic accumulates, so by default (``sequential=True``) the bound is the
anytime-valid 95 % confidence sequence's (``genroute.bench.sequential``), over the records in the order the store
lists them (oldest first): it holds at every look at once, so deciding at every refresh does not raise the chance of a
false promotion. ``sequential=False`` uses the fixed-horizon 95 % CI below, valid for one look planned in advance.
In shadow mode an input that repeats enters the sequence once, with its first paired record (a later copy would
revise a value already looked at); in split mode each arm's scores enter in order, and by default the k-th record
of each arm is matched with the k-th of the other (``split_sequence="matched"``: a paired sequence on the matched
differences, at 95 %), or each arm has its own sequence at 97.5 % and the two are joined by the union bound
(``"union"``); ``split_sequence_for`` chooses from the configured share (union below 10 % or above 90 %), before
any outcome is seen (``genroute.bench.sequential`` says what matching assumes beyond the union).

In shadow mode the two are compared on the same requests (paired); requests whose captured input text is the same
(up to case, runs of whitespace and Unicode composition) are one input, compared by their mean scores, and ``min_n`` counts inputs
(``genroute.bench.clusters``). In split mode each request went to one arm, so
the arms are compared unpaired: each arm's mean score over the requests routed to it (the arm a request was routed
to, even when it fell back to the other backend: what its users got), a two-sample CI of the difference, and each
arm's cost per request from its own records. For 0/1 scores both CIs are Newcombe's score intervals
(``genroute.bench.intervals``; the split one continuity-corrected); else the paired one is the bounded t interval
of the differences and the split one each arm's bounded t interval joined by square-and-add
(``genroute.bench.t_interval``: never zero wide for equal scores).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

from pydantic import ConfigDict

from genroute.bounds import is_real, is_whole
from genroute.bench.clusters import text_groups
from genroute.bench.sequential import matched_difference_cs, paired_difference_cs, unpaired_difference_cs
from genroute.bench.stats import PairedComparison, UnpairedComparison, compare_paired, compare_unpaired
from genroute.config_errors import check_list
from genroute.errors import UsageError
from genroute.outcomes.records import OutcomeRecord, Side
from genroute.outcomes.stats import has_cost, has_latency, side_cost, sides_use_cloud_equivalent, uses_cloud_equivalent
from genroute.public_model import PublicModel


def check_rule(margin: float, min_n: int, *, fields: tuple[str, str] = ("margin", "min_n")) -> None:
    """``UsageError`` unless ``margin`` is a finite number >= 0 and ``min_n`` an integer >= 1 (``fields`` names them)."""
    if not is_real(margin) or not math.isfinite(margin) or margin < 0:
        raise UsageError(f"the margin must be a finite number >= 0 (got {margin!r})", field=fields[0])
    if not is_whole(min_n) or min_n < 1:
        raise UsageError(f"the minimum number of outcomes must be an integer >= 1 (got {min_n!r})",
                         field=fields[1])


def check_amount(value: Any, *, field: str) -> None:
    """``UsageError`` naming ``field`` unless ``value`` is ``None`` or a finite number >= 0 (a cost or a price)."""
    if value is not None and (not is_real(value) or not math.isfinite(value) or value < 0):
        raise UsageError(f"must be a finite number >= 0 (got {value!r})", field=field)


class Promotion(PublicModel):
    """The decision, its statistics and the reasons."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    incumbent: str
    challenger: str
    margin: float
    n: int
    comparison: PairedComparison | UnpairedComparison
    #: paired: both scored on the same requests (shadow); unpaired: the two arms of a split.
    design: Literal["paired", "unpaired"] = "paired"
    cost_basis: str
    #: ``None``: no side of that backend recorded one (a label-only side's cost is unknown, not free).
    incumbent_cost_usd: float | None
    challenger_cost_usd: float | None
    incumbent_latency_p50_s: float | None
    challenger_latency_p50_s: float | None
    incumbent_input_tokens: float
    challenger_input_tokens: float
    promote: bool
    reasons: tuple[str, ...]
    #: Requests left out of the comparison: their input is one the compared backends were tuned on.
    tuned_on: int = 0
    #: The interval the rule read: anytime-valid (``confidence_sequence``; for split arms, of the matched arms or the
    #: union of the two arms' sequences) or fixed-horizon (``comparison.ci``).
    rule: Literal["anytime-valid", "anytime-valid matched arms", "anytime-valid union of arms",
                  "fixed-horizon"] = "fixed-horizon"
    #: The anytime-valid 95 % confidence sequence of the difference at the last record (``None``: fixed-horizon).
    confidence_sequence: tuple[float, float] | None = None

    def line(self) -> str:
        """One report line."""
        c = self.comparison
        mcnemar_p = permutation_p = None  # tests of paired samples only
        if isinstance(c, UnpairedComparison):
            sample = f"unpaired (split arms: {c.n_a} vs {c.n_b} requests)"
        else:
            sample = f"n = {self.n} paired" if c.n_records is None else \
                f"n = {self.n} distinct inputs ({c.n_records} paired requests)"
            mcnemar_p, permutation_p = c.mcnemar_p, c.permutation_p
        head = (f"decide: {self.challenger} vs {self.incumbent} on task {self.task!r}, {sample}: quality "
                f"{c.mean_a:.3f} vs {c.mean_b:.3f}, difference {c.difference:+.3f}, {self.interval_text()} "
                f"(margin {self.margin:g})"
                + (f", McNemar p = {mcnemar_p:.3g}" if mcnemar_p is not None else "")
                + (f", sign-flip p = {permutation_p:.3g}" if permutation_p is not None else "")
                + f"; {per_1k(self.challenger_cost_usd)} vs {per_1k(self.incumbent_cost_usd)} per 1k "
                  f"({self.cost_basis}); p50 {seconds(self.challenger_latency_p50_s)} vs "
                  f"{seconds(self.incumbent_latency_p50_s)}")
        if self.tuned_on:
            head += (f"; {self.tuned_on} requests left out: their input is one the model was tuned on (scored on its "
                     "training data, it measures recall)")
        return head + (" -> PROMOTE" if self.promote else " -> keep the incumbent: " + "; ".join(self.reasons))

    def interval_text(self) -> str:
        """The interval the rule read, named: the sequence's is valid at every look, the CI's at one."""
        c, cs = self.comparison, self.confidence_sequence
        ci = f"[{c.ci[0]:+.3f}, {c.ci[1]:+.3f}]"
        if cs is None:
            return f"fixed-horizon 95% CI {ci}, valid for one look"
        how = {"anytime-valid matched arms": "the k-th request of each arm matched; ",
               "anytime-valid union of arms": "union of the two arms' 97.5% sequences; "}.get(self.rule, "")
        return f"anytime-valid 95% CS [{cs[0]:+.3f}, {cs[1]:+.3f}] ({how}fixed-horizon 95% CI {ci}, valid for one look)"


def per_1k(cost_usd: float | None) -> str:
    """A cost per request as dollars per 1k requests, or "unknown" where none was recorded."""
    return "unknown" if cost_usd is None else f"${cost_usd * 1000:.4f}"


def seconds(value: float | None) -> str:
    """A latency in seconds, or "not recorded"."""
    return "not recorded" if value is None else f"{value:.3f}s"


def check_names(**names: Any) -> None:
    """``UsageError`` naming the first of ``names`` that is not a non-empty text (a number was a pydantic
    ``ValidationError`` from the result, or matched nothing)."""
    for field, value in names.items():
        if not isinstance(value, str) or not value:
            raise UsageError(f"must be a non-empty name, not {value!r:.40}", field=field)


def decide_promotion(records: Sequence[OutcomeRecord], task: str, *, incumbent: str, challenger: str,
                     margin: float = 0.05, min_n: int = 100, seed: int = 0,
                     mode: Literal["shadow", "split"] = "shadow",
                     tuned_on: Collection[str] = frozenset(), sequential: bool = True,
                     split_sequence: Literal["matched", "union"] = "matched") -> Promotion:
    """Decide on ``task``'s records (oldest first): paired where both were scored (``shadow``), or the two arms
    unpaired (``split``); on the anytime-valid sequence (``sequential``) or the fixed-horizon CI.

    ``split_sequence``: the sequence of a split's difference, chosen before any outcome is seen (the module
    docstring; ``genroute.bench.sequential.split_sequence_for(share)`` picks it from the configured share).
    ``tuned_on``: the input keys (``knowledge.examples.input_key``) the compared backends were tuned on; a request
    with one of those inputs is left out (a model scored on its training inputs measures recall) and counted.
    ``UsageError`` naming ``margin`` / ``min_n`` unless the margin is finite and >= 0 and ``min_n`` >= 1, and naming
    ``scores`` for a score outside [0, 1] under the sequential rule (its guarantee needs bounded scores).
    """
    records = check_list(records, OutcomeRecord, field="records")
    check_names(task=task, incumbent=incumbent, challenger=challenger)
    check_rule(margin, min_n)
    if not isinstance(sequential, bool):
        raise UsageError(f"must be True or False (got {sequential!r})", field="sequential")
    if mode not in ("shadow", "split"):
        raise UsageError(f"must be 'shadow' or 'split' (got {mode!r})", field="mode")
    if split_sequence not in ("matched", "union"):
        raise UsageError(f"must be 'matched' or 'union' (got {split_sequence!r})", field="split_sequence")
    task_records = [r for r in records if r.task == task]
    keys = text_groups([_text(r) for r in task_records])
    seen = [r for r, key in zip(task_records, keys, strict=True) if key in tuned_on]
    mine = [r for r, key in zip(task_records, keys, strict=True) if key not in tuned_on]
    # Counted among those the comparison would have used (the exported records themselves have no challenger side).
    left_out = len(_arms(seen, incumbent, challenger)) if mode == "split" else \
        len(_paired(seen, incumbent, challenger))
    if mode == "split":
        return _decide_split(mine, task, incumbent=incumbent, challenger=challenger, margin=margin, min_n=min_n,
                             seed=seed, sequential=split_sequence if sequential else False,
                             ).model_copy(update={"tuned_on": left_out})
    paired = _paired(mine, incumbent, challenger)
    a = [float(r.outcomes[challenger].score) for r in paired]  # type: ignore[arg-type]
    b = [float(r.outcomes[incumbent].score) for r in paired]  # type: ignore[arg-type]
    # Requests with the same captured input are one input (each compared by its mean scores): repeats of one
    # question are not independent evidence. Without captured text each request is an input of its own.
    groups = text_groups([_text(r) for r in paired])
    comparison = compare_paired(a, b, a=challenger, b=incumbent, min_n=min_n, seed=seed, groups=groups)
    cs = None
    if sequential:
        first: dict[str, int] = {}  # each input's first paired record, inputs in the order they first came
        for i, key in enumerate(groups):
            first.setdefault(key, i)
        cs = paired_difference_cs([a[i] for i in first.values()], [b[i] for i in first.values()])
    sides = {name: [r.outcomes[name] for r in paired] for name in (incumbent, challenger)}
    n = comparison.n
    what = "paired outcomes" if comparison.n_records is None else f"distinct inputs ({len(paired)} paired outcomes)"
    reasons = [f"only {n} {what}; the decision needs {min_n}"] if n < min_n else []
    return _promotion(task, incumbent, challenger, margin, n, comparison, sides, reasons,
                      cloud=uses_cloud_equivalent(paired), design="paired",
                      cs=cs).model_copy(update={"tuned_on": left_out})


def _text(record: OutcomeRecord) -> str | None:
    """The request's captured input: its labeled example's, else the one a shadow's pair kept (``capture``)."""
    kept = record.metadata.get("answered_input")
    return record.input or (kept if isinstance(kept, str) else None)


#: A split's anytime-valid sequence by name: how its CS is computed, and the rule a promotion on it names.
_SPLIT_SEQUENCES: dict[str, tuple[Callable[[Sequence[float], Sequence[float]], tuple[float, float]],
                             Literal["anytime-valid matched arms", "anytime-valid union of arms"]]] = {
    "matched": (matched_difference_cs, "anytime-valid matched arms"),
    "union": (unpaired_difference_cs, "anytime-valid union of arms"),
}


def _decide_split(records: list[OutcomeRecord], task: str, *, incumbent: str, challenger: str, margin: float,
                  min_n: int, seed: int, sequential: Literal["matched", "union", False]) -> Promotion:
    """The split arms compared unpaired: each arm's served answers, scored, over the requests routed to it."""
    arms: dict[str, list[Side]] = {incumbent: [], challenger: []}
    for arm, side in _arms(records, incumbent, challenger):
        arms[arm].append(side)
    a = [float(s.score) for s in arms[challenger]]  # type: ignore[arg-type]
    b = [float(s.score) for s in arms[incumbent]]  # type: ignore[arg-type]
    comparison = compare_unpaired(a, b, a=challenger, b=incumbent, seed=seed)
    difference_cs, rule = _SPLIT_SEQUENCES[sequential or "matched"]
    cs = difference_cs(a, b) if sequential else None
    n = min(len(a), len(b))
    reasons = [f"only {len(a)} ({challenger}) and {len(b)} ({incumbent}) scored requests per split arm; the "
               f"unpaired decision needs {min_n} in each"] if n < min_n else []
    cloud = sides_use_cloud_equivalent(arms[incumbent] + arms[challenger])
    return _promotion(task, incumbent, challenger, margin, n, comparison, arms, reasons, cloud=cloud,
                      design="unpaired", cs=cs, sequence=rule)


def _promotion(task: str, incumbent: str, challenger: str, margin: float, n: int,
               comparison: PairedComparison | UnpairedComparison, sides: dict[str, list[Side]],
               reasons: list[str], *, cloud: bool, design: Literal["paired", "unpaired"],
               cs: tuple[float, float] | None,
               sequence: Literal["anytime-valid", "anytime-valid matched arms",
                                 "anytime-valid union of arms"] = "anytime-valid") -> Promotion:
    """The rule applied to a comparison and each backend's sides (cost, latency and tokens per request)."""

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    # Over the sides that recorded them: a label-only side's missing cost is unknown, not free.
    priced = {name: [side_cost(s, cloud) for s in sides[name] if has_cost(s, cloud)] for name in sides}
    timed = {name: [s.latency_s for s in sides[name] if has_latency(s)] for name in sides}
    costs = {name: statistics.fmean(priced[name]) if priced[name] else None for name in (incumbent, challenger)}
    latency = {name: statistics.median(timed[name]) if timed[name] else None for name in (incumbent, challenger)}
    tokens = {name: mean([float(s.input_tokens) for s in sides[name]]) for name in (incumbent, challenger)}
    # Written so that a NaN bound fails closed: only a lower bound known to be above -margin passes.
    low = comparison.ci[0] if cs is None else cs[0]
    if not reasons and not low > -margin:
        what = "unpaired (split arms) " if design == "unpaired" else ""
        interval = "fixed-horizon 95% CI" if cs is None else "anytime-valid 95% CS"
        reasons.append(f"a quality loss larger than the margin is not ruled out ({what}{interval} lower bound "
                       f"{low:+.3f} <= -{margin:g})")
    challenger_cost, incumbent_cost = costs[challenger], costs[incumbent]
    if challenger_cost is None or incumbent_cost is None:
        unpriced = " and ".join(name for name in (challenger, incumbent) if costs[name] is None)
        reasons.append(f"cheaper is not shown: no {unpriced} side recorded a cost (unknown, not free)")
    elif not challenger_cost < incumbent_cost:
        reasons.append(f"not cheaper (${challenger_cost:.6g} vs ${incumbent_cost:.6g} per request)")
    return Promotion(
        task=task, incumbent=incumbent, challenger=challenger, margin=margin, n=n, comparison=comparison,
        design=design, cost_basis="cloud-equivalent" if cloud else "measured", incumbent_cost_usd=costs[incumbent],
        challenger_cost_usd=costs[challenger], incumbent_latency_p50_s=latency[incumbent],
        challenger_latency_p50_s=latency[challenger], incumbent_input_tokens=tokens[incumbent],
        challenger_input_tokens=tokens[challenger], promote=not reasons, reasons=tuple(reasons),
        rule="fixed-horizon" if cs is None else sequence, confidence_sequence=cs)


def _paired(records: list[OutcomeRecord], incumbent: str, challenger: str) -> list[OutcomeRecord]:
    """The records on which both backends were scored (shadow mode's pairs)."""
    return [r for r in records if _scored(r.outcomes.get(incumbent)) and _scored(r.outcomes.get(challenger))]


def _arms(records: list[OutcomeRecord], incumbent: str, challenger: str) -> list[tuple[str, Side]]:
    """(arm, served side) of each record routed to one of the two arms whose served answer was scored."""
    out = []
    for record in records:
        served = record.metadata.get("served")
        arm = record.metadata.get("arm", served)
        side = record.outcomes.get(str(served))
        if arm in (incumbent, challenger) and side is not None and _scored(side):
            out.append((str(arm), side))
    return out


def _scored(side: Side | None) -> bool:
    return side is not None and side.score is not None
