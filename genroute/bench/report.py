"""Summaries per target (quality with a 95 % CI, latency percentiles, tokens, cost, failures) and reports."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field

from genroute.bench.md_table import markdown_row as markdown_row  # re-exported: its callers import it from here
from genroute.bench.per_label import LabelBreakdown
from genroute.bench.runner import POLICY_TARGET, Outcome
from genroute.bench.stats import bootstrap_ci, quality_ci  # noqa: F401 - bootstrap_ci is re-exported here
from genroute.config_errors import check_list
from genroute.jsonl import output_dir
from genroute.public_model import PublicModel

if TYPE_CHECKING:
    from genroute.bench.datasets import BenchRecord


class Summary(PublicModel):
    """What one target measured over a set of records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    n: int
    metric: str
    quality: float = Field(description="Mean score; failed requests score 0.")
    quality_ci: tuple[float, float]
    #: ``None``: no answer recorded a latency (an outcome matrix without ``latency_s``).
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    ttft_p50_s: float | None = None
    input_tokens: float = Field(description="Mean per answered request.")
    output_tokens: float = Field(description="Mean per answered request, as billed: thought tokens included.")
    cached_input_tokens: float
    audio_input_tokens: float = Field(default=0.0, description="Mean per answered request: the audio part of the "
                                      "input, priced at the model's audio rate.")
    cost_per_request_usd: float = Field(description="Mean over all requests (failures cost what they cost).")
    cloud_equivalent_per_request_usd: float | None = None
    judge_cost_usd: float = Field(default=0.0, description="Total spent on the judge, apart from the cost above.")
    failures: dict[str, int] = Field(default_factory=dict)
    judge_failures: dict[str, int] = Field(default_factory=dict, description="Why the judge failed (JudgeError).")
    labels: LabelBreakdown | None = Field(default=None, description="Recall per gold label, for a run scored by a "
                                          "label scorer (``genroute.bench.per_label``).")

    @property
    def cost_per_1k_usd(self) -> float:
        """Cost of 1,000 requests."""
        return self.cost_per_request_usd * 1000

    @property
    def failure_count(self) -> int:
        """Requests that ended in an error."""
        return sum(self.failures.values())


def summarize(outcomes: Sequence[Outcome], *, seed: int = 0, n_boot: int = 2000) -> list[Summary]:
    """One summary per target, in the order targets first appear."""
    outcomes = check_list(outcomes, Outcome, field="outcomes")
    by_target: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_target.setdefault(outcome.backend, []).append(outcome)
    summaries = []
    for target, rows in by_target.items():
        # Latency and tokens of every answer the backend gave, including answers the scorer then failed on.
        ok = [r for r in rows if r.answered]
        summaries.append(summary_of(
            target, rows[0].scorer, [r.score if r.ok else 0.0 for r in rows], [r.cost_usd for r in rows],
            # A latency the outcome never recorded (a matrix without latency_s) is unknown, not 0 s.
            [r.latency_s for r in ok if r.latency_s is not None], seed=seed, n_boot=n_boot,
            ttfts=[r.ttft_s for r in ok if r.ttft_s is not None],
            # Output as billed: a thinking model's thoughts are output tokens in its cost, and in its column.
            tokens=([r.input_tokens for r in ok], [r.output_tokens + r.thinking_tokens for r in ok],
                    [r.cached_input_tokens for r in ok], [r.audio_input_tokens for r in ok]),
            clouds=[r.cloud_equivalent_cost_usd for r in rows if r.cloud_equivalent_cost_usd is not None],
            judge_cost_usd=sum(r.judge_cost_usd for r in rows),
            failures=dict(Counter(r.error_type or "error" for r in rows if not r.ok)),
            judge_failures=dict(Counter(r.judge_error_type for r in rows if r.judge_error_type))))
    return summaries


def summary_of(target: str, metric: str, scores: Sequence[float], costs: Sequence[float],
               latencies: Sequence[float], *, seed: int = 0, n_boot: int = 2000, ttfts: Sequence[float] = (),
               tokens: tuple[Sequence[float], ...] = (), clouds: Sequence[float] = (), judge_cost_usd: float = 0.0,
               failures: dict[str, int] | None = None, judge_failures: dict[str, int] | None = None) -> Summary:
    """A target's summary from its values: every request's score (failures 0) and cost, the latencies and TTFTs
    answers recorded, the answered requests' input, output, cached and audio token counts (``tokens``, empty: 0),
    the cloud-equivalent costs given. ``summarize`` gives it an outcome list's; an outcome matrix its columns
    (``genroute.bench.matrix_stats``), so that a 20,000-record matrix is not 120,000 ``Outcome`` objects."""
    import numpy as np

    def mean(values: Sequence[float]) -> float:
        return float(np.mean(values)) if len(values) else 0.0

    spread: tuple[float | None, ...] = (None, None, None)
    if latencies:
        p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
        spread = (p50, max(p95, p50), max(p99, p95, p50))
    means = [mean(values) for values in tokens] + [0.0] * (4 - len(tokens))
    return Summary(
        backend=target, n=len(scores), metric=metric, quality=mean(scores),
        quality_ci=quality_ci(scores, n_boot=n_boot, seed=seed),
        latency_p50_s=spread[0], latency_p95_s=spread[1], latency_p99_s=spread[2],
        ttft_p50_s=float(np.median(ttfts)) if ttfts else None,
        input_tokens=means[0], output_tokens=means[1], cached_input_tokens=means[2], audio_input_tokens=means[3],
        cost_per_request_usd=mean(costs),
        # A failed request's is what its error says its tokens would cost (0 when none came), like its measured cost.
        cloud_equivalent_per_request_usd=sum(clouds) / len(scores) if clouds else None,
        judge_cost_usd=judge_cost_usd, failures=failures or {}, judge_failures=judge_failures or {})


def uniform_note(summaries: Sequence[Summary]) -> str:
    """What the report says when every backend (``@policy`` aside) scored 0 on every record, or 1 on every record:
    such records tell no backend from another, and a compiled policy then routes by cost and latency alone."""
    scored = [s for s in summaries if s.backend != POLICY_TARGET and s.n]
    names = ", ".join(s.backend for s in scored)
    if scored and all(s.quality == 0.0 for s in scored):
        return (f"Every backend ({names}) scored 0 on every record: these records tell no backend from another, and "
                "a policy compiled from them routes by cost and latency alone. A whole set scored 0 is more often a "
                "wrong scorer (`--scorer`), gold answers in another field, or a prompt the model cannot answer than "
                "backends that know nothing: read some answers (report.html) before deciding anything from it.")
    if scored and all(s.quality == 1.0 for s in scored):
        return (f"Every backend ({names}) scored 1 on every record: these records are too easy to tell the backends "
                "apart, and a policy compiled from them routes by cost and latency alone. Benchmark harder records "
                "to compare their quality.")
    return ""


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:.6f}" if value < 0.01 else f"${value:.4f}"


COLUMNS = ("backend", "n", "quality (95% CI)", "p50 s", "p95 s", "p99 s", "TTFT p50 s", "in tok", "out tok",
           "cached tok", "audio tok", "$/request", "$/1k", "cloud-eq $/1k", "judge $", "failures")


#: What each column of a bench report's backend table is (report.md and report.html, below the table).
TABLE_LEGEND = (
    "**n**: the records each backend ran, failed ones included. **Quality** (the scorer's name): the mean score, a "
    "failed request scoring 0, with a 95 % CI (exact Clopper–Pearson for 0/1 scores, else Student's t); it counts "
    "records, the paired tables count distinct inputs. **p50/p95/p99 s**: latency percentiles of the answered "
    "requests, wall time at this run's `--concurrency` (a local engine's include the wait for it); **TTFT p50 s**: "
    "median time to the first streamed text (– with `--no-stream`). **in/out/cached/audio tok**: mean tokens per "
    "answered request. **$/request**: mean billed cost over every request, a failed one costing what it was billed; "
    "**$/1k**: the same for 1,000 requests. **cloud-eq $/1k**: for a free (local) engine, what its answers' tokens "
    "would cost at its `reference_model`'s prices (default gemini-2.5-flash), a failed request's tokens priced the "
    "same; – for a billed engine. **judge $**: the total a judge scorer's calls cost, apart from $/request. "
    "**failures**: failed rows by error type.")


def table_rows(summaries: Sequence[Summary]) -> list[list[str]]:
    """The report table's cells, one row per target."""
    rows = []
    for s in summaries:
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(s.failures.items())) or "0"
        if s.judge_failures:
            fails += " (judge: " + ", ".join(f"{k}: {v}" for k, v in sorted(s.judge_failures.items())) + ")"
        judged = s.metric.startswith("judge:") or s.judge_cost_usd > 0
        cloud = None if s.cloud_equivalent_per_request_usd is None else s.cloud_equivalent_per_request_usd * 1000
        rows.append([
            s.backend, str(s.n), f"{s.quality:.3f} [{s.quality_ci[0]:.3f}, {s.quality_ci[1]:.3f}]",
            *("–" if v is None else f"{v:.3f}" for v in (s.latency_p50_s, s.latency_p95_s, s.latency_p99_s)),
            "–" if s.ttft_p50_s is None else f"{s.ttft_p50_s:.3f}",
            f"{s.input_tokens:.1f}", f"{s.output_tokens:.1f}", f"{s.cached_input_tokens:.1f}",
            f"{s.audio_input_tokens:.1f}",
            _money(s.cost_per_request_usd), _money(s.cost_per_1k_usd), _money(cloud),
            _money(s.judge_cost_usd if judged else None), fails,
        ])
    return rows


def markdown_table(summaries: Sequence[Summary]) -> str:
    """The summaries as a Markdown table (metric named in the header)."""
    summaries = check_list(summaries, Summary, field="summaries")
    metric = summaries[0].metric if summaries else "score"
    header = [c if c != "quality (95% CI)" else f"{metric} (95% CI)" for c in COLUMNS]
    lines = [markdown_row(header), "|" + "---|" * len(header)]
    lines += [markdown_row(row) for row in table_rows(summaries)]
    return "\n".join(lines) + "\n"


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both axes (lower x, higher quality)."""
    front = []
    for name, x, q in points:
        dominated = any((x2 <= x and q2 >= q) and (x2 < x or q2 > q) for _, x2, q2 in points)
        if not dominated:
            front.append(name)
    return front


def charted(summaries: Sequence[Summary]) -> list[Summary]:
    """The targets a chart draws: not one every row of which failed (a backend the bench stopped for its set-up,
    say), which measured nothing and would read as a point at cost 0 and quality 0."""
    return [s for s in summaries if s.failure_count < s.n]


def pareto_png(summaries: Sequence[Summary], path: str | Path) -> Path:
    """Quality vs cost per 1k requests and quality vs p50 latency, the Pareto front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; also safe when a caller already chose Agg
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    drawn = charted(summaries)
    never, summaries = len(summaries) - len(drawn), drawn
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    use_cloud = all(s.cost_per_request_usd == 0 for s in summaries) and all(
        s.cloud_equivalent_per_request_usd is not None for s in summaries)
    axes_spec = (
        ("cloud-equivalent $ per 1k requests" if use_cloud else "$ per 1k requests",
         lambda s: (s.cloud_equivalent_per_request_usd or 0.0) * 1000 if use_cloud else s.cost_per_1k_usd),
        ("p50 latency (s)", lambda s: s.latency_p50_s),
    )
    for ax, (label, x_of) in zip(axes, axes_spec, strict=True):
        shown = [s for s in summaries if x_of(s) is not None]  # a latency nobody recorded is not drawn at 0
        points = [(s.backend, float(x_of(s) or 0.0), s.quality) for s in shown]
        front = set(pareto_front(points))
        if len(shown) < len(summaries):
            label += f" ({len(summaries) - len(shown)} not recorded)"
        for s, (name, x, q) in zip(shown, points, strict=True):
            err = [[q - s.quality_ci[0]], [s.quality_ci[1] - q]]
            ax.errorbar([x], [q], yerr=err, fmt="o", color="tab:blue" if name in front else "tab:gray", capsize=3)
            ax.annotate(name, (x, q), textcoords="offset points", xytext=(5, 5), fontsize=8)
        line = sorted((x, q) for name, x, q in points if name in front)
        if len(line) > 1:
            ax.plot(*zip(*line, strict=True), color="tab:blue", alpha=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # long $ tick labels overlap otherwise
        ax.set_xlabel(label)
        ax.set_ylabel(summaries[0].metric if summaries else "quality")
        ax.grid(alpha=0.3)
    fig.suptitle("Quality vs cost and latency (blue: Pareto front)"
                 + (f"; {never} target{'s' if never > 1 else ''} with no answer not drawn" if never else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from genroute.cache import atomic_write_via

    # matplotlib opens its file following links; a chart the user chmod'ed keeps its mode, as write_text kept it
    atomic_write_via(path, lambda tmp: fig.savefig(tmp, dpi=100), same_mode=True)
    plt.close(fig)
    return path


def html_report(summaries: Sequence[Summary], png: Path | None, *, title: str = "genroute bench",
                sections: Sequence[tuple[str, str]] = (), out_dir: Path | None = None,
                records: Sequence[BenchRecord] | None = None, outcomes: Sequence[Outcome] | None = None,
                per_record: tuple[str, str] | None = None) -> str:
    """A self-contained HTML page: the summary table, the Pareto chart, every (title, Markdown) section with its
    tables as tables and its images embedded, and a per-record view: ``per_record`` (title, HTML), else
    (given records and outcomes) where the backends disagree."""
    from genroute.bench.html_report import disagreement_view, page, table_html

    metric = summaries[0].metric if summaries else "score"
    columns = [c if c != "quality (95% CI)" else f"{metric} (95% CI)" for c in COLUMNS]
    summary = table_html(columns, table_rows(summaries), table_id="summary")
    if per_record is not None:
        return page(title, summary, png, sections, out_dir=out_dir, per_record=per_record[1],
                    per_record_title=per_record[0])
    view = disagreement_view(records, outcomes) if records is not None and outcomes is not None else None
    return page(title, summary, png, sections, out_dir=out_dir, per_record=view)


#: The cost–quality curve's file, when the compile step or ``--outcomes`` drew one into the output directory.
CURVE_PNG = "curve.png"


def write_report(out_dir: str | Path, summaries: Sequence[Summary], *, title: str = "genroute bench",
                 sections: Sequence[tuple[str, str]] = (), records: Sequence[BenchRecord] | None = None,
                 outcomes: Sequence[Outcome] | None = None, per_record: tuple[str, str] | None = None
                 ) -> dict[str, Path]:
    """Write ``report.md``, ``pareto.png``, ``report.html`` and ``summary.json`` into ``out_dir``.

    ``sections`` are (title, Markdown) pairs. A ``curve.png`` in ``out_dir`` that no section shows gets its own
    section. With ``records`` and ``outcomes`` the HTML page also shows, record by record, where they disagree;
    ``per_record`` (title, HTML) is a per-record view built by the caller instead.
    """
    out = output_dir(out_dir, field="out_dir")
    png = None
    if summaries:
        try:
            png = pareto_png(summaries, out / "pareto.png")
        except ImportError:  # matplotlib comes with the bench extra; the tables do not need it
            png = None
    sections = list(sections)
    if (out / CURVE_PNG).is_file() and not any(f"({CURVE_PNG})" in text for _, text in sections):
        sections.append(("Cost–quality curve", f"![cost-quality curve]({CURVE_PNG})"))
    md = [f"# {title}\n", markdown_table(summaries)]
    md += [f"\n## {t}\n\n{text}\n" for t, text in sections]
    if png is not None:
        md.append("\n![Pareto chart](pareto.png)\n")
    paths = {"markdown": out / "report.md", "html": out / "report.html", "summary": out / "summary.json"}
    # Each replaced whole, past a link planted in a shared output directory (which write_text followed), keeping the
    # mode a rerun's file had (as write_text did: a report the user made 0600 holds answers to their records).
    from genroute.cache import atomic_write_bytes

    # The reports are owner-only when new: the HTML page's per-record view quotes inputs and answers, and a compile's
    # route table an example query per route. summary.json (figures per backend and label) is the umask's.
    atomic_write_bytes(paths["markdown"], "".join(md).encode("utf-8"), private=True, same_mode=True)
    atomic_write_bytes(paths["html"], html_report(summaries, png, title=title, sections=sections, out_dir=out,
                                                  records=records, outcomes=outcomes,
                                                  per_record=per_record).encode("utf-8"), private=True, same_mode=True)
    atomic_write_bytes(paths["summary"], (json.dumps([s.model_dump(mode="json", exclude=None if s.labels else
                                                                    {"labels"}) for s in summaries], indent=2)
                                          + "\n").encode("utf-8"), same_mode=True)
    if png is not None:
        paths["png"] = png
    return paths
