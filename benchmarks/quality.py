"""Quality, latency and cost of each technique on the embedded Gemma 3 270M, per public task.

    python benchmarks/quality.py --limit 20                 # a few minutes on 2 cores
    python benchmarks/quality.py --limit 340 --tasks sentiment,banking77   # the slow full run, by hand
    python benchmarks/quality.py --limit 50 --bfcl-limit 30 --tuned sentiment=S.gguf --tuned banking77=B.gguf

A tuned adapter is trained on the task's ``examples.jsonl`` (the pool ICL draws from, disjoint from eval), e.g.
``genroute tune --local benchmarks/data/sentiment/examples.jsonl --config C.yaml --name s --out DIR
--epochs 4 --learning-rate 5e-4 --threads 1`` (banking77: ``--epochs 5 --learning-rate 1e-3``).

Tasks (data in benchmarks/data/, see its README for sources and licenses):

- sentiment: DynaSent round 2, binary — prompt-template vs ICL (kNN, 4 shots) [vs tuned with --tuned];
- banking77: 20 intents — prompt-template (labels listed) vs ICL (kNN, 4 shots) [vs tuned with --tuned];
- xquad: extractive QA — closed-book prompt-template vs ICL (kNN, 2 shots) vs RAG over the 240-passage corpus;
- bfcl: function calling — function-calling backend (the harness gives it each record's tools as stubs;
  schema-constrained call) vs prompt-template asking for a JSON call list;
- nlupp: text -> JSON frame ``{"intents": [...], "slots": {...}}`` (NLU++ banking and hotels) — prompt-template
  vs ICL (kNN, 4 shots), both schema-constrained to the intent and slot names; scored by ``frame_f1``.

Each task runs through ``genroute.bench`` (resumable: rerun with the same --out to continue), compiles the
cost_aware stats file and the learned policy, and compares them with each single backend on a held-out
split. Local calls are free, so costs are the cloud-equivalent (same tokens on gemini-2.5-flash).
At the end it prints (and writes to OUT/summary.md) two cross-task tables ready for RESULTS.md: every
backend with latency p50/p95 and time to first token, and every task's compiled policies against every
single backend on the held-out split.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute.bench import BenchReport, abench
from genroute.bench.harness import ingest_corpus
from genroute.bench.record_tools import placeholder
from genroute.router.router import Router

DATA = Path(__file__).resolve().parent / "data"  # the default of --data
SENTIMENT = ("negative", "positive")


def label_set(data: Path, task: str) -> tuple[str, ...]:
    """The task's labels, as its eval records list them (``metadata.label_set``)."""
    with (data / task / "eval.jsonl").open(encoding="utf-8") as fh:
        return tuple(json.loads(fh.readline())["metadata"]["label_set"])


def frame_schema(data: Path) -> dict[str, Any]:
    """A JSON schema for NLU++ frames: the intents and slot names the task's records use."""
    intents, slots = set(), set()
    for name in ("eval.jsonl", "examples.jsonl"):
        for line in (data / "nlupp" / name).read_text(encoding="utf-8").splitlines():
            frame = json.loads(json.loads(line)["output"])
            intents.update(frame["intents"])
            slots.update(frame["slots"])
    return {"type": "object", "required": ["intents", "slots"], "properties": {
        "intents": {"type": "array", "items": {"type": "string", "enum": sorted(intents)}},
        "slots": {"type": "object", "properties": {s: {"type": "string"} for s in sorted(slots)},
                  "additionalProperties": False}}}


def choice(labels: tuple[str, ...]) -> dict[str, Any]:
    """Generation settings that constrain the answer to one of ``labels`` (a JSON string enum).

    The base 270M model continues text rather than following instructions; constraining the output to the
    label set makes every technique answer in the same form, so the comparison measures the prompt.
    """
    return {"max_output_tokens": 16, "response_schema": {"type": "string", "enum": list(labels)}}


def engine_config(args: argparse.Namespace, lora: str | None = None) -> dict[str, Any]:
    engine: dict[str, Any] = {"kind": "local", "max_output_tokens": 64}
    if args.threads:
        engine["n_threads"] = args.threads
    if lora:
        # The local LoRA trainer renders prompts with the Gemma chat template; serve them the same way.
        engine.update(lora_path=lora, prompt_format="gemma")
    return engine


def task_backends(task: str, data: Path = DATA) -> tuple[dict[str, dict[str, Any]], str]:
    """(backends, scorer) of one task; every backend runs on the ``local`` engine."""
    base = {"engine": "local", "model": "gemma-3-270m"}
    if task == "sentiment":
        return {
            "prompt_template": {**base, "kind": "prompt_template", "generation": choice(SENTIMENT),
                                "template": "Review: {{ input }}\nSentiment (positive or negative):"},
            "icl": {**base, "kind": "icl", "collection": "bench-sentiment-examples", "k": 4,
                    "generation": choice(SENTIMENT),
                    "instructions": "Label each review as positive or negative.",
                    "example_template": "Review: {{ input }}\nSentiment: {{ output }}",
                    "query_template": "Review: {{ input }}\nSentiment:", "stop": ["\nReview:"]},
        }, "label_accuracy"
    if task == "banking77":
        banking = label_set(data, task)
        labels = ", ".join(banking)
        return {
            "prompt_template": {**base, "kind": "prompt_template", "generation": choice(banking),
                                "template": f"Intents: {labels}.\nQuestion: {{{{ input }}}}\nIntent:"},
            "icl": {**base, "kind": "icl", "collection": "bench-banking77-examples", "k": 4,
                    "generation": choice(banking),
                    "instructions": f"Intents: {labels}.",
                    "example_template": "Question: {{ input }}\nIntent: {{ output }}",
                    "query_template": "Question: {{ input }}\nIntent:", "stop": ["\nQuestion:"]},
        }, "label_accuracy"
    if task == "xquad":
        answer = {"max_output_tokens": 16, "stop_sequences": ["\n"]}
        return {
            "prompt_template": {**base, "kind": "prompt_template", "generation": answer,
                                "template": "Question: {{ input }}\nShort answer:"},
            "icl": {**base, "kind": "icl", "collection": "bench-xquad-examples", "k": 2, "generation": answer,
                    "example_template": "Question: {{ input }}\nShort answer: {{ output }}",
                    "query_template": "Question: {{ input }}\nShort answer:", "stop": ["\nQuestion:"]},
            "rag": {**base, "kind": "rag", "collection": "bench-xquad-corpus", "k": 2, "context_tokens": 700,
                    "generation": answer,
                    "template": "{% for doc in documents %}{{ doc.text }}\n\n{% endfor %}"
                                "Question: {{ input }}\nShort answer (copied from the text above):"},
        }, "token_f1"
    if task == "bfcl":
        call = {"type": "object", "required": ["name", "arguments"],
                "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}}}
        calls = {"type": "array", "items": call}
        return {
            # The harness gives this backend each record's own tools (schema-only stubs that record the
            # call); its configured tool is a placeholder. One step: BFCL scores the first turn's calls.
            "function_calling": {**base, "kind": "function_calling", "tools": ["placeholder"], "max_steps": 1,
                                 "on_max_steps": "answer", "generation": {"max_output_tokens": 96}},
            "prompt_template": {**base, "kind": "prompt_template",
                                "generation": {"max_output_tokens": 96, "response_schema": calls},
                                "template": "Functions: {{ metadata.tools | tojson }}\n"
                                            "Request: {{ input }}\nCalls as JSON [{\"name\", \"arguments\"}] "
                                            "([] if no function fits):"},
        }, "function_call"
    if task == "nlupp":
        frame = {"max_output_tokens": 96, "response_schema": frame_schema(data)}
        ask = "Intents and slots as JSON {\"intents\": [...], \"slots\": {...}}"
        return {
            "prompt_template": {**base, "kind": "prompt_template", "generation": frame,
                                "template": f"Message: {{{{ input }}}}\n{ask}:"},
            "icl": {**base, "kind": "icl", "collection": "bench-nlupp-examples", "k": 4, "generation": frame,
                    "example_template": "Message: {{ input }}\nFrame: {{ output }}",
                    "query_template": "Message: {{ input }}\nFrame:", "stop": ["\nMessage:"]},
        }, "frame_f1"
    raise SystemExit(f"unknown task {task!r}")


def config(args: argparse.Namespace, task: str, store: Path) -> tuple[dict[str, Any], str]:
    backends, scorer = task_backends(task, args.data)
    engines = {"local": engine_config(args)}
    lora = dict(item.split("=", 1) for item in args.tuned).get(task)
    if lora:
        engines["tuned"] = engine_config(args, lora)
        # Same constrained output as the other backends: a briefly tuned 270M model learns the label before it
        # learns to stop.
        generation = next(iter(backends.values())).get("generation")
        backends["tuned"] = {"kind": "tuned", "engine": "tuned", "model": "gemma-3-270m-tuned",
                             "base_model": "gemma-3-270m", **({"generation": generation} if generation else {})}
    first = next(iter(backends))
    return {"engines": engines, "backends": backends, "knowledge": {"path": str(store)},
            "policy": {"kind": "static", "backend": first}}, scorer


async def run_task(args: argparse.Namespace, task: str) -> BenchReport:
    out = Path(args.out) / task
    cfg, scorer = config(args, task, Path(args.store))
    limit = args.bfcl_limit if task == "bfcl" and args.bfcl_limit is not None else args.limit
    tools = {"placeholder": placeholder} if task == "bfcl" else None
    async with Router.from_config(cfg, tools=tools) as router:
        if "icl" in cfg["backends"]:
            from genroute.knowledge.examples import aload_examples

            await aload_examples(router.resources.knowledge, [args.data / task / "examples.jsonl"],
                                 collection=cfg["backends"]["icl"]["collection"])
        if task == "xquad":
            await ingest_corpus(router, args.data / task / "corpus.jsonl", "bench-xquad-corpus")
        # The path and limit go to the harness, so a rerun with a larger --limit only adds records.
        report = await abench(router, args.data / task / "eval.jsonl", limit=limit, task=task,
                              backends=list(cfg["backends"]), scorer=scorer, out_dir=out,
                              concurrency=args.concurrency, seed=args.seed, progress=not args.quiet,
                              command=" ".join(sys.argv))
    return report


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _per_1k(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.4f}"


def backends_table(reports: Sequence[tuple[str, BenchReport]]) -> str:
    """Every backend of every task: quality, latency p50/p95, TTFT, tokens, cloud-equivalent cost, failures."""
    lines = ["| task | backend | n | quality (95 % CI) | p50 s | p95 s | TTFT p50 s | input tokens | "
             "cloud-equivalent $/1k | failures |", "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for task, report in reports:
        for i, s in enumerate(report.summaries):
            fails = ", ".join(f"{k}: {v}" for k, v in sorted(s.failures.items())) or "0"
            lines.append(f"| {f'{task} ({s.metric})' if i == 0 else ''} | {s.backend} | {s.n} | "
                         f"{s.quality:.3f} [{s.quality_ci[0]:.3f}, {s.quality_ci[1]:.3f}] | "
                         f"{s.latency_p50_s:.3f} | {s.latency_p95_s:.3f} | {_seconds(s.ttft_p50_s)} | "
                         f"{s.input_tokens:.1f} | {_per_1k(s.cloud_equivalent_per_request_usd)} | {fails} |")
    return "\n".join(lines) + "\n"


def compiled_table(reports: Sequence[tuple[str, BenchReport]]) -> str:
    """Per task, on its held-out split: every single backend, the compiled policies and the oracle."""
    lines = ["| task (held-out n) | router | quality | cost $/1k | p50 s | routed to |",
             "|---|---|---:|---:|---:|---|"]
    for task, report in reports:
        compiled = report.compiled
        if compiled is None:
            lines.append(f"| {task} | not compiled (too few records) | | | | |")
            continue
        for i, row in enumerate(compiled.rows):
            picks = ", ".join(f"{b}: {n}" for b, n in sorted(row.picks.items())) or "–"
            lines.append(f"| {f'{task} ({compiled.n_held_out})' if i == 0 else ''} | {row.name} | "
                         f"{row.quality:.3f} | {row.cost_per_request_usd * 1000:.4f} | {row.latency_p50_s:.3f} | "
                         f"{picks} |")
    basis = {r.compiled.cost_basis for _, r in reports if r.compiled is not None}
    return "\n".join(lines) + f"\n\nCost basis: {', '.join(sorted(basis)) or '–'}.\n"


def paired_table(reports: Sequence[tuple[str, BenchReport]]) -> str:
    """Per task, every backend pair on all its records and each compiled policy vs every single backend on the
    held-out split: paired difference, 95 % CI, McNemar p, its Holm-adjusted p over the task's split (the bench
    report's family), smallest detectable difference, verdict (after the correction)."""
    lines = ["| task | split (n) | A | B | A − B [95 % CI, unadjusted] | McNemar p | Holm p (m) | "
             "smallest detectable | verdict |", "|---|---|---|---|---|---:|---:|---:|---|"]
    for task, report in reports:
        for split, comparisons in (("all", report.comparisons), ("held-out", report.compiled_comparisons)):
            for c in comparisons:
                p = "–" if c.mcnemar_p is None else f"{c.mcnemar_p:.3g}"
                holm = "–" if c.adjusted_p is None else f"{c.adjusted_p:.3g} ({c.family_size})"
                lines.append(f"| {task} | {split} ({c.n}) | {c.a} | {c.b} | {c.difference:+.3f} "
                             f"[{c.ci[0]:+.3f}, {c.ci[1]:+.3f}] | {p} | {holm} | {c.min_detectable:.3f} | "
                             f"{c.short} |")
    return "\n".join(lines) + "\n"


def load() -> str:
    """The 1/5/15-minute load averages, for the record: timings on a shared machine depend on them."""
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=20, help="records per task (seeded sample)")
    parser.add_argument("--bfcl-limit", type=int, default=None,
                        help="records for bfcl (schema-constrained calls are slow on CPU; default: --limit)")
    parser.add_argument("--tasks", default="sentiment,banking77,xquad,bfcl,nlupp")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="task sets: DIR/TASK/{eval,examples}.jsonl (default: benchmarks/data in the repository)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1, help="the local engine runs one call at a time")
    # Not 2 by default: on 2 busy cores a 2-thread llama.cpp took ~2.5 s per decoded token (1 thread: ~50 ms),
    # which made a schema-constrained BFCL call take minutes. The engine's default is half the cores.
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the engine's)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "quality"))
    parser.add_argument("--store", default=None, help="Chroma directory (default: OUT/chroma)")
    parser.add_argument("--tuned", action="append", default=[], metavar="TASK=LORA.gguf",
                        help="add a tuned backend: the local model with this LoRA adapter")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    args.store = args.store or str(Path(args.out) / "chroma")
    command = f"python benchmarks/quality.py {' '.join(sys.argv[1:])}"
    print(f"# command: {command}\n\nload average at start (1/5/15 min): {load()}\n")
    reports: list[tuple[str, BenchReport]] = []
    notes = []
    begun = time.perf_counter()
    for task in (t.strip() for t in args.tasks.split(",")):
        started = time.perf_counter()
        report = asyncio.run(run_task(args, task))
        limit = args.bfcl_limit if task == "bfcl" and args.bfcl_limit is not None else args.limit
        note = f"{task}: limit {limit}, seed {args.seed}, {time.perf_counter() - started:.0f} s, load after {load()}"
        notes.append(note)
        print(f"## {note}\n")
        print(report.markdown(), flush=True)
        reports.append((task, report))
    advice = [f"- {task}: {r.advice.text}" for task, r in reports if r.advice is not None]
    summary = (f"`{command}` — {time.perf_counter() - begun:.0f} s wall; load average at the end {load()}.\n\n"
               + "".join(f"- {n}\n" for n in notes)
               + "\n" + backends_table(reports)
               + "\nPaired differences on the same records (a win only when the 95 % CI excludes 0 and, for 0/1 "
                 "scores, McNemar agrees):\n\n"
               + paired_table(reports)
               + "\nCompiled policies against every single backend, on each task's held-out split:\n\n"
               + compiled_table(reports)
               + ("\nGraduation advisor:\n\n" + "\n".join(advice) + "\n" if advice else ""))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.md").write_text(summary, encoding="utf-8")
    print("# Summary (also in OUT/summary.md)\n\n" + summary)


if __name__ == "__main__":
    main()
