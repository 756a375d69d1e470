"""Command line: ``genroute demo | generate | ingest | health | bench | tune | compile | graduate``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from genroute.cli_options import add_quiet, command_failed, shows_progress
from genroute.errors import ConfigError, GenrouteError, UsageError, command_error


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``genroute`` command."""
    warnings = _WarningsToStderr()
    logging.getLogger("genroute").addHandler(warnings)
    try:
        _import_from_working_directory()
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (a bench run resumes where it stopped)
        print("genroute: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): nothing to report, as for any command in a pipe
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a command the signal ended returns
    finally:
        logging.getLogger("genroute").removeHandler(warnings)


class _WarningsToStderr(logging.Handler):
    """genroute's warnings (a link skipped by an ingest, a state store outage, a plugin not used...) as lines on
    stderr: the library's logger has only a ``NullHandler``, so a command showed none of them. llama.cpp's own
    log lines (``genroute.llama_cpp``) show from ERROR up: its warnings are about its buffers, not the command."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("genroute.llama_cpp") and record.levelno < logging.ERROR:
            return
        try:
            print(f"genroute: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)  # as it is now
        except Exception:  # noqa: BLE001 - a warning that cannot be shown must not fail the command
            self.handleError(record)


def _import_from_working_directory() -> None:
    """Let a config's import paths (tools, validators, scrub hooks, scorers) find the application's modules in the
    working directory, as ``python -m genroute.cli`` does; the installed script puts its own directory there."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail on the closed pipe once more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (stdout replaced): nothing to flush
        pass


def installed_version() -> str:
    """The installed package's version (its metadata: what pip installed), else the source tree's ``__version__``
    (run from a checkout that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genroute")
    except PackageNotFoundError:
        from genroute import __version__

        return __version__


def _main(argv: Sequence[str] | None) -> int:
    # The docstring's reST quoting (``x``) is noise in a terminal.
    parser = argparse.ArgumentParser(prog="genroute", description=__doc__.replace("``", "`"))
    parser.add_argument("--version", action="version", version=f"genroute {installed_version()}",
                        help="print the installed genroute's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run every backend once on the embedded local model (offline, no key)")
    demo.add_argument("--cache-dir", help="where the demo keeps its Chroma store and LoRA adapter (default: "
                      "$GENROUTE_CACHE_DIR/demo; the model stays in $GENROUTE_CACHE_DIR/models)")
    demo.add_argument("--no-trace", action="store_true", help="do not print the span tree")
    demo.add_argument("--no-tune", action="store_true", help="do not train the tuned backend's LoRA adapter")

    gen = sub.add_parser("generate", help="answer one request with a configured router")
    gen.add_argument("input")
    gen.add_argument("--config", required=True, help="router config (YAML, TOML or JSON)")
    gen.add_argument("--backend", help="run this backend alone (no policy: none of its validators, fallbacks or "
                                       "shadows)")
    gen.add_argument("--task")
    gen.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="template variable")
    gen.add_argument("--history", metavar="FILE", help="the conversation's earlier turns, oldest first: a JSON list of "
                     "{\"role\": \"user\" | \"model\", \"text\": ...}, sent before the input (docs/requests.md)")
    gen.add_argument("--stream", action="store_true")
    gen.add_argument("--json", action="store_true", help="print the whole result as JSON (with --stream: only that)")
    gen.add_argument("--trace", action="store_true",
                     help="print the request's spans (decision, model calls, tokens, cost) to stderr")

    ingest = sub.add_parser("ingest", help="chunk, embed and store documents in a Chroma collection")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--collection", required=True)
    ingest.add_argument("--config", required=True, help="router config whose `knowledge` section names the store")
    ingest.add_argument("--kind", choices=["documents", "examples"], default="documents",
                        help="documents to chunk for RAG, or JSONL examples for ICL")
    ingest.add_argument("--chunk-tokens", type=int, default=None, help="tokens a chunk (documents; default 200)")
    ingest.add_argument("--overlap", type=int, default=None, help="tokens chunks overlap (documents; default 40)")
    ingest.add_argument("--text-field", default=None, help="JSONL field holding the text (documents; default text)")
    add_quiet(ingest)

    health = sub.add_parser("health", help="probe a configured router's dependencies: exit 0 if all answer")
    health.add_argument("--config", required=True, help="router config (YAML, TOML or JSON)")
    health.add_argument("--json", action="store_true", help="print the whole result as JSON")
    health.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="seconds each probe may take (default 2)")

    sub.add_parser("bench", help="compare backends on a labeled JSONL set (see `genroute bench --help`)",
                   add_help=False)
    sub.add_parser("tune", help="supervised fine-tuning: Vertex AI job or --local LoRA (see `genroute tune --help`)",
                   add_help=False)
    sub.add_parser("compile", help="stats file and learned model from outcome records (see `genroute compile --help`)",
                   add_help=False)
    sub.add_parser("graduate", help="graduate a task from few-shot to a tuned model (see `genroute graduate --help`)",
                   add_help=False)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in {"bench", "tune", "compile", "graduate"}:
        return _delegate(argv[0], argv[1:])
    args, unknown = parser.parse_known_args(argv)
    command = {"demo": demo, "generate": gen, "ingest": ingest, "health": health}[args.command]
    if unknown:  # argparse words them as the top parser's ("genroute: error: ..."): the command's, as any other
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command == "demo":
            from genroute.demo import run_demo

            return run_demo(cache_dir=args.cache_dir, show_trace=not args.no_trace, tune=not args.no_tune)
        if args.command == "generate":
            return _generate(args)
        if args.command == "health":
            return _health(args.config, timeout_s=args.timeout, as_json=args.json)
        return _ingest(args)
    except GenrouteError as exc:
        return command_failed(exc, command, config=getattr(args, "config", None))


def _delegate(command: str, rest: list[str]) -> int:
    try:
        if command == "bench":
            from genroute.bench.cli import bench_main

            return bench_main(rest)
        if command == "compile":
            from genroute.outcomes.cli import compile_main

            return compile_main(rest)
        if command == "graduate":
            from genroute.graduation.cli import graduate_main

            return graduate_main(rest)
        from genroute.tuning.cli import tune_main

        return tune_main(rest)
    except GenrouteError as exc:
        return command_error(exc, f"genroute {command}")


def _generate(args: argparse.Namespace) -> int:
    variables = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"expected NAME=VALUE, got {item!r}", field="--var")
        variables[name] = value
    # `--backend ''` is a backend name the request refuses, not no backend.
    fields = {k: v for k, v in (("backend", args.backend), ("task", args.task)) if v is not None}
    if variables:
        fields["variables"] = variables
    if args.history is not None:  # checked before the router is built (a local model loads for a while)
        fields["history"] = _history(args.history, args.input, fields)
    provider, spans = _trace() if args.trace else (None, None)
    try:
        _answer(args, fields, provider)
    finally:
        if spans is not None and spans.get_finished_spans():  # after the close, and for a failed request too
            from rich.console import Console

            from genroute.demo.render import span_tree

            Console(stderr=True).print(span_tree(spans.get_finished_spans()))
    return 0


def _history(path: str, input: str, fields: Mapping[str, Any]) -> list[Any]:
    """``--history FILE``'s turns, validated as the request's ``history`` (``GenerateRequest``, as ``Router.generate``
    validates it); a ``UsageError`` naming ``--history``, the file and the turn's key (``history.1.role``)."""
    from pydantic import ValidationError

    from genroute.config_errors import error_at, pydantic_validated, validator_message
    from genroute.jsonl import existing_file
    from genroute.types import GenerateRequest

    file = existing_file(path, field="--history", what="history file")
    try:
        turns = json.loads(file.read_bytes().decode("utf-8-sig"))  # a BOM (Windows tools write one) is no JSON
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})", field="--history") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text", field="--history") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON ({exc.msg}: line {exc.lineno} column {exc.colno})",
                         field="--history") from None
    try:
        request = pydantic_validated(GenerateRequest, {"input": input, **fields, "history": turns})
    except ValidationError as exc:
        error = exc.errors()[0]
        at = error_at(error)
        if at == "history" or at.startswith("history."):
            hint = " (a JSON list of {\"role\": \"user\" | \"model\", \"text\": ...})" if at == "history" else ""
            raise UsageError(f"{path}: {at}: {validator_message(error)}{hint}", field="--history") from None
        raise UsageError(validator_message(error), field=at or None) from None  # as the router words it
    return request.history or []


def _answer(args: argparse.Namespace, fields: dict[str, Any], provider: Any) -> None:
    from genroute.router import Router

    with Router.from_config(args.config, tracer_provider=provider) as router:
        if args.stream:
            result = None
            for chunk in router.stream(args.input, **fields):
                if chunk.done:
                    result = chunk.result
                elif not args.json:  # with --json, stdout is one JSON document (the result holds the text)
                    print(chunk.text, end="", flush=True)
            if not args.json:
                print()
        else:
            result = router.generate(args.input, **fields)
            if not args.json:
                print(result.text)
        if args.json and result is not None:
            print(json.dumps(result.model_dump(mode="json"), indent=2))


def _health(config: str, *, timeout_s: float | None, as_json: bool) -> int:
    """``genroute health``: build the router, probe it, print a line per dependency (or JSON); 0 when ready."""
    from genroute.router.health import PROBE_TIMEOUT_S
    from genroute.router.learning import check_seconds
    from genroute.router.router import Router

    if timeout_s is not None:
        check_seconds(timeout_s, "--timeout")
    with Router.from_config(config) as router:
        health = router.health(timeout_s=timeout_s or PROBE_TIMEOUT_S)
    if as_json:
        print(health.model_dump_json(indent=2))
        return 0 if health.ready else 1
    width = max((len(d.name) for d in health.dependencies), default=0)
    for d in health.dependencies:
        print(f"{'ok' if d.ok else 'FAIL':<4}  {d.name:<{width}}  {d.kind:<9}  {d.latency_ms:8.1f} ms  "
              f"{d.detail if d.ok else d.error}")
    if health.refresh is not None and not health.refresh.ok:
        print(f"last scheduled refresh failed: {health.refresh.error}")
    print("ready" if health.ready else "not ready")
    return 0 if health.ready else 1


def _trace() -> tuple[Any, Any]:
    """A tracer provider that keeps the spans of this process, and what it keeps them in."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider, spans


def _ingest(args: argparse.Namespace) -> int:
    from genroute.knowledge.ingest_command import ingest_paths

    store_config, engines, pricing = None, None, None
    if args.config:
        from genroute.config import load_config
        from genroute.runtime.pricing import Pricing

        config = load_config(args.config)
        if config.knowledge is None:  # else told that the store "needs a place", as if the section were there
            raise ConfigError(f"{args.config} has no `knowledge` section to ingest into: add one (`knowledge: {{}}` "
                              "keeps an embedded store beside the config file)", field="knowledge")
        store_config = config.knowledge
        pricing = Pricing(config.pricing)  # the embeddings are priced as the router would price them
        engines = _ConfiguredEngines(config.engines)
    report = ingest_paths(args.paths, args.collection, store_config=store_config, engines=engines,
                          kind=args.kind, chunk_tokens=args.chunk_tokens, overlap=args.overlap,
                          text_field=args.text_field, pricing=pricing, progress=shows_progress(args))
    print(report.model_copy(update={"seconds": round(report.seconds, 2)}))  # not seconds=1.4413623190048384
    return 0


class _ConfiguredEngines(Mapping[str, Any]):
    """A config's engines by name, each built when first looked up: an ingest builds only the one its store's
    embedder names (another, a Vertex engine without its project, may not build here, and has nothing to do with
    ingesting; nothing is sent), and the store's build is the one place that refuses an unknown name, listing
    these."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            from genroute.config import build_kind, validate_kind

            engine_cls, engine_config = validate_kind("engines", self._raw[name], field=f"engines.{name}")
            self._built[name] = build_kind(engine_cls, name, engine_config, field=f"engines.{name}")
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


if __name__ == "__main__":  # pragma: no cover  (last: `python -m genroute.cli` runs this file top to bottom)
    raise SystemExit(main())
