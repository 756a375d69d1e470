"""``genroute graduate``: graduate a task from few-shot to a tuned model, on a YAML/JSON router config.

    genroute graduate --task sentiment --config app.yaml --out grad/           # export, tune --local, challenger
    ... the application serves traffic; feedback with labels accumulates outcomes ...
    genroute graduate --task sentiment --config app.yaml --out grad/ --decide  # promote, or say why not

The first form exports the task's captured examples from the config's outcome store, LoRA-tunes the embedded
model on them (or, with ``--vertex --base-model M --staging-uri gs://B/P``, runs a Vertex AI tuning job with the
application's default Google Cloud credentials), writes the tuned backend into the config and wraps the config's
policy in a ``challenger`` policy (``--mode shadow|split``). ``--register-only --challenger NAME`` wraps the
policy around a backend already in the config (e.g. from ``genroute tune``). ``--decide`` reads the
outcomes (paired in shadow mode, the two split arms unpaired in split mode) and, when the rule holds, sets
``promoted: true`` in the config (keeping the challenger's mode and share) and, when the config's ``state`` is shared
(Redis), records the promotion there, so that running replicas apply it without a restart; the report says why not
otherwise.
Run ``--decide`` as often as you like: it reads an anytime-valid 95 % confidence sequence, which holds at every
look; ``--fixed-horizon`` reads the fixed-horizon 95 % CI instead, valid only for one decision planned in advance.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from genroute.cli_options import command_failed
from genroute.errors import ConfigError, GenrouteError, UsageError
from genroute.jsonl import check_output_dir
from genroute.runtime.portal import run_sync


def graduate_main(argv: Sequence[str]) -> int:
    """Run ``genroute graduate``; 0 on success, 2 on a usage error, 1 on a failure."""
    # The docstring's reST quoting (``x``) is noise in a terminal.
    parser = argparse.ArgumentParser(prog="genroute graduate", description=__doc__.replace("``", "`"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--config", required=True, help="router config (.yaml or .json) with an outcomes section")
    parser.add_argument("--out", required=True, help="work directory (tuning set, adapter, graduation.json)")
    parser.add_argument("--name", default=None, help="tuned backend name (default: <task>_tuned)")
    parser.add_argument("--mode", choices=["shadow", "split"], default=None,
                        help="default shadow; with --decide, the graduation's")
    parser.add_argument("--share", type=float, default=None,
                        help="shadow rate or split share (default 1; with --decide, the graduation's)")
    parser.add_argument("--min-examples", type=int, default=20)
    parser.add_argument("--eval-share", type=float, default=0.0, help="captured examples kept out of tuning")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=None, help="local tuning (default 1e-3)")
    parser.add_argument("--rank", type=int, default=None, help="local tuning: LoRA rank (default 8)")
    parser.add_argument("--max-steps", type=int, default=None, help="local tuning")
    parser.add_argument("--threads", type=int, default=None, help="local tuning and the tuned engine")
    parser.add_argument("--vertex", action="store_true", help="tune on Vertex AI instead of locally")
    parser.add_argument("--base-model", default=None, help="with --vertex: the model to tune (default "
                                                           "gemini-2.5-flash)")
    parser.add_argument("--staging-uri", default=None, help="with --vertex: gs://bucket/prefix for the data")
    parser.add_argument("--engine", default=None,
                        help="with --vertex: the engine (with `vertex:`) to tune with; default: the only such one")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="with --vertex: seconds between status checks of the tuning job (default 30)")
    parser.add_argument("--tuning-price", type=float, default=None,
                        help="with --vertex: USD per 1M training tokens the job's cost is reported at (default: the "
                             "pricing table's unverified list price)")
    parser.add_argument("--decide", action="store_true", help="decide on promotion from the outcomes (paired; split arms unpaired)")
    parser.add_argument("--challenger", default=None, help="with --decide or --register-only: the tuned backend")
    parser.add_argument("--register-only", action="store_true",
                        help="wrap the policy with --challenger (a backend already in the config), no tuning")
    parser.add_argument("--incumbent", default=None, help="default: the backend that served the task most")
    parser.add_argument("--fixed-horizon", action="store_true",
                        help="with --decide: read the fixed-horizon 95%% CI, valid for one look planned in advance, "
                             "instead of the anytime-valid 95%% confidence sequence (valid however often you decide)")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--min-n", type=int, default=100)
    parser.add_argument("--tuning-cost", type=float, default=None, help="USD, for the advisor's pay-back")
    parser.add_argument("--cpu-usd-per-hour", type=float, default=None,
                        help="price of a CPU-hour: the local tuning cost is its measured CPU time at this price")
    args = parser.parse_args(list(argv))
    if not args.decide:  # --decide keeps what the graduation set, unless told otherwise
        args.mode, args.share = args.mode or "shadow", 1.0 if args.share is None else args.share
    try:
        if args.decide and args.register_only:  # the registration ran and the decision was left out, silently
            raise UsageError("registers a challenger, --decide decides on one: give one of them",
                             field="--register-only")
        if args.fixed_horizon and not args.decide:  # it would be ignored
            raise UsageError("chooses the rule --decide reads: give it with --decide", field="--fixed-horizon")
        _refuse_other_tuning(args)
        report = run_sync(_run(args), "graduate")  # a Ctrl-C on any thread stops it (see run_sync)
    except GenrouteError as exc:
        return command_failed(exc, parser, config=args.config)
    print(report.text(), end="")
    return 0


#: The flags only one way of tuning reads (the other would ignore them).
_TUNING_ONLY = {"--vertex": ("--base-model", "--staging-uri", "--engine", "--poll-interval", "--tuning-price"),
                "local": ("--learning-rate", "--rank", "--max-steps", "--threads")}


def _refuse_other_tuning(args: argparse.Namespace) -> None:
    """``UsageError`` naming a tuning flag the run asked for would ignore: a local one with ``--vertex`` (the job
    would run with its own learning rate), a ``--vertex`` one without it."""
    if args.decide or args.register_only:
        return
    other = "local" if args.vertex else "--vertex"
    for flag in _TUNING_ONLY[other]:
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            raise UsageError("is for local tuning; leave out --vertex" if args.vertex else
                             "is for tuning on Vertex AI; add --vertex", field=flag)


def _saved_report(model: Any, path: Path) -> Any:
    """The graduation report an earlier run saved at ``path``; ``UsageError`` naming ``--out`` if it is not one."""
    from pydantic import ValidationError

    from genroute.config_errors import pydantic_validated_json

    try:
        return pydantic_validated_json(model, path.read_bytes())
    except (OSError, ValidationError) as exc:
        detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc.strerror or str(exc)
        raise UsageError(f"{path} is not a graduation report ({detail}): move it away, or graduate again",
                         field="--out") from None


async def _run(args: argparse.Namespace) -> Any:
    from genroute.graduation.promote import check_amount, check_names, check_rule
    from genroute.graduation.run import GraduationReport, adecide, agraduate
    from genroute.router.router import Router

    # Named as adecide names them (tuning_cost_usd): command_failed's as_typed maps a library name to the option
    # typed (--tuning-cost), through the one table of such names (cli_options.LIBRARY_NAMES).
    check_names(task=args.task)
    if args.decide:
        check_rule(args.margin, args.min_n)
        check_amount(args.tuning_cost, field="tuning_cost_usd")
        check_amount(args.cpu_usd_per_hour, field="cpu_usd_per_hour")
    out = check_output_dir(args.out, field="--out")  # before a tuning run, or a promotion written to the config
    saved = out / "graduation.json"
    name = args.challenger or args.name or f"{args.task}_tuned"
    if not args.decide:  # before minutes of tuning: a name the config could not take is refused now
        from genroute.tuning.config_file import check_name

        check_name(name, field="--challenger" if args.challenger else "--name")
    if not (args.decide or args.register_only):
        _check_new_backend(args.config, name, engines=() if args.vertex else (f"{name}_engine",))
    if args.register_only:
        write_challenger(args.config, task=args.task, backend=name, mode=args.mode, share=args.share)
        return GraduationReport(task=args.task, challenger=name, lines=(
            f"register: {name} is the challenger for task {args.task!r} ({args.mode}) in {args.config}",))
    async with await Router.acreate(args.config) as router:
        if args.decide:
            report = _saved_report(GraduationReport, saved) if saved.is_file() else None
            if report is not None and (report.task, report.challenger) != (args.task, name):
                # Its tuning cost and lines are another graduation's: the advisor would price the wrong run.
                raise UsageError(f"{saved} is the graduation of {report.challenger!r} for task {report.task!r}, not "
                                 f"of {name!r} for {args.task!r}: give that graduation's --out", field="--out")
            # Promoted in the router too: with a shared state store that records it for every running replica
            # (StateUnavailable before the file is written: nothing half-done).
            report = await adecide(router, args.task, challenger=name, incumbent=args.incumbent,
                                   margin=args.margin, min_n=args.min_n, sequential=not args.fixed_horizon,
                                   tuning_cost_usd=args.tuning_cost, cpu_usd_per_hour=args.cpu_usd_per_hour,
                                   report=report)
            if report.promotion is not None and report.promotion.promote:
                write_challenger(args.config, task=args.task, backend=name, mode=args.mode, share=args.share,
                                 promoted=True)
                report = report.model_copy(update={"lines": (
                    *report.lines[:-2], f"promote: {args.config} now sends task {args.task!r} to {name} first" + (
                        ", and so does every router sharing its state store (recorded there)"
                        if router.state.promotions_every_s is not None else ""),
                    report.lines[-1])})
        elif args.vertex:
            from genroute.tuning.cli import settings_from_flags
            from genroute.tuning.config_file import with_tuned_backend
            from genroute.tuning.vertex import VertexTuningSettings

            given = {"base_model": args.base_model, "poll_interval_s": args.poll_interval,
                     "tuning_usd_per_1m_tokens": args.tuning_price}
            settings = settings_from_flags(VertexTuningSettings, {
                "base_model": "gemini-2.5-flash", "name": name, "staging_uri": args.staging_uri, "epochs": args.epochs,
                "seed": 0, "engine": args.engine, "tasks": (args.task,),
                **{k: v for k, v in given.items() if v is not None}})
            report = await agraduate(router, args.task, out_dir=out, vertex=settings, config_path=args.config,
                                     mode=args.mode, share=args.share, eval_share=args.eval_share,
                                     min_examples=args.min_examples, register=False)
            # One write of the backend and its challenger, as below: a crash between two left the backend unrouted.
            write_challenger(args.config, task=args.task, backend=name, mode=args.mode, share=args.share,
                             raw=with_tuned_backend(args.config, name, report.extra["backend"]))
            report = report.model_copy(update={"lines": (
                *report.lines, f"register: {name} written to {args.config} as the challenger for task "
                               f"{args.task!r} ({args.mode}, share {args.share:.0%})")})
        else:
            from genroute.tuning.cli import settings_from_flags
            from genroute.tuning.config_file import with_tuned_backend
            from genroute.tuning.local_lora import LocalTuneConfig, tuned_entries

            flags = {"epochs": args.epochs, "learning_rate": args.learning_rate, "rank": args.rank,
                     "max_steps": args.max_steps, "threads": args.threads}
            tune = settings_from_flags(LocalTuneConfig, {**{k: v for k, v in flags.items() if v is not None},
                                                         "progress": False})
            report = await agraduate(router, args.task, out_dir=out, name=name, tune=tune, mode=args.mode,
                                     share=args.share, eval_share=args.eval_share, min_examples=args.min_examples,
                                     register=False)
            assert report.adapter_path is not None
            options = {"n_threads": args.threads} if args.threads else None
            backend, engines = tuned_entries(name, report.adapter_path, tasks=[args.task], engine_options=options,
                                             config_dir=Path(args.config).parent,
                                             keep_absolute=Path(args.out).is_absolute())
            # One write of the backend and its challenger: a crash between two left the backend unrouted.
            write_challenger(args.config, task=args.task, backend=name, mode=args.mode, share=args.share,
                             raw=with_tuned_backend(args.config, name, backend, engines=engines))
            report = report.model_copy(update={"lines": (
                *report.lines, f"register: {name} written to {args.config} as the challenger for task "
                               f"{args.task!r} ({args.mode}, share {args.share:.0%})")})
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The tuning step's report is kept for every later --decide (its CPU time feeds the advisor).
    from genroute.cache import atomic_write_bytes

    atomic_write_bytes(out / ("decision.json" if args.decide else "graduation.json"),  # past a planted link
                       (report.model_dump_json(indent=2) + "\n").encode("utf-8"), same_mode=True)
    return report


def _check_new_backend(config_path: str, name: str, *, engines: Sequence[str]) -> None:
    """Refuse, before the export and the tuning, a config the tuned backend ``name`` (and its ``engines``) could
    not be written into: a name already taken (re-graduating would overwrite the adapter the registered
    challenger serves, then be refused) or a file genroute cannot rewrite (TOML)."""
    from genroute.tuning.config_file import check_target

    try:
        check_target(config_path, name, engines=engines)
    except UsageError as exc:
        if exc.field == "name":  # graduate has no --replace: say what it can do instead
            raise UsageError(f"{exc.message.split(';')[0]}: graduate under another --name, or make that backend "
                             f"the challenger with --register-only --challenger {name}", field="--name") from None
        if exc.field == "config":
            raise type(exc)(exc.message, field="--config") from None
        raise



def write_challenger(config_path: str | Path, *, task: str, backend: str, mode: str | None = None,
                     share: float | None = None, promoted: bool = False,
                     raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Wrap the config's policy in a ``challenger`` policy for ``task`` (or update the one there); atomic.
    ``mode`` and ``share`` left ``None`` keep the challenger's there (else ``shadow``, 1); ``raw``: the config's
    mapping to write it into, in place of the file's (one with the tuned backend added: one write for both)."""
    from genroute.config import anchor_paths, load_config, read_config_file
    from genroute.policies import build_policy
    from genroute.policies.challenger import ChallengerPolicy
    from genroute.tuning.config_file import check_target, write_config

    path = Path(config_path)
    check_target(path, backend, replace=True)  # a writable YAML/JSON file
    raw = dict(read_config_file(path, field="config") if raw is None else raw)
    if backend not in (raw.get("backends") or {}):
        raise UsageError(f"backend {backend!r} is not in {path.name}", field="challenger")
    policy = raw.get("policy")
    given = {k: v for k, v in (("mode", mode), ("share", share)) if v is not None}
    if isinstance(policy, dict) and policy.get("kind") == "challenger" and policy.get("task") == task:
        policy = {**policy, "backend": backend, **given, "promoted": promoted}
    else:
        if policy is None:
            incumbents = [b for b in raw["backends"] if b != backend]
            if len(incumbents) != 1:
                raise UsageError("the config has no policy and several backends: add a policy first", field="policy")
            policy = {"kind": "static", "backend": incumbents[0]}
        policy = {"kind": "challenger", "task": task, "backend": backend, "mode": "shadow", "share": 1.0, **given,
                  "promoted": promoted, "policy": policy}
    raw["policy"] = policy
    # The policy we write must build, as the router will build it: its relative paths (a cost_aware policy's
    # stats_path...) against the file's directory, not the working directory. The file keeps them relative.
    anchored = anchor_paths(raw, path)
    try:
        load_config(anchored)
        built = build_policy(anchored["policy"])
    except ConfigError as exc:  # the share given here, not one in the file: named as this function's argument
        if share is not None and exc.field == "policy.share":
            raise type(exc)(exc.message, field="share") from None
        raise
    # The incumbent as its own challenger would shadow (or split with) itself: every request run twice.
    if isinstance(built, ChallengerPolicy) and backend == incumbent(built.inner):
        raise UsageError(f"{backend!r} already answers task {task!r} (the incumbent): the challenger must be another "
                         "backend", field="challenger")
    write_config(path, raw)
    return raw


def incumbent(policy: Any) -> str | None:
    """The backend ``policy`` sends every request to first, when its config says (``static``, ``cascade``)."""
    from genroute.policies.cascade import CascadePolicy
    from genroute.policies.static import StaticPolicy

    if isinstance(policy, StaticPolicy):
        return policy.config.backend
    return policy.config.rungs[0].backend if isinstance(policy, CascadePolicy) else None
