"""``genroute demo``: one request through each of the five backends on the embedded local model, offline (four
without a LoRA adapter: ``--no-tune``, or no ``tune-local`` extra)."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path
from typing import Any

from genroute.demo.tune import TRAIN_DATA, adapter_path, summary_line, train_review_adapter, tuning_available

DATA = files("genroute.demo") / "data"
DOCS = "demo_handbook"
EXAMPLES = "demo_sentiment"

#: (request fields, what it shows). The ladder policy routes each by its signals.
REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"input": "What is the capital of France?"}, "plain prompt"),
    ({"input": "The kettle is lovely and boils in no time.", "task": "sentiment"}, "few-shot examples"),
    ({"input": "How long is the warranty of the Nimbus Kettle?", "metadata": {"needs_knowledge": True}},
     "grounded in documents"),
    ({"input": "What is the weather in Paris?", "metadata": {"needs_tools": True}}, "calls a tool"),
    # A bare review, no instructions: the LoRA-tuned model answers with the label word alone.
    ({"input": "The lid cracked after a week and the kettle now leaks.", "task": "review_rating"}, "tuned model"),
]


def get_weather(city: str) -> dict[str, Any]:
    """Current weather for a city (a bundled stand-in for a real weather service)."""
    temperature = 12 + sum(map(ord, city.lower())) % 15
    return {"city": city, "temperature_c": temperature, "conditions": "partly cloudy"}


def demo_config(cache: Path, adapter: Path | None) -> dict[str, Any]:
    """The demo's router config: the local engine, and base+LoRA with the tuned backend when an adapter exists
    (without one there is no tuned model: the base model would only pass for one)."""
    # Greedy, short, one line: the base 270M model rambles past the first line.
    gen = {"temperature": 0.0, "max_output_tokens": 32, "stop_sequences": ["\n"]}
    config: dict[str, Any] = {
        "engines": {"local": {"kind": "local"}},
        "knowledge": {"path": str(store_path(cache))},
        "backends": {
            "template": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                         "system": "Answer in one short sentence.", "template": "{{ input }}", "generation": gen},
            "few_shot": {"kind": "icl", "engine": "local", "model": "gemma-3-270m", "collection": EXAMPLES,
                         "selector": "knn", "k": 4, "tasks": ["sentiment"],
                         "generation": {**gen, "max_output_tokens": 4}},
            "docs": {"kind": "rag", "engine": "local", "model": "gemma-3-270m", "collection": DOCS, "k": 2,
                     "generation": gen},
            "tools": {"kind": "function_calling", "engine": "local", "model": "gemma-3-270m",
                      "tools": ["get_weather"], "max_steps": 2, "on_max_steps": "answer", "generation": gen},
        },
        "policy": {"kind": "ladder", "min_examples": 8},
    }
    if adapter is not None:
        config["engines"]["local_tuned"] = {"kind": "local", "prompt_format": "gemma", "lora_path": str(adapter)}
        config["backends"]["tuned"] = {"kind": "tuned", "engine": "local_tuned", "model": "gemma-3-270m-review-lora",
                                       "base_model": "gemma-3-270m", "tasks": ["review_rating"], "generation": gen}
    return config


def store_path(cache: Path) -> Path:
    """The demo's embedded Chroma, one per embedder model (a store filled by another embedder is refused)."""
    from genroute.knowledge.embedders import LOCAL_MODEL

    return cache / f"chroma-{LOCAL_MODEL}"


#: What to do instead of ``run_demo`` where an event loop runs (a notebook): the demo has no async form.
_INSTEAD = "run `genroute demo` in a terminal"


def run_demo(cache_dir: str | None = None, show_trace: bool = True, tune: bool = True) -> int:
    """Run the demo and print a table of decisions, answers, latency, tokens and cost, then the span tree.

    With ``tune`` and the ``tune-local`` extra installed, the tuned backend's LoRA adapter is trained
    on first run (once per cache directory); otherwise there is no tuned backend (the other four run).
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from rich.markup import escape

    from genroute.cache import cache_dir as default_cache
    from genroute.cache import owned_dir
    from genroute.demo.render import DemoConsole, results_table, span_tree
    from genroute.router import Router
    from genroute.runtime.portal import refuse_inside_loop, run_sync

    refuse_inside_loop("run_demo", _INSTEAD)  # before the adapter's training and the model's loading
    console = DemoConsole(width=None if DemoConsole().is_terminal else 150)
    # What the demo loads from its cache (the adapter, the Chroma store) must be what only this user could write.
    field = "--cache-dir" if cache_dir else "GENROUTE_CACHE_DIR"
    cache = owned_dir(Path(cache_dir), field=field, writable=True) if cache_dir else default_cache("demo", writable=True)
    owned_dir(cache, store_path(cache).name, field=field)  # made here 0700: Chroma would make it as the umask says
    # Paths, requests and error messages go through escape(): they are data, and "[" starts rich markup.
    console.print(f"[bold]genroute demo[/] — local Gemma 3 270M, embedded Chroma at {escape(str(store_path(cache)))}")
    adapter = _find_adapter(cache, field)
    can_tune = tuning_available()
    if adapter is None and tune and can_tune:
        adapter = _train_adapter(console, cache)
    elif adapter is not None:
        console.print(f"[dim]tuned backend: LoRA adapter {escape(str(adapter))} (delete it to train again)[/]")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = demo_config(cache, adapter)
    with Router.from_config(config, tools={"get_weather": get_weather}, tracer_provider=provider) as router:
        with console.status("loading the bundled documents and examples into Chroma"):
            run_sync(_load_knowledge(router.resources.knowledge), "run_demo", instead=_INSTEAD)
            router.refresh()
        rows = []
        for fields, shows in REQUESTS:
            with console.status(escape(f"{shows}: {fields['input']}")):
                rows.append((fields, shows, router.generate(**fields)))
    console.print(results_table(rows))
    if adapter is None:
        how = ("run `genroute demo` without --no-tune to train it" if can_tune else
               "train one with `genroute tune --local DATA.jsonl` (extra `tune-local`)")
        console.print(f"[dim]note: no LoRA adapter found, so there is no tuned backend; {how}.[/]")
    if show_trace:
        console.print(span_tree(exporter.get_finished_spans()))
    return 0


async def _load_knowledge(store: Any) -> None:
    """Ingest the bundled handbook and load the example set (idempotent: stored chunks are skipped)."""
    from genroute.knowledge.examples import aload_examples
    from genroute.knowledge.ingest import aingest

    await aingest(store, [str(DATA / "nimbus_handbook.md")], collection=DOCS, chunk_tokens=64, overlap=8)
    await aload_examples(store, [str(DATA / "sentiment_examples.jsonl")], collection=EXAMPLES)


def _find_adapter(cache: Path, field: str) -> Path | None:
    from genroute.cache import check_owned

    adapter = adapter_path(cache)
    return check_owned(adapter, field=field) if adapter.is_file() else None


def _train_adapter(console: Any, cache: Path) -> Path | None:
    """Train the review adapter with a progress bar; on failure say why and go on without a tuned backend."""
    from rich.markup import escape

    from genroute.errors import GenrouteError

    console.print(f"training the review_rating LoRA adapter on {TRAIN_DATA} (once, ~2 min on 2 cores)")
    try:
        summary = train_review_adapter(cache)
    except (GenrouteError, ImportError, OSError, RuntimeError) as exc:
        # The other four backends do not need the adapter: the demo still runs, minus the tuning.
        console.print(f"[yellow]LoRA training failed ({type(exc).__name__}: {escape(str(exc))})[/]")
        return None
    console.print(escape(summary_line(summary)))
    return adapter_path(cache)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(asyncio.run(asyncio.to_thread(run_demo)))
