"""``genroute tune``: a Vertex AI supervised tuning job, or ``--local`` LoRA on the embedded Gemma.

    genroute tune DATA.jsonl --base-model gemini-2.5-flash --config genroute.yaml --name sentiment \\
        --staging-uri gs://BUCKET/tuning
    genroute tune --resume projects/P/locations/L/tuningJobs/J --base-model ... --config ... --name ...
    genroute tune DATA.jsonl --dry-run OUT_DIR ...      # check, split and convert only; nothing is sent
    genroute tune --local DATA.jsonl --config genroute.yaml --name sentiment [--rank 4 --alpha 8 \\
        --target-modules q_proj,v_proj --max-seq-len 128 --batch-size 4 --threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from genroute.cli_options import add_quiet, command_failed, shows_progress
from genroute.config_errors import pydantic_validated, validator_message
from genroute.errors import GenrouteError, UsageError


def _parser() -> argparse.ArgumentParser:
    # The docstring's reST quoting (``x``) is noise in a terminal.
    p = argparse.ArgumentParser(prog="genroute tune", description=__doc__.replace("``", "`"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", help="JSONL examples: one {\"input\", \"output\"} object per line")
    p.add_argument("--config", required=True, help="router config (.yaml/.json) to add the tuned backend to")
    p.add_argument("--name", required=True, help="name of the new tuned backend")
    p.add_argument("--replace", action="store_true", help="overwrite an existing backend of that name")
    p.add_argument("--local", action="store_true", help="LoRA-tune the embedded Gemma 3 270M on this machine")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int)
    p.add_argument("--min-examples", type=int, help="fewest examples the data may hold (default: 10; --local: 2)")
    add_quiet(p)
    p.add_argument("--task", action="append", dest="tasks", metavar="TASK",
                   help="a task the tuned backend is for (repeatable): a ladder policy routes it there")
    cloud = p.add_argument_group("Vertex AI")
    cloud.add_argument("--base-model", help="model to tune, e.g. gemini-2.5-flash (required unless --local)")
    cloud.add_argument("--engine", help="gemini engine with `vertex:` in the config; default: the only such one")
    cloud.add_argument("--staging-uri", help="gs://bucket/prefix the datasets are uploaded to")
    cloud.add_argument("--system", help="a minimal system line, used in training and by the backend")
    cloud.add_argument("--learning-rate-multiplier", type=float)
    cloud.add_argument("--adapter-size", help="e.g. ADAPTER_SIZE_FOUR")
    cloud.add_argument("--poll-interval", type=float, help="seconds between status checks (default 30)")
    cloud.add_argument("--timeout", type=float, help="stop waiting after this many seconds (the job keeps running)")
    cloud.add_argument("--resume", metavar="JOB", help="wait for an existing tuning job instead of starting one")
    cloud.add_argument("--dry-run", metavar="DIR", help="write the converted train/validation JSONL to DIR and stop")
    local = p.add_argument_group("--local")
    local.add_argument("--out", help="directory for the adapter (default: .genroute/tuned/NAME next to the config)")
    local.add_argument("--rank", type=int, help="LoRA rank (default: LocalTuneConfig, 8)")
    local.add_argument("--alpha", type=float, help="LoRA alpha; the update is scaled by alpha/rank (default 16)")
    local.add_argument("--target-modules", help="comma-separated, e.g. q_proj,v_proj (default: q,k,v,o_proj)")
    local.add_argument("--learning-rate", type=float, help="(default: LocalTuneConfig, 1e-3)")
    local.add_argument("--max-seq-len", type=int, help="tokens per example; longer inputs are cut (default 256)")
    local.add_argument("--batch-size", type=int, help="(default: LocalTuneConfig, 8)")
    local.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    local.add_argument("--max-steps", type=int)
    return p


def tune_main(argv: list[str]) -> int:
    """Entry point of ``genroute tune``; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _refuse_other_mode(args)
        return _local(args) if args.local else _vertex(args)
    except GenrouteError as exc:
        return command_failed(exc, parser, config=args.config)


#: The flags that only one kind of run reads (the other would ignore them).
_ONLY = {"Vertex AI": ("--base-model", "--engine", "--staging-uri", "--system", "--learning-rate-multiplier",
                       "--adapter-size", "--poll-interval", "--timeout", "--resume", "--dry-run"),
         "--local": ("--out", "--rank", "--alpha", "--target-modules", "--learning-rate", "--max-seq-len",
                     "--batch-size", "--threads", "--max-steps")}


def _refuse_other_mode(args: argparse.Namespace) -> None:
    """``UsageError`` naming a flag given for the other kind of run than the one asked for: it would be ignored (a
    ``--dry-run`` with ``--local`` would start the training it was meant to avoid)."""
    other = "Vertex AI" if args.local else "--local"
    for flag in _ONLY[other]:
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            raise UsageError(f"is for {other} runs only; " + ("leave out --local" if args.local else "add --local"),
                             field=flag)


def _vertex(args: argparse.Namespace) -> int:
    from rich.console import Console

    from genroute.jsonl import output_dir, write_jsonl
    from genroute.tuning.vertex import VertexTuningSettings, prepare_data, run_vertex_tuning

    if not args.base_model:
        raise UsageError("required for a Vertex AI job", field="--base-model")
    fields = {
        "base_model": args.base_model, "name": args.name, "engine": args.engine, "staging_uri": args.staging_uri,
        "system": args.system, "validation_fraction": args.validation_fraction, "seed": args.seed,
        "min_examples": args.min_examples, "epochs": args.epochs,
        "learning_rate_multiplier": args.learning_rate_multiplier, "adapter_size": args.adapter_size,
        "poll_interval_s": args.poll_interval, "timeout_s": args.timeout, "replace": args.replace,
        "tasks": tuple(args.tasks) if args.tasks else None, "progress": shows_progress(args),
    }
    settings = settings_from_flags(VertexTuningSettings, {k: v for k, v in fields.items() if v is not None})
    console = Console(stderr=True)
    if args.dry_run:
        if not args.data:
            raise UsageError("a JSONL data file is required", field="data")
        prepared = prepare_data(args.data, settings)
        out = output_dir(args.dry_run, field="--dry-run")
        write_jsonl(out / f"{args.name}-train.jsonl", prepared.train_rows)
        write_jsonl(out / f"{args.name}-validation.jsonl", prepared.validation_rows)
        console.print(f"{len(prepared.train)} training and {len(prepared.validation)} validation examples "
                      f"written to {out} (nothing sent)")
        return 0
    result = run_vertex_tuning(args.data, settings, config_path=args.config, resume=args.resume, console=console)
    console.print(f"[green]tuned[/green] {result.endpoint or result.model} -> backend {result.backend!r} "
                  f"in {args.config} (job {result.job})")
    return 0


def _local(args: argparse.Namespace) -> int:
    from rich.console import Console

    from genroute.config import anchor_paths
    from genroute.jsonl import check_output_dir
    from genroute.tuning.config_file import check_target
    from genroute.tuning.local_lora import (ADAPTER_FILE, LocalTuneConfig, check_adapter_unserved,
                                            register_tuned_backend, tune_local)

    if not args.data:
        raise UsageError("a JSONL data file is required", field="data")
    targets = None if args.target_modules is None else tuple(
        name.strip() for name in args.target_modules.split(",") if name.strip())
    fields = {"validation_fraction": args.validation_fraction, "seed": args.seed, "epochs": args.epochs,
              "rank": args.rank, "alpha": args.alpha, "target_modules": targets,
              "learning_rate": args.learning_rate, "max_seq_len": args.max_seq_len, "batch_size": args.batch_size,
              "threads": args.threads, "max_steps": args.max_steps, "min_examples": args.min_examples,
              "progress": shows_progress(args)}
    config = settings_from_flags(LocalTuneConfig, {k: v for k, v in fields.items() if v is not None})
    # Before minutes of training, not after; a config file that does not exist yet is created.
    raw = check_target(args.config, args.name, replace=args.replace, engines=[f"{args.name}_engine"], missing_ok=True)
    out = Path(args.out) if args.out else Path(args.config).resolve().parent / ".genroute" / "tuned" / args.name
    check_output_dir(out, field="--out")
    # Another tuned backend's adapter (tuned into the same --out before) is not replaced; --replace re-tunes its own.
    engines = anchor_paths(raw, Path(args.config)).get("engines") or {}
    check_adapter_unserved({n: e.get("lora_path") for n, e in engines.items()
                            if isinstance(e, dict) and not (args.replace and n == f"{args.name}_engine")},
                           out / ADAPTER_FILE, field="--out")
    result = tune_local(args.data, out, config=config)
    # Written relative to the config file, unless the user gave --out as an absolute path.
    register_tuned_backend(args.config, args.name, result.adapter_path, result.base_model_path,
                           tasks=args.tasks or (), replace=args.replace,
                           keep_absolute=bool(args.out) and Path(args.out).is_absolute())
    console = Console(stderr=True)
    loss = f"{result.validation_loss:.4f}" if result.validation_loss is not None else "n/a"
    console.print(f"[green]tuned[/green] {result.adapter_path} ({result.train_examples} examples, "
                  f"{result.train_seconds:.0f} s, validation loss {loss}) -> backend {args.name!r} in {args.config}")
    return 0


def settings_from_flags(cls: type, fields: dict[str, object]) -> Any:
    """``cls(**fields)``; a bad value is a ``UsageError`` naming the setting (``poll_interval_s``), which the command
    names as the flag that gave it (``--poll-interval``: ``cli_options.as_typed``)."""
    from pydantic import ValidationError

    try:
        return pydantic_validated(cls, fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise UsageError(validator_message(error), field=str(error["loc"][0]) if error["loc"] else None) from None
