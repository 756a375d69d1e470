"""Quality, latency and cost of each technique on the embedded Gemma 3 270M, per public task.

    python benchmarks/quality.py --limit 20                 # a few minutes on 2 cores
    python benchmarks/quality.py --limit 150 --tasks sentiment,banking77   # the slow full run, by hand

Tasks (data in benchmarks/data/, see its README for sources and licenses):

- sentiment: DynaSent round 2, binary — prompt-template vs ICL (kNN, 4 shots) [vs tuned with --tuned];
- banking77: five intents — prompt-template (labels listed) vs ICL (kNN, 4 shots);
- xquad: extractive QA — closed-book prompt-template vs ICL (kNN, 2 shots) vs RAG over the 240-passage corpus;
- bfcl: function calling — function-calling backend (the harness gives it each record's tools as stubs;
  schema-constrained call) vs prompt-template asking for a JSON call list.

Each task runs through ``genroute.bench`` (resumable: rerun with the same --out to continue), compiles the
cost_aware stats file and the learned policy, and compares them with each single backend on a held-out
split. Local calls are free, so costs are the cloud-equivalent (same tokens on gemini-2.5-flash).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from genroute.bench import abench
from genroute.bench.harness import ingest_corpus
from genroute.bench.record_tools import placeholder
from genroute.router.router import Router

DATA = Path(__file__).resolve().parent / "data"
BANKING = ("card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "cash_withdrawal_charge")
SENTIMENT = ("negative", "positive")


def choice(labels: tuple[str, ...]) -> dict[str, Any]:
    """Generation settings that constrain the answer to one of ``labels`` (a JSON string enum).

    The base 270M model continues text rather than following instructions; constraining the output to the
    label set makes every technique answer in the same form, so the comparison measures the prompt.
    """
    return {"max_output_tokens": 16, "response_schema": {"type": "string", "enum": list(labels)}}


def engine_config(args: argparse.Namespace, lora: str | None = None) -> dict[str, Any]:
    engine: dict[str, Any] = {"kind": "local", "n_threads": args.threads, "max_output_tokens": 64}
    if lora:
        # The local LoRA trainer renders prompts with the Gemma chat template; serve them the same way.
        engine.update(lora_path=lora, prompt_format="gemma")
    return engine


def task_backends(task: str) -> tuple[dict[str, dict[str, Any]], str]:
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
        labels = ", ".join(BANKING)
        return {
            "prompt_template": {**base, "kind": "prompt_template", "generation": choice(BANKING),
                                "template": f"Intents: {labels}.\nQuestion: {{{{ input }}}}\nIntent:"},
            "icl": {**base, "kind": "icl", "collection": "bench-banking77-examples", "k": 4,
                    "generation": choice(BANKING),
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
    raise SystemExit(f"unknown task {task!r}")


def config(args: argparse.Namespace, task: str, store: Path) -> tuple[dict[str, Any], str]:
    backends, scorer = task_backends(task)
    engines = {"local": engine_config(args)}
    lora = dict(item.split("=", 1) for item in args.tuned).get(task)
    if lora:
        engines["tuned"] = engine_config(args, lora)
        backends["tuned"] = {"kind": "tuned", "engine": "tuned", "model": "gemma-3-270m-tuned",
                             "base_model": "gemma-3-270m",
                             # Same constrained label set as the other backends: a briefly tuned 270M model
                             # learns the label before it learns to stop.
                             "generation": choice(SENTIMENT if task == "sentiment" else BANKING)}
    first = next(iter(backends))
    return {"engines": engines, "backends": backends, "knowledge": {"path": str(store)},
            "policy": {"kind": "static", "backend": first}}, scorer


async def run_task(args: argparse.Namespace, task: str) -> str:
    out = Path(args.out) / task
    cfg, scorer = config(args, task, Path(args.store))
    limit = args.bfcl_limit if task == "bfcl" and args.bfcl_limit is not None else args.limit
    tools = {"placeholder": placeholder} if task == "bfcl" else None
    async with Router.from_config(cfg, tools=tools) as router:
        if "icl" in cfg["backends"]:
            from genroute.knowledge.examples import aload_examples

            await aload_examples(router.resources.knowledge, [DATA / task / "examples.jsonl"],
                                 collection=cfg["backends"]["icl"]["collection"])
        if task == "xquad":
            await ingest_corpus(router, DATA / task / "corpus.jsonl", "bench-xquad-corpus")
        # The path and limit go to the harness, so a rerun with a larger --limit only adds records.
        report = await abench(router, DATA / task / "eval.jsonl", limit=limit, task=task,
                              backends=list(cfg["backends"]), scorer=scorer, out_dir=out,
                              concurrency=args.concurrency, seed=args.seed, progress=not args.quiet,
                              command=" ".join(sys.argv))
    return report.markdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=20, help="records per task (seeded sample)")
    parser.add_argument("--bfcl-limit", type=int, default=None,
                        help="records for bfcl (schema-constrained calls are slow on CPU; default: --limit)")
    parser.add_argument("--tasks", default="sentiment,banking77,xquad,bfcl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1, help="the local engine runs one call at a time")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "quality"))
    parser.add_argument("--store", default=None, help="Chroma directory (default: OUT/chroma)")
    parser.add_argument("--tuned", action="append", default=[], metavar="TASK=LORA.gguf",
                        help="add a tuned backend: the local model with this LoRA adapter")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    args.store = args.store or str(Path(args.out) / "chroma")
    print(f"# command: python benchmarks/quality.py {' '.join(sys.argv[1:])}\n")
    for task in args.tasks.split(","):
        started = time.perf_counter()
        text = asyncio.run(run_task(args, task.strip()))
        limit = args.bfcl_limit if task == "bfcl" and args.bfcl_limit is not None else args.limit
        print(f"## {task} (limit {limit}, seed {args.seed}; {time.perf_counter() - started:.0f} s)\n")
        print(text, flush=True)


if __name__ == "__main__":
    main()
