"""Compiling and judging routing policies on an outcome matrix, without calling any model.

``compile_outcomes(FILE)`` splits the records (seeded, by input text so that a repeated question never sits
on both sides), compiles on the training part — ``stats.json`` and the ``cost_aware`` policy, the ``learned``
router with and without the task label — and scores every policy and baseline on the held-out part;
``eval_source`` scores them on another file instead (refused if it shares a record with the training file).
It writes ``compiled.json`` (every row: router, quality, cost per request, n, candidates routed to; the
curves and their metrics; the paired comparisons), ``curve.png``, the compiled policies (``cost_aware.json`` on
``stats.json``, the learned models, ``semantic.json``) and the usual report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genroute.bench import curves as cq
from genroute.bench import baselines as bl
from genroute.bench import matrix_routers as mr
from genroute.bench.offline_report import Comparison, CurveSummary, OfflineReport, write_outputs
from genroute.bench.outcomes import CandidatePricing, OutcomeMatrix, load_matrix
from genroute.bench.score_checks import check_min_n, check_seed
from genroute.errors import UsageError
from genroute.jsonl import check_output_dir, output_dir, owner_only
from genroute.policies.cost_weight import CostWeightRule, as_rule

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Estimators compared for the learned router (chosen per run by cross-validation on the training records).
DEFAULT_SPECS: tuple[dict[str, Any], ...] = (
    {"method": "knn", "k": 10}, {"method": "knn", "k": 40}, {"method": "knn", "k": 100}, {"method": "knn", "k": 250},
    {"method": "logreg"},
    {"method": "logreg", "l2": 1e-2}, {"method": "mlp"}, {"method": "blend", "k": 40})
#: (``candidates: front`` and ``pairwise`` are not among them: neither beat kNN in cross-validation on dcrouter or
#: MMLU-Pro; see benchmarks/RESULTS.md. Pass them in ``specs`` to compare.)
#: The ``cost_aware`` row's floor: this share of each task's best training quality (``cost_aware.json``'s).
COST_AWARE_FLOOR = 0.95


def compile_outcomes(
    source: str | Path | Iterable[Mapping[str, Any]] | OutcomeMatrix,
    *,
    out_dir: str | Path,
    eval_source: str | Path | Iterable[Mapping[str, Any]] | OutcomeMatrix | None = None,
    pricing: CandidatePricing | None = None,
    candidates: Sequence[str] | None = None,
    holdout: float = 0.3,
    seed: int = 0,
    embedder: Any = None,
    cache_dir: str | Path | None = None,
    specs: Sequence[dict[str, Any]] = DEFAULT_SPECS,
    min_n: int = 100,
    force_verdict: bool = False,
    learned: bool = True,
    title: str | None = None,
    cost_weight_rule: CostWeightRule | str | Mapping[str, Any] = "resolved",
) -> OfflineReport:
    """Compile policies on ``source`` and judge them and every baseline on held-out records (see module).

    ``learned=False`` skips the learned router (no embeddings: the baselines and ``cost_aware`` only).
    Paired comparisons give no verdict below ``min_n`` distinct evaluation inputs unless ``force_verdict`` (records
    with the same input text are one input, for the cost difference's CI too: ``genroute.bench.clusters``).
    ``candidates`` limits the matrix to those candidates (default: every one in the file); records lacking the
    outcome of one of them are left out and counted in ``dropped``.
    ``cost_weight_rule`` chooses the cost weight written into the learned model files from out-of-fold routing
    (``genroute.policies.cost_weight``); every rule's choice is scored as a row.
    """
    from genroute.bench.embedding_cache import CachedEmbedder

    rule = as_rule(cost_weight_rule) or CostWeightRule()
    check_seed(seed)
    check_min_n(min_n)
    _check_options(out_dir=out_dir, pricing=pricing, cache_dir=cache_dir, specs=specs if learned else None, title=title)
    start = time.perf_counter()
    full = source if isinstance(source, OutcomeMatrix) else load_matrix(source, pricing=pricing,
                                                                        candidates=candidates)
    if len(full.candidates) < 2:  # every router would pick it, every comparison read "no difference"
        raise UsageError(f"routing needs at least two candidates (got {', '.join(full.candidates)})",
                         field="candidates" if candidates else "outcomes")
    if eval_source is not None:
        held = eval_source if isinstance(eval_source, OutcomeMatrix) else \
            load_matrix(eval_source, pricing=pricing, candidates=full.candidates, field="eval_outcomes",
                        candidates_field="eval_outcomes")
        if held.candidates != full.candidates:
            raise UsageError(f"the evaluation file's candidates differ ({', '.join(held.candidates)})",
                             field="eval_outcomes")
        train, where = full, f"{held.source or 'records'} (another file)"
    else:
        train, held = split_by_text(full, holdout=holdout, seed=seed)
        where = f"held-out {holdout:.0%} of {full.source or 'the records'} (seed {seed}, split by input text)"
    mr.check_disjoint(train, held)
    if len(train.records) < 10:
        held_by = "" if eval_source is not None else (f": --holdout {holdout:g} held out the other "
                                                      f"{len(held.records)}; a smaller one leaves more")
        raise UsageError(f"compiling needs at least 10 training records (got {len(train.records)}{held_by})",
                         field="outcomes")
    if learned:
        from genroute.bench.clusters import text_groups

        # Cross-validation deals inputs, not records, to folds (copies of one stay together): one input is one fold.
        if (inputs := len(set(text_groups([r.input for r in train.records])))) < 2:
            raise UsageError(f"a learned router needs at least two distinct training inputs to cross-validate (got "
                             f"{inputs} in {len(train.records)} records; copies of an input share a fold): add inputs, or "
                             "compile without it (learned=False)", field="outcomes")
    # A report quotes inputs: of an outcome store export (0600), as private as it.
    out = output_dir(out_dir, field="out_dir", private=owner_only(source) or owner_only(eval_source))
    if learned:
        if embedder is None:
            from genroute.policies.semantic import default_embedder

            embedder = default_embedder()
        cached = CachedEmbedder(embedder, cache_dir if cache_dir is not None else out / "embeddings")
        x_train = cached.embed_array([r.input for r in train.records])
        x_held = cached.embed_array([r.input for r in held.records])

    choices = bl.baselines(train, held, seed=seed)
    rows = [mr.row(name, held, c) for name, c in choices.items()]
    floors = mr.cost_aware_choices(train, held, mr.FLOORS)
    choices["cost_aware (task label)"] = dict(floors)[COST_AWARE_FLOOR]
    rows.append(mr.row("cost_aware (task label)", held, choices["cost_aware (task label)"], knob=COST_AWARE_FLOOR))
    sweeps: dict[str, tuple[str, Sequence[tuple[float, NDArray[Any]]]]] = {
        "cost_aware (task label)": ("floor share of each task's best", floors)}
    methods: dict[str, list[dict[str, Any]]] = {}
    cost_weights: dict[str, dict[str, dict[str, Any]]] = {}
    models: dict[str, Any] = {}
    for use_task in (True, False) if learned else ():
        if use_task and all(t is None for t in train.tasks):
            continue
        fitted = mr.learned_fit(train, held, x_train, x_held, use_task=use_task, specs=specs, seed=seed, rule=rule,
                                embedder=str(cached.model))
        methods[fitted.name] = fitted.methods
        cost_weights[fitted.name] = {r: c.model_dump() for r, c in fitted.cost_weight_choices.items()}
        models[fitted.name] = fitted.model
        points = [("at best-single quality", fitted.cost_weight_match),
                  *[(f"at {share:.0%} of best-single cost", w) for share, w in fitted.cost_weight_shares.items()],
                  ("at per-task-best cost", fitted.cost_weight_budget),
                  *[(f"at CV-chosen cost weight ({r})", c.weight) for r, c in fitted.cost_weight_choices.items()]]
        for label, weight in points:
            name = f"{fitted.name} {label}"
            choices[name] = fitted.model.choose(fitted.predicted, weight)
            rows.append(mr.row(name, held, choices[name], knob=weight))
        sweeps[fitted.name] = ("cost weight", [(w, fitted.model.choose(fitted.predicted, w))
                                               for w in mr.COST_WEIGHTS])
    routes_md, semantic_file = "", None
    if learned:
        routes_md, semantic_file, sem_methods = _semantic(train, held, x_train, x_held, cached, out, choices,
                                                          rows, sweeps, seed=seed)
        methods["semantic routes (text only)"] = sem_methods
    curves = _curves(train, held, sweeps)
    comparisons = _comparisons(held, choices, min_n=min_n, force=force_verdict, seed=seed)
    report = OfflineReport(
        source=full.source or "the outcomes given", evaluated_on=where, n_train=len(train.records), n_eval=len(held.records),
        dropped=full.dropped + (held.dropped if eval_source is not None else 0), candidates=list(full.candidates),
        cost_basis=full.cost_basis, rows=rows, curves=curves, comparisons=comparisons, methods=methods,
        cost_weights=cost_weights, notes=_evaluation_notes(train, held, other_file=eval_source is not None,
                                                           learned=learned),
        routes=routes_md, seconds=0.0, files={})
    files = write_outputs(report, train, held, models, out, title=title, choices=choices)
    from genroute.policies.cost_aware_compiled import write_cost_aware_config

    # The `cost_aware (task label)` row's policy: each task's floor at 95 % of its best quality in stats.json.
    files["cost_aware"] = str(write_cost_aware_config(out / "cost_aware.json", Path(files["stats"]),
                                                      list(train.candidates), relative_floor=COST_AWARE_FLOOR))
    if semantic_file is not None:
        files["semantic"] = str(semantic_file)
    report = report.model_copy(update={"files": files, "seconds": time.perf_counter() - start})
    from genroute.cache import atomic_write_bytes

    # Owner-only when new (a rerun keeps its mode): its route table quotes a training query per route.
    atomic_write_bytes(Path(files["compiled"]), to_json(report).encode(), private=True, same_mode=True)
    return report


def _evaluation_notes(train: OutcomeMatrix, held: OutcomeMatrix, *, other_file: bool, learned: bool) -> list[str]:
    """What the evaluation records hold that the training records do not, handled but worth a line each: an
    evaluation file's (``other_file``) candidates the training file has no outcome of, and tasks no training record
    has (and what each router does with them)."""
    notes = []
    if other_file and held.left_out:  # the evaluation file was read for the training file's candidates only
        notes.append(f"The evaluation file's candidate(s) {', '.join(held.left_out)} have no outcome in the training "
                     f"file: left out (no compiled policy routes to them); the evaluation is over "
                     f"{', '.join(train.candidates)}.")
    seen = set(train.tasks)
    unseen = [t for t in held.tasks if t is not None and t not in seen]
    if unseen:
        names = sorted(set(unseen))
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        # cost_aware reads the statistics of the records without a task ("*") for a task it has none of.
        fallback = "its pick for records without a task" if None in seen else "its default"
        notes.append(f"{len(unseen)} of {len(held.records)} evaluation records have a task no training record has "
                     f"({len(names)} task(s): {shown}): per-task best sends them to the best single, cost_aware "
                     f"(task label) to {fallback}" + (", the learned routers read their text alone." if learned
                                                       else "."))
    return notes


def _check_options(*, out_dir: Any, pricing: Any, cache_dir: Any, specs: Any, title: Any) -> None:
    """``UsageError`` naming the argument of ``compile_outcomes`` that is of the wrong kind, before anything is read
    or written (each failed once the embeddings were cached, or the report half-written)."""
    from genroute.policies.router_models import METHODS

    check_output_dir(out_dir, field="out_dir")
    if cache_dir is not None:
        check_output_dir(cache_dir, field="cache_dir")
    if pricing is not None and not isinstance(pricing, CandidatePricing):
        raise UsageError(f"must be CandidatePricing (load_pricing reads a prices file), not {type(pricing).__name__}",
                         field="pricing")
    if title is not None and not isinstance(title, str):
        raise UsageError(f"must be text, not {type(title).__name__}", field="title")
    if specs is None:  # not learned: not read
        return
    if isinstance(specs, str | Mapping) or not isinstance(specs, Sequence) or not specs:
        raise UsageError("must be a non-empty list of estimator specs ({method: knn|logreg|...})", field="specs")
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or spec.get("method") not in METHODS:
            got = spec.get("method") if isinstance(spec, Mapping) else spec
            raise UsageError(f"needs a method of {', '.join(METHODS)} (got {got!r:.60})", field=f"specs.{index}.method")


#: The semantic routes' operating point written to ``semantic.json`` (and its row's name).
SEMANTIC = "semantic routes (text only) at best-single quality"


def _semantic(train: OutcomeMatrix, held: OutcomeMatrix, x_train: NDArray[Any], x_held: NDArray[Any], embedder: Any,
              out: Path, choices: dict[str, NDArray[Any]], rows: list[mr.RouterRow],
              sweeps: dict[str, tuple[str, Sequence[tuple[float, NDArray[Any]]]]], *, seed: int
              ) -> tuple[str, Path, list[dict[str, Any]]]:
    """Compile semantic routes on ``train`` (``semantic_routes``), write ``semantic.json``, and score the
    ``semantic`` policy that config builds on every held record, beside the routes' curve."""
    from genroute.bench import semantic_routes as sr
    from genroute.bench.compile import policy_context
    from genroute.policies.router_models import normalise
    from genroute.policies.semantic import SemanticConfig, SemanticPolicy
    from genroute.types import GenerateRequest

    u_train, u_held = normalise(x_train), normalise(x_held)
    fitted = sr.fit(train, u_train, mr.COST_WEIGHTS, seed=seed)
    best = bl.best_single(train)
    match, budget_w, shares = mr.operating_points(
        fitted.predicted_points, float(train.scores[:, best].mean()),
        float(mr.picked_costs(train, bl.per_task_best(train, train)).mean()), float(train.costs[:, best].mean()),
        (0.4,))
    default = train.candidates[best]
    path = sr.write_config(out / "semantic.json", fitted.routes, train, match, default=default)
    policy = SemanticPolicy(SemanticConfig.model_validate(json.loads(path.read_text(encoding="utf-8"))),
                            embedder=embedder)
    context = policy_context(list(train.candidates))
    choices[SEMANTIC] = np.array([held.candidates.index(policy.decide(GenerateRequest(input=r.input), context)
                                                        .rungs[0].backend) for r in held.records], dtype=int)
    rows.append(mr.row(SEMANTIC, held, choices[SEMANTIC], knob=match))
    for label, weight in (("at 40% of best-single cost", shares[0.4]), ("at per-task-best cost", budget_w)):
        name = f"semantic routes (text only) {label}"
        choices[name] = fitted.routes.route(u_train, u_held, weight)
        rows.append(mr.row(name, held, choices[name], knob=weight))
    sweeps["semantic routes (text only)"] = ("cost weight", [(w, fitted.routes.route(u_train, u_held, w))
                                                             for w in mr.COST_WEIGHTS])
    table = (f"{len(fitted.routes.members)} routes over the training queries (clusters chosen by 5-fold "
             f"cross-validation on the training records), each sent to its candidate at cost weight {match:.3g} "
             f"(the operating point reaching the best single's quality out of fold); `{path.name}` is the "
             "`semantic` policy config they make.\n\n" + sr.route_table(fitted.routes, train, match))
    return table, path, fitted.methods


def split_by_text(matrix: OutcomeMatrix, *, holdout: float, seed: int) -> tuple[OutcomeMatrix, OutcomeMatrix]:
    """A seeded (train, held-out) split in which records with the same input text stay together (texts that differ
    only in case, runs of whitespace or Unicode composition are the same, as ``split_by_input`` reads them)."""
    from genroute.bench.datasets import split_ids
    from genroute.knowledge.examples import input_key

    # A group is ranked by its smallest text: when no two texts differ only so, the split is the one made by
    # ranking the texts themselves, as before (no published figure moves).
    first: dict[str, str] = {}
    for r in matrix.records:
        key = input_key(r.input)
        first[key] = min(first.get(key, r.input), r.input)
    texts = sorted(set(first.values()))
    if len(texts) < 2:
        raise UsageError("a held-out split needs at least two distinct inputs", field="outcomes")
    rank = {t: f"{i:09d}" for i, t in enumerate(texts)}
    _, held_keys = split_ids(list(rank.values()), holdout=holdout, seed=seed)
    held_set = set(held_keys)
    held_ids = {r.id for r in matrix.records if rank[first[input_key(r.input)]] in held_set}
    return (matrix.subset([r.id for r in matrix.records if r.id not in held_ids]),
            matrix.subset([r.id for r in matrix.records if r.id in held_ids]))


def _curves(train: OutcomeMatrix, held: OutcomeMatrix,
            sweeps: Mapping[str, tuple[str, Sequence[tuple[float, NDArray[Any]]]]]) -> list[CurveSummary]:
    best, weak = bl.best_single(train), bl.cheapest(train)
    best_pt = (float(held.costs[:, best].mean()), float(held.scores[:, best].mean()))
    weak_pt = (float(held.costs[:, weak].mean()), float(held.scores[:, weak].mean()))
    mean_costs = held.costs.mean(axis=0)
    per_task_cost = float(mr.picked_costs(held, bl.per_task_best(train, held)).mean())
    out = []
    for name, (knob, choices) in sweeps.items():
        points = mr.curve(held, choices)
        xy = [(c, q) for _, c, q in points]
        out.append(CurveSummary(
            name=name, knob=knob, points=points, aiq=cq.aiq(xy, float(mean_costs.min()), float(mean_costs.max())),
            apgr=cq.apgr(xy, weak_pt, best_pt), cost_saved_at_95=cq.cost_saved(xy, best_pt, 0.95),
            cost_at_best_single_quality=cq.cost_at_quality(xy, best_pt[1]),
            quality_at_best_single_cost=cq.quality_at_cost(xy, best_pt[0]),
            quality_at_per_task_best_cost=cq.quality_at_cost(xy, per_task_cost)))
    return out


#: (router, baseline) pairs compared on the same records, when both were run.
PAIRS = (("learned (text + task) at best-single quality", "best single (train)"),
         ("learned (text + task) at 50% of best-single cost", "best single (train)"),
         ("learned (text + task) at per-task-best cost", "per-task best (train)"),
         ("learned (text only) at best-single quality", "best single (train)"),
         ("learned (text only) at 40% of best-single cost", "best single (train)"),
         ("learned (text only) at per-task-best cost", "per-task best (train)"),
         ("cost_aware (task label)", "best single (train)"),
         ("cost_aware (task label)", "per-task best (train)"),
         ("learned (text only) at best-single quality", "random"),
         (SEMANTIC, "best single (train)"),
         ("semantic routes (text only) at 40% of best-single cost", "best single (train)"),
         ("semantic routes (text only) at per-task-best cost", "per-task best (train)"),
         (SEMANTIC, "learned (text only) at best-single quality"),
         *[(f"learned ({what}) at CV-chosen cost weight ({rule})", "best single (train)")
           for what in ("text + task", "text only") for rule in mr.RULES],
         # What a rule gives up or saves against the best mean out-of-fold quality (the weight that chases noise).
         *[(f"learned ({what}) at CV-chosen cost weight ({rule})", f"learned ({what}) at CV-chosen cost weight (best)")
           for what in ("text + task", "text only") for rule in mr.RULES if rule != "best"])


def _comparisons(held: OutcomeMatrix, choices: Mapping[str, NDArray[Any]], *, min_n: int, force: bool, seed: int
                 ) -> list[Comparison]:
    from genroute.bench.clusters import text_groups
    from genroute.bench.multiplicity import adjust_family, exact_p, hypothesis
    from genroute.bench.stats import compare_paired, paired_bootstrap_ci

    groups = text_groups([r.input for r in held.records])  # a repeated question is one input, not several
    pairs = [(a, b) for a, b in PAIRS if a in choices and b in choices]
    scores = {name: mr.picked_scores(held, choices[name]).tolist() for pair in pairs for name in pair}
    # The report's comparisons are one family: its verdicts are corrected over all of them (Holm), two rows with
    # the same two score vectors (two rules that chose one weight) counted once.
    results = adjust_family([compare_paired(scores[a], scores[b], a=a, b=b, min_n=min_n, force=force, seed=seed,
                                            groups=groups) for a, b in pairs],
                            [hypothesis(scores[a], scores[b]) for a, b in pairs])
    out = []
    for (a, b), result in zip(pairs, results, strict=True):
        ca, cb = mr.picked_costs(held, choices[a]), mr.picked_costs(held, choices[b])
        verdict = result.verdict
        if len(held.records) > 1 and len(set(choices[a].tolist())) == 1:  # a win of one candidate, not of routing
            verdict += (f"; {a} sent every record to {held.candidates[int(choices[a][0])]}: a single candidate, "
                        "nothing routed")
        out.append(Comparison(
            router=a, baseline=b, n=result.n, n_records=result.n_records, quality_difference=result.difference,
            ci=result.ci, p_value=exact_p(result), adjusted_p=result.adjusted_p, adjustment=result.adjustment,
            family_size=result.family_size, repeats=result.repeats, decision=result.decision,
            verdict=verdict, cost_ratio=float(ca.mean() / cb.mean()) if cb.mean() > 0 else None,
            cost_difference_ci=paired_bootstrap_ci(ca.tolist(), cb.tolist(), seed=seed, groups=groups)))
    return out


def to_json(report: OfflineReport) -> str:
    """``compiled.json``: the report as JSON."""
    return json.dumps(report.model_dump(mode="json"), indent=2) + "\n"
