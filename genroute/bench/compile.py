"""Compiling a routing policy from benchmark outcomes: the ``cost_aware`` stats file, the ``learned`` model,
and how each compiled policy does on held-out records against every single backend (offline: each held-out
record's routed answer is looked up among the measured outcomes, no model is called again).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from genroute.bench.datasets import BenchRecord, split_by_input
from genroute.bench.report import Summary, markdown_row, summarize
from genroute.bench.runner import POLICY_TARGET, Outcome
from genroute.bench.setup_failures import unscored_targets
from genroute.config_errors import check_list
from genroute.errors import GenrouteError, UsageError
from genroute.policies.cost_aware_compiled import (cost_aware_policy, default_backend, drop_stale,
                                                   write_cost_aware_config, write_policy)
from genroute.policies.stats import ANY_TASK, BackendStats, BenchStats
from genroute.public_model import PublicModel
from genroute.types import GenerateRequest

if TYPE_CHECKING:
    from genroute.policies.cost_weight import CostWeightRule


class HeldOutRow(PublicModel):
    """One line of the held-out comparison: a single backend or a compiled policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    quality: float
    quality_ci: tuple[float, float] = Field(default=(0.0, 0.0),
                                           description="95 % CI of the quality (`stats.quality_ci`).")
    cost_per_request_usd: float
    latency_p50_s: float | None = Field(description="None: no pick recorded a latency (a matrix without latency_s).")
    picks: dict[str, int] = Field(default_factory=dict, description="Backends a policy routed to.")
    scores: dict[str, float] = Field(default_factory=dict, description="Score per held-out record id, for "
                                                                       "paired comparisons.")
    costs: dict[str, float] = Field(default_factory=dict, description="Cost per held-out record id, for paired "
                                                                      "comparisons.")


class CompileReport(PublicModel):
    """What compiling wrote and how the compiled policies did on the held-out split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stats_path: str
    cost_basis: str = Field(default="measured", description="measured, or cloud-equivalent for free local models.")
    learned_model_path: str | None = None
    learned_note: str | None = None
    learned_cost_weight: float | None = Field(default=None, description="Cost weight of the held-out model.")
    learned_cost_weight_choice: dict[str, Any] | None = Field(
        default=None, description="How the rule chose it (`CostWeightChoice` fields), when a rule did.")
    min_quality: float | None = Field(default=None, description="The floor the caller set for every task.")
    floors: dict[str, float] = Field(default_factory=dict, description="cost_aware quality floor per task.")
    policy_files: dict[str, str] = Field(
        default_factory=dict, description="Router policy configs of the compiled policies, by kind "
                                          "(`cost_aware.json`, `learned.json`), compiled from every record.")
    n_train: int
    n_held_out: int
    rows: tuple[HeldOutRow, ...]
    left_out: dict[str, str] = Field(default_factory=dict, description="Backends with no scored row, left out of "
                                                                       "the compiled policies: why, by name.")

    def markdown(self) -> str:
        """The held-out comparison as Markdown."""
        floors = ", ".join(f"{'(no task)' if t == ANY_TASK else t} {f:.3f}" for t, f in sorted(self.floors.items()))
        # The files are compiled from every record, the policies judged here from the training split only.
        files = f"stats file `{self.stats_path}` is" if not self.learned_model_path else \
            f"stats file `{self.stats_path}` and learned model `{self.learned_model_path}` are"
        lines = [f"Held-out split: {self.n_held_out} records, routed by policies compiled from the {self.n_train} "
                 f"others; cost_aware quality floor per task: {floors}; {self.cost_basis} cost. The {files} "
                 "compiled from every record, the held-out ones included.",
                 # A free local model's cost is its cloud equivalent: the backend table's $/request reads $0 there.
                 "", markdown_row(["router", "n", "quality [95 % CI]",
                                   "cloud-eq $/request" if self.cost_basis == "cloud-equivalent" else "$/request",
                                   "p50 s", "routed to"]),
                 "|---|---|---|---|---|---|"]
        for row in self.rows:
            picks = ", ".join(f"{b}: {n}" for b, n in sorted(row.picks.items())) or "–"
            low, high = row.quality_ci
            latency = "–" if row.latency_p50_s is None else f"{row.latency_p50_s:.3f}"
            lines.append(markdown_row([row.name, len(row.scores), f"{row.quality:.3f} [{low:.3f}, {high:.3f}]",
                                       f"${row.cost_per_request_usd:.6f}", latency, picks]))
        if self.left_out:
            lines += ["", "Left out of the compiled policies (no scored row: they never answered): "
                      + "; ".join(f"{b} ({why})" for b, why in sorted(self.left_out.items()))]
        if self.learned_note:
            lines += ["", self.learned_note]
        if self.policy_files:
            # Without them a router given `stats_path` alone has cost_aware's floor of 0: the cheapest backend.
            files = " and ".join(f"`{path}`" for path in self.policy_files.values())
            lines += ["", f"The compiled policies as router configs (on every record, as the files above): {files}; "
                          "give one to a router as its `policy` section (it holds each task's floor and the "
                          "default: `stats_path` alone leaves cost_aware's floor at 0, the cheapest backend)."]
        return "\n".join(lines) + "\n"


def stats_from(outcomes: Sequence[Outcome], *, source: str | None = None, seed: int = 0,
               use_cloud_equivalent: bool = False, n_boot: int = 2000) -> BenchStats:
    """``BenchStats`` per task and backend (``@policy`` rows left out); records without a task go under ``*``."""
    outcomes = check_list(outcomes, Outcome, field="outcomes")
    by_task: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if o.backend != POLICY_TARGET:
            by_task.setdefault(o.task or ANY_TASK, []).append(o)
    return stats_of({task: summarize(rows, seed=seed, n_boot=n_boot) for task, rows in by_task.items()},
                    source=source, use_cloud_equivalent=use_cloud_equivalent)


def bench_stats(outcomes: Sequence[Outcome], records: Sequence[BenchRecord], *, source: str | None = None,
                seed: int = 0, use_cloud_equivalent: bool = False) -> BenchStats:
    """What a benchmark writes as ``stats.json``, whether or not it compiles a policy: ``stats_from`` the backends'
    outcomes (``@policy`` left out) on every record, listing the input keys of the records they came from (a later
    ``genroute bench --policy`` on them says its policy was compiled there)."""
    from genroute.knowledge.examples import input_keys

    table = _table(outcomes)
    stats = stats_from([o for o in outcomes if o.record_id in table], source=source, seed=seed,
                       use_cloud_equivalent=use_cloud_equivalent)
    return stats.with_input_keys(input_keys(r.input for r in records if r.id in table))


def cloud_basis(outcomes: Sequence[Outcome]) -> bool:
    """Whether to price by the cloud-equivalent cost: every answered request cost 0 (a local model) and has one."""
    return all(o.cost_usd == 0 and o.cloud_equivalent_cost_usd is not None for o in outcomes if o.ok)


def stats_of(by_task: Mapping[str, Sequence[Summary]], *, source: str | None = None,
             use_cloud_equivalent: bool = False) -> BenchStats:
    """``BenchStats`` from each task's summaries (one per backend)."""
    tasks: dict[str, dict[str, BackendStats]] = {}
    for task, summaries in by_task.items():
        tasks[task] = {}
        for s in summaries:
            cost = s.cost_per_request_usd
            if use_cloud_equivalent and s.cloud_equivalent_per_request_usd is not None:
                cost = s.cloud_equivalent_per_request_usd
            tasks[task][s.backend] = BackendStats(
                n=s.n, quality=s.quality, quality_ci=s.quality_ci, metric=s.metric,
                latency_p50_s=s.latency_p50_s, latency_p95_s=s.latency_p95_s,
                cost_per_request_usd=cost, failures=s.failure_count, **_extra_fields(s))
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return BenchStats(created_at=created, source=source, tasks=tasks)


def _extra_fields(s: Any) -> dict[str, Any]:
    """p99, TTFT and token means, when this version of ``BackendStats`` has those fields."""
    extra = {"latency_p99_s": s.latency_p99_s, "time_to_first_token_p50_s": s.ttft_p50_s,
             "input_tokens_mean": s.input_tokens, "output_tokens_mean": s.output_tokens}
    return {k: v for k, v in extra.items() if k in BackendStats.model_fields}


def _table(outcomes: Sequence[Outcome]) -> dict[str, dict[str, Outcome]]:
    table: dict[str, dict[str, Outcome]] = {}
    for o in outcomes:
        if o.backend != POLICY_TARGET:
            table.setdefault(o.record_id, {})[o.backend] = o
    return table


def cost_of(outcome: Outcome, cloud: bool) -> float:
    """The outcome's cost: measured, or what the same tokens cost on the reference cloud model."""
    return (outcome.cloud_equivalent_cost_usd or 0.0) if cloud else outcome.cost_usd


def _row(name: str, picked: Sequence[Outcome], cloud: bool) -> HeldOutRow:
    import numpy as np

    from genroute.bench.stats import quality_ci

    if not picked:
        return HeldOutRow(name=name, quality=0.0, cost_per_request_usd=0.0, latency_p50_s=0.0)
    scores = [o.score if o.ok else 0.0 for o in picked]
    return HeldOutRow(
        name=name, quality=float(np.mean(scores)), quality_ci=quality_ci(scores),
        cost_per_request_usd=float(np.mean([cost_of(o, cloud) for o in picked])),
        latency_p50_s=float(np.median(timed)) if (timed := [o.latency_s for o in picked if o.latency_s is not None])
        else None,
        picks=dict(Counter(o.backend for o in picked)),
        scores={o.record_id: o.score if o.ok else 0.0 for o in picked},
        costs={o.record_id: cost_of(o, cloud) for o in picked},
    )


def _always(backend: str) -> Callable[[BenchRecord], str]:
    """A router that sends every record to ``backend``."""
    return lambda _record: backend


def evaluate(name: str, choose: Callable[[BenchRecord], str], records: Sequence[BenchRecord],
             table: Mapping[str, Mapping[str, Outcome]], *, cloud: bool = False) -> HeldOutRow:
    """Quality, cost and latency of routing ``records`` with ``choose``, from the measured outcomes."""
    picked = []
    for record in records:
        by_backend = table.get(record.id, {})
        backend = choose(record)
        if backend not in by_backend:
            raise UsageError(f"policy {name} chose {backend!r}, which was not benchmarked", field="backends")
        picked.append(by_backend[backend])
    return _row(name, picked, cloud)


def compile_policy(
    outcomes: Sequence[Outcome],
    records: Sequence[BenchRecord],
    out_dir: str | Path,
    *,
    min_quality: float | None = None,
    relative_floor: float = 0.95,
    holdout: float = 0.3,
    seed: int = 0,
    source: str | None = None,
    use_cloud_equivalent: bool | None = None,
    learned: bool = True,
    embedder: Any = None,
    cost_weight_rule: CostWeightRule | str | Mapping[str, Any] | None = "resolved",
) -> CompileReport:
    """Write ``stats.json`` (all records) and ``learned.npz``; compare compiled policies on a held-out split
    (seeded, by input text: records sharing an input stay on one side; ``datasets.split_by_input``).

    The cost_aware floor of each task defaults to ``relative_floor`` x the best backend's quality on that
    task's training records (one global floor would hold an easy task to a hard task's level, or the reverse).
    ``learned.npz`` is trained on the training split for the held-out comparison, then again on every record
    for the file written.
    ``use_cloud_equivalent`` (default: when every measured cost is zero, i.e. a local model) prices by the
    cloud-equivalent cost, so fewer tokens still count as cheaper.
    ``cost_weight_rule`` chooses the learned model's cost weight by cross-validation on the records it is
    trained on (``"resolved"``, ``"one_se"``, ``"best"``, a ``CostWeightRule`` or its fields; ``None``: the fixed
    0.1 of ``train``); see ``genroute.policies.cost_weight``.
    """
    from genroute.policies.cost_weight import as_rule

    rule = as_rule(cost_weight_rule)
    outcomes = check_list(outcomes, Outcome, field="outcomes")
    records = check_list(records, BenchRecord, field="records")
    out = Path(out_dir)
    # A backend with no scored row never answered (a set-up error): a policy must never route to it.
    left_out = {u.backend: f"{u.failed} rows failed with {u.error_type}"
                for u in unscored_targets(outcomes, len(records)) if u.backend != POLICY_TARGET}
    outcomes = [o for o in outcomes if o.backend not in left_out]
    table = _table(outcomes)
    backends = sorted({b for by in table.values() for b in by})
    scored = [r for r in records if r.id in table and all(b in table[r.id] for b in backends)]
    if len(backends) < 1 or len(scored) < 2:
        without = f" (no scored row: {', '.join(sorted(left_out))})" if left_out else ""
        raise UsageError(f"compiling needs outcomes of at least one backend on two or more records{without}",
                         field="compile")
    cloud = cloud_basis(outcomes) if use_cloud_equivalent is None else use_cloud_equivalent
    # Split by input text: a repeated question on both sides would score the learned model on what it trained on.
    train_ids, held_ids = split_by_input(scored, holdout=holdout, seed=seed)
    train_set, held = set(train_ids), set(held_ids)
    train_rows = [o for o in outcomes if o.record_id in train_set]
    held_records = [r for r in scored if r.id in held]

    full = bench_stats(outcomes, records, source=source, seed=seed, use_cloud_equivalent=cloud)
    stats_path = full.save(out / "stats.json")
    train_stats = stats_from(train_rows, source=source, seed=seed, use_cloud_equivalent=cloud)

    policy, floors = cost_aware_policy(train_stats, backends, min_quality=min_quality,
                                       relative_floor=relative_floor)
    default = policy.config.default
    context = policy_context(backends, train_stats)

    def cost_aware(record: BenchRecord) -> str:
        decision = policy.decide(GenerateRequest(input=record.input, task=record.task), context)
        return decision.rungs[0].backend

    from genroute.knowledge.examples import input_key

    rows = [evaluate(b, _always(b), held_records, table, cloud=cloud) for b in backends]
    rows.append(evaluate("compiled cost_aware", cost_aware, held_records, table, cloud=cloud))
    learned_path, note, weight = None, None, None
    trainable = len({input_key(r.input) for r in scored if r.id in train_set})
    if learned and len(backends) > 1 and trainable < 2:  # learned.train's own message names its internal split
        note = (f"learned policy not trained: the training split (what holdout {holdout:g}, --holdout, leaves) has "
                f"{trainable} distinct input(s) in {len(train_set)} record(s), and the learned policy needs two or "
                "more (it checks itself on a share of them): a smaller --holdout, or more records with different "
                "inputs.")
    elif learned and len(backends) > 1:
        learned_path, note, row, weight = _learned(outcomes, records, train_set, held_records, table, out, default,
                                           seed=seed, embedder=embedder, cloud=cloud, rule=rule)
        if row is not None:
            rows.append(row)
    rows += _baseline_rows(scored, train_set, held_records, table, backends, cloud=cloud, seed=seed)
    files = {"cost_aware": str(write_cost_aware_config(out / "cost_aware.json", stats_path, backends,
                                                       min_quality=min_quality, relative_floor=relative_floor))}
    if learned_path is not None:
        full_default = default_backend(full, backends)
        files["learned"] = str(write_policy(out / "learned.json", {
            "kind": "learned", "model_path": str(Path(learned_path).resolve()), "default": full_default}))
    else:  # an earlier run's learned policy beside this run's stats would route as the earlier records said
        drop_stale(out / "learned.json", out / "learned.npz")
    return CompileReport(stats_path=str(stats_path), cost_basis="cloud-equivalent" if cloud else "measured",
                         policy_files=files,
                         learned_model_path=learned_path, learned_note=note,
                         learned_cost_weight=weight[0] if weight else None,
                         learned_cost_weight_choice=weight[1] if weight else None,
                         min_quality=min_quality, floors=floors, n_train=len(train_ids),
                         n_held_out=len(held_ids), rows=tuple(rows), left_out=left_out)


def _baseline_rows(scored: Sequence[BenchRecord], train_set: set[str], held_records: Sequence[BenchRecord],
                   table: Mapping[str, Mapping[str, Outcome]], backends: Sequence[str], *, cloud: bool, seed: int
                   ) -> list[HeldOutRow]:
    """Random, the best single and the per-task best backend (both chosen on the training records), and the
    cost-quality oracle, on the held-out records (the single backends have their rows already)."""
    from genroute.bench.baselines import baselines
    from genroute.bench.outcomes import matrix_from_table

    train = matrix_from_table([r for r in scored if r.id in train_set], table, backends, cloud=cloud)
    held = matrix_from_table(held_records, table, backends, cloud=cloud)
    rows = []
    for name, choice in baselines(train, held, seed=seed).items():
        if not name.startswith("single "):
            picked = [table[r.id][backends[int(c)]] for r, c in zip(held_records, choice, strict=True)]
            rows.append(_row(name, picked, cloud))
    return rows


def _learned(outcomes: Sequence[Outcome], records: Sequence[BenchRecord], train_set: set[str],
             held_records: Sequence[BenchRecord], table: Mapping[str, Mapping[str, Outcome]], out: Path,
             default: str, *, seed: int, embedder: Any, cloud: bool, rule: CostWeightRule | None = None
             ) -> tuple[str | None, str | None, HeldOutRow | None, tuple[float, dict[str, Any] | None] | None]:
    """Train ``learned`` on the training split, evaluate it on the held-out one, then train the shipped
    ``learned.npz`` on every record (the held-out figures describe a model that never saw those records)."""
    try:
        from genroute.policies.learned import LearnedConfig, LearnedPolicy, train
    except ImportError as exc:
        return None, f"learned policy not trained: {exc}", None, None
    inputs = {r.id: r.input for r in records}
    rows = [{"input": inputs[o.record_id], "backend": o.backend, "score": o.score if o.ok else 0.0,
             "cost_usd": cost_of(o, cloud), "record_id": o.record_id, "task": o.task}
            for o in outcomes if o.backend != POLICY_TARGET and o.record_id in inputs]
    path = out / "learned.npz"
    context = policy_context(sorted({b for by in table.values() for b in by}))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            held_model = Path(tmp) / "learned-train.npz"
            report = train([r for r in rows if r["record_id"] in train_set], held_model, embedder=embedder,
                           seed=seed, cost_weight_rule=rule)
            policy = LearnedPolicy(LearnedConfig(model_path=str(held_model), default=default), embedder=embedder)

            def choose(record: BenchRecord) -> str:
                return policy.decide(GenerateRequest(input=record.input, task=record.task), context).rungs[0].backend

            row = evaluate("compiled learned", choose, held_records, table, cloud=cloud)
        # test_share=0: every record trains the shipped file (the held-out model above was its check).
        shipped = train(rows, path, embedder=embedder, seed=seed, test_share=0.0, cost_weight_rule=rule)
    except GenrouteError as exc:  # e.g. too few training records: report it, keep the rest of the compile
        return None, f"learned policy not trained: {exc}", None, None
    from genroute.bench.intervals import share_claim

    accuracy = share_claim(report.routing_accuracy or 0.0, report.n_test, baseline=report.majority_routing_accuracy,
                           baseline_name="always the most common best backend")
    note = (f"learned ({report.method}): routing accuracy {accuracy} on its own "
            f"{report.n_test}-record validation split of the training records; `{path.name}` was then "
            f"trained on all {shipped.n_train} records.")
    for what, trained in (("held-out model", report), (f"`{path.name}`", shipped)):
        choice = trained.cost_weight_choice
        note += (f" {what}: {choice.summary()}." if choice is not None
                 else f" {what}: fixed cost weight {trained.cost_weight:g}.")
    choice = report.cost_weight_choice
    return str(path), note, row, (report.cost_weight, choice.model_dump() if choice is not None else None)


def policy_context(backends: Sequence[str], stats: BenchStats | None = None) -> Any:
    """A policy context whose catalogue holds the benchmarked backends."""
    from genroute.policies.base import BackendInfo, PolicyContext

    return PolicyContext(catalogue={b: BackendInfo(name=b, kind="bench") for b in backends}, stats=stats)
