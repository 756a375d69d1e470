"""What ``compile_outcomes`` reports and writes: the report model, its Markdown, the cost–quality curve PNG,
the compiled files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from genroute.bench import matrix_routers as mr
from genroute.bench.clusters import sample_size
from genroute.bench.report import markdown_row
from genroute.policies.cost_weight import CostWeightChoice
from genroute.public_model import PublicModel

if TYPE_CHECKING:
    from genroute.bench.outcomes import OutcomeMatrix


class CurveSummary(PublicModel):
    """A router's cost–quality curve on the evaluation records and the field's metrics on it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    knob: str
    points: list[tuple[float, float, float]]  # (knob, cost per request, quality)
    aiq: float
    apgr: float | None
    cost_saved_at_95: float | None
    cost_at_best_single_quality: float | None
    quality_at_best_single_cost: float
    quality_at_per_task_best_cost: float


class Comparison(PublicModel):
    """A router against a baseline on the same records: paired quality difference and cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    router: str
    baseline: str
    n: int = Field(description="Pairs compared: distinct inputs when some input repeats.")
    n_records: int | None = Field(default=None, description="Records behind the n inputs when some input repeats.")
    quality_difference: float
    ci: tuple[float, float] = Field(description="The comparison's own 95 % CI (not adjusted for the family).")
    p_value: float | None = Field(default=None, description="The exact test's p (McNemar's or the sign-flip "
                                                            "test's), unadjusted.")
    adjusted_p: float | None = Field(default=None, description="That p adjusted over the report's comparisons.")
    adjustment: str | None = Field(default=None, description="The correction: holm (None: no verdict was given).")
    family_size: int | None = Field(default=None, description="m: the distinct comparisons the correction is "
                                                                    "over (a repeated one counts once).")
    repeats: str | None = Field(default=None, description="The earlier row (\"router vs baseline\") whose "
                                "comparison this one repeats (the same two score vectors on the same records), "
                                "counted once in the family and given that row's adjusted p; None when it states its "
                                "own (``PairedComparison.repeats``).")
    decision: str | None = Field(default=None, description="win, no_difference or no_verdict (after the "
                                                           "correction).")
    verdict: str
    cost_ratio: float | None
    cost_difference_ci: tuple[float, float] = Field(description="95 % CI of the mean cost difference (USD a "
                                                                "request; per distinct input, inputs resampled, when "
                                                                "some input repeats).")


class OfflineReport(PublicModel):
    """Everything ``compile_outcomes`` measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    evaluated_on: str
    n_train: int
    n_eval: int
    dropped: int
    candidates: list[str]
    cost_basis: str
    rows: list[mr.RouterRow]
    curves: list[CurveSummary]
    comparisons: list[Comparison]
    methods: dict[str, list[dict[str, Any]]]
    #: learned router -> rule -> how the rule chose its cost weight (``CostWeightChoice`` fields)
    cost_weights: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    routes: str = ""  # the compiled semantic routes, as Markdown (empty: none compiled)
    #: What the evaluation holds that the training does not, and what was done with it (one line each).
    notes: list[str] = Field(default_factory=list)
    seconds: float
    files: dict[str, str]

    def markdown(self) -> str:
        """The comparison as Markdown (rows, curve metrics, paired differences)."""
        return markdown(self)


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value * 1000:.4f}"


def _share(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1%}"


def rows_table(report: OfflineReport) -> str:
    """Every router and baseline: quality with its 95 % CI, cost, n, candidates routed to."""
    lines = ["| router | quality [95 % CI] | $ per 1k requests | n | knob | routed to |", "|---|---|---|---|---|---|"]
    for r in report.rows:
        picks = ", ".join(f"{c}: {n}" for c, n in sorted(r.picks.items(), key=lambda kv: -kv[1]))
        knob = "–" if r.knob is None else f"{r.knob:.3g}"
        quality = f"{r.quality:.3f} [{r.quality_ci[0]:.3f}, {r.quality_ci[1]:.3f}]"
        routed = r.name.startswith(("learned", "semantic", "cost_aware", "oracle", "per-task", "random"))
        lines.append(markdown_row([r.name, quality, _money(r.cost_per_request_usd), r.n, knob,
                                   picks if routed else "–"]))
    return "\n".join(lines) + "\n"


def curves_table(report: OfflineReport) -> str:
    """Curve metrics (point estimates): AIQ, APGR, cost saved at 95 % of the best single, readings at the best
    single."""
    best = next(r for r in report.rows if r.name == "best single (train)")
    per_task = next(r for r in report.rows if r.name == "per-task best (train)")
    lines = [f"Best single candidate (chosen on the training records): quality {best.quality:.3f} at "
             f"{_money(best.cost_per_request_usd)} per 1k requests; per-task best: {per_task.quality:.3f} at "
             f"{_money(per_task.cost_per_request_usd)}. Curve readings interpolate the hull on the evaluation "
             "records (a mix of two operating points), each taking the operating points that serve it best on those "
             "same records: chosen on the data they are quoted on, they are optimistic summaries of the curve (as "
             "RouterBench and RouteLLM report them), not what a knob set in advance reaches; the rows above are "
             f"single operating points chosen on the training records. The readings are point estimates on the {report.n_eval} evaluation records, "
             "with no CI (the paired differences below have one).", "",
             "| router | knob swept | AIQ | APGR (cheapest → best) | cost saved at ≥ 95 % of best quality | "
             "cost at best-single quality | quality at best-single cost | quality at per-task-best cost |",
             "|---|---|---|---|---|---|---|---|"]
    for c in report.curves:
        at_best = "not reached" if c.cost_at_best_single_quality is None else \
            f"{_money(c.cost_at_best_single_quality)} ({c.cost_at_best_single_quality / best.cost_per_request_usd:.1%})" \
            if best.cost_per_request_usd > 0 else _money(c.cost_at_best_single_quality)
        apgr = "–" if c.apgr is None else f"{c.apgr:.3f}"
        lines.append(markdown_row([c.name, c.knob, f"{c.aiq:.3f}", apgr, _share(c.cost_saved_at_95), at_best,
                                   f"{c.quality_at_best_single_cost:.3f}", f"{c.quality_at_per_task_best_cost:.3f}"]))
    return "\n".join(lines) + "\n"


def comparisons_table(report: OfflineReport) -> str:
    """Paired differences on the same records, their verdicts corrected over the table (Holm)."""
    m = next((c.family_size for c in report.comparisons if c.family_size is not None), 0)
    lines = [f"Paired quality differences with each comparison's own 95 % CI (unadjusted). The verdicts are "
             f"corrected for the m = {m} comparisons below that get one (a comparison two rows repeat, the same two "
             "routers' scores on the same records, counts once): Holm's step-down correction of the exact "
             "tests' p-values (McNemar's for 0/1 scores, else the sign-flip test), so the chance of any false win "
             "among them is at most 5 %; a win needs the CI to exclude 0 and the Holm-adjusted p below 0.05.", "",
             "| router | vs | n | quality difference [95 % CI, unadjusted] | Holm-adjusted p (m) | cost ratio | "
             "verdict |", "|---|---|---|---|---|---|---|"]
    for c in report.comparisons:
        ratio = "–" if c.cost_ratio is None else f"{c.cost_ratio:.1%}"
        difference = f"{c.quality_difference:+.3f} [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}]"
        holm = "–" if c.adjusted_p is None else f"{c.adjusted_p:.3g} ({c.family_size})"
        lines.append(markdown_row([c.router, c.baseline, sample_size(c.n, c.n_records), difference, holm, ratio,
                                   c.verdict]))
    return "\n".join(lines) + "\n"


def methods_table(report: OfflineReport) -> str:
    """The estimators compared for the learned router (validation AIQ on the training records)."""
    lines = ["| router | estimator | cross-validated AIQ |", "|---|---|---|"]
    for name, results in report.methods.items():
        for r in results:
            mark = " (chosen)" if r.get("chosen") else ""
            aiq = "not applicable: " + r.get("note", "") if r["validation_aiq"] is None else f"{r['validation_aiq']:.3f}"
            lines.append(markdown_row([name, f"{r['spec']}{mark}", aiq]))
    return "\n".join(lines) + "\n"


def markdown(report: OfflineReport) -> str:
    """The whole comparison as Markdown."""
    head = (f"Compiled on {report.n_train} records of {report.source}; evaluated on {report.n_eval} records: "
            f"{report.evaluated_on}. Candidates: {len(report.candidates)}. {report.cost_basis}."
            + (f" {report.dropped} record(s) lacking some candidate's outcome were left out." if report.dropped
               else ""))
    parts = [head, "", *[f"- {note}" for note in report.notes], *([""] if report.notes else []), rows_table(report),
             curves_table(report), comparisons_table(report)]
    if report.methods:
        parts += ["Learned router estimators and semantic route cluster counts (chosen by 5-fold cross-validation "
                  "on the training records; AIQ of the out-of-fold routing):", "", methods_table(report)]
    if report.cost_weights:
        parts += ["Cost weight by each rule, from the chosen estimator's out-of-fold routing (the model files carry "
                  "the asked-for rule's):", ""]
        parts += [f"- {name}: " + "; ".join(CostWeightChoice.model_validate(c).summary() for c in by.values())
                  for name, by in report.cost_weights.items()] + [""]
    if report.routes:
        parts += ["Compiled semantic routes:", "", report.routes]
    return "\n".join(parts)


def curve_png(report: OfflineReport, path: Path) -> Path | None:
    """Cost–quality curves of the swept routers, the single candidates and the baselines as points."""
    try:
        import matplotlib
    except ImportError:  # the bench extra brings matplotlib; the tables do not need it
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for curve in report.curves:
        pts = sorted((c * 1000, q) for _, c, q in curve.points)
        ax.plot(*zip(*pts, strict=True), marker=".", label=f"{curve.name} (AIQ {curve.aiq:.3f})")
    for r in report.rows:
        if r.name.startswith("single "):
            ax.scatter([r.cost_per_request_usd * 1000], [r.quality], color="gray", zorder=3)
            ax.annotate(r.name.removeprefix("single "), (r.cost_per_request_usd * 1000, r.quality), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
        elif r.name in ("random", "per-task best (train)", "oracle", "best single (train)"):
            ax.scatter([r.cost_per_request_usd * 1000], [r.quality], marker="*", s=120, zorder=4, label=r.name)
    ax.set_xlabel("$ per 1k requests")
    ax.set_ylabel("quality (mean score)")
    ax.set_title(f"Cost–quality on {report.n_eval} evaluation records")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from genroute.cache import atomic_write_via

    # matplotlib opens its file following links; a chart the user chmod'ed keeps its mode, as write_text kept it
    atomic_write_via(path, lambda tmp: fig.savefig(tmp, dpi=100), same_mode=True)
    plt.close(fig)
    return path


#: Rows shown in the HTML report's per-record view: the compiled policies' main operating points and the rules
#: chosen on the training records (the other operating points are in the tables).
PER_RECORD = ("best single (train)", "per-task best (train)", "cost_aware (task label)",
              "learned (text + task) at best-single quality", "learned (text only) at best-single quality",
              "semantic routes (text only) at best-single quality")


def write_outputs(report: OfflineReport, train: OutcomeMatrix, held: OutcomeMatrix, models: Mapping[str, Any],
                  out: Path, *, title: str | None = None, choices: Mapping[str, Any] | None = None
                  ) -> dict[str, str]:
    """``stats.json`` and the learned models (from the training records), ``curve.png``, ``report.md/html``
    (whose per-record view shows, for the ``choices`` of ``PER_RECORD``, where each routed every record)."""
    from genroute.bench.html_report import routing_view

    from genroute.bench.matrix_stats import matrix_stats
    from genroute.bench.report import write_report

    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = {"stats": str(matrix_stats(train, source=report.source).save(out / "stats.json"))}
    for name, model in models.items():
        slug = "learned-task" if "task" in name else "learned-text"
        files[slug] = str(model.save(out / f"{slug}.npz"))
    png = curve_png(report, out / "curve.png")
    sections = [("Router evaluation on the outcome matrix", markdown(report))]
    if png is not None:
        files["curve"] = str(png)
        sections.append(("Cost–quality curve", f"![cost-quality curve]({png.name})"))
    given = choices or {}
    shown = {name: given[name] for name in PER_RECORD if name in given}
    view = ("Per record: each candidate's score and where each compiled policy routed it", routing_view(held, shown))
    written = write_report(out, candidate_summaries(held), title=title or "genroute bench --outcomes",
                           sections=sections, per_record=view)
    files.update({k: str(v) for k, v in written.items()})
    files["compiled"] = str(out / "compiled.json")
    return files


def candidate_summaries(held: OutcomeMatrix) -> list[Any]:
    """The report's main table: each candidate on the evaluation records."""
    from genroute.bench.matrix_stats import matrix_summaries

    return matrix_summaries(held)
