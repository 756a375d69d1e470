"""Local LoRA tuning benchmark: training speed, adapter size, tuned vs base llama.cpp speed, and on a
5-intent slice of BANKING77 the held-out accuracy of base zero-shot, base few-shot (ICL) and the tuned model.

    python benchmarks/local_tuning.py                      # defaults below; prints figures and a JSON line
    python benchmarks/local_tuning.py --epochs 3 --threads 2 --json /tmp/local_tuning.json

Needs the ``tune-local`` extra. Data: ``banking77.jsonl`` of the shared data directory (``--shared-data``, default
../shared/data beside the repository) or ``--data FILE`` (shared format).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import shared_data

DEFAULT_LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "cash_withdrawal_charge",
                  "cancel_transfer"]


def split_by_label(rows: list[dict], labels: list[str], per_label: int, seed: int) -> tuple[list, list]:
    """Stratified split: ``per_label`` training rows per label, the rest held out."""
    groups = defaultdict(list)
    for row in rows:
        if row.get("label") in labels:
            groups[row["label"]].append(row)
    rng = random.Random(seed)
    train, test = [], []
    for label in labels:
        items = groups[label]
        rng.shuffle(items)
        train += items[:per_label]
        test += items[per_label:]
    rng.shuffle(train)
    return train, test


def normalise(text: str) -> str:
    """The first label-like word of a completion, lower-cased."""
    match = re.search(r"[a-z_]+", text.strip().lower())
    return match.group(0) if match else ""


def header(labels: list[str]) -> str:
    return f"Classify the banking customer message into one of these intents: {', '.join(labels)}.\n\n"


def icl_prompt(labels: list[str], shots: list[dict], text: str) -> str:
    body = "".join(f"Message: {s['input']}\nIntent: {s['output']}\n\n" for s in shots)
    return f"{header(labels)}{body}Message: {text}\nIntent:"


def accuracy(llm, prompts: list[str], golds: list[str], stop: list[str]) -> tuple[float, float, float]:
    """(accuracy, mean prompt tokens, seconds per item) for greedy completions."""
    correct = 0
    tokens = []
    started = time.perf_counter()
    for prompt, gold in zip(prompts, golds):
        tokens.append(len(llm.tokenize(prompt.encode(), add_bos=True, special=True)))
        out = llm.create_completion(prompt, max_tokens=12, temperature=0.0, stop=stop)
        correct += normalise(out["choices"][0]["text"]) == gold
    elapsed = time.perf_counter() - started
    return correct / len(golds), statistics.mean(tokens), elapsed / len(golds)


def decode_speeds(models: dict, n_tokens: int = 64, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` greedy decode speed (tokens/s) per model, measured interleaved so that load
    changes on a shared machine hit every model alike (end-of-turn is ignored: always ``n_tokens``)."""
    best = dict.fromkeys(models, 0.0)
    for _ in range(repeats):
        for name, llm in models.items():
            prompt = llm.tokenize(b"The history of banking", add_bos=True, special=True)
            started = time.perf_counter()
            for count, _token in enumerate(llm.generate(prompt, temp=0.0, reset=True), start=1):
                if count >= n_tokens:
                    break
            best[name] = max(best[name], n_tokens / (time.perf_counter() - started))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="default: banking77.jsonl of --shared-data")
    shared_data.add_option(parser)
    parser.add_argument("--labels", default=",".join(DEFAULT_LABELS))
    parser.add_argument("--train-per-label", type=int, default=20)
    parser.add_argument("--shots-per-label", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", type=Path, help="copy the adapter and tune_result.json into this directory")
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = shared_data.resolve(args.shared_data, "banking77.jsonl") / "banking77.jsonl"

    import llama_cpp

    from genroute.tuning.local_lora import LocalTuneConfig, format_prompt, tune_local

    labels = args.labels.split(",")
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    train, test = split_by_label(rows, labels, args.train_per_label, args.seed)
    shots = []
    for lab in labels:
        shots += [r for r in train if r["label"] == lab][:args.shots_per_label]
    random.Random(args.seed).shuffle(shots)
    golds = [r["output"] for r in test]
    figures: dict[str, object] = {"labels": labels, "train": len(train), "test": len(test),
                                  "epochs": args.epochs, "rank": args.rank, "threads": args.threads}

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps({"input": r["input"], "output": r["output"]}) + "\n" for r in train))
        config = LocalTuneConfig(rank=args.rank, alpha=2.0 * args.rank, epochs=args.epochs,
                                 learning_rate=args.learning_rate, batch_size=args.batch_size,
                                 validation_fraction=0.1, seed=args.seed, threads=args.threads)
        result = tune_local(data, Path(tmp) / "out", config=config)
        adapter = result.adapter_path
        if args.keep:
            import shutil

            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(adapter, args.keep / adapter.name)
            shutil.copy2(adapter.parent / "tune_result.json", args.keep / "tune_result.json")
        base = result.base_model_path
        per_step = result.train_seconds / result.steps
        figures.update({
            "model_load_s": result.load_seconds,
            "train_s": result.train_seconds,
            "steps": result.steps,
            "s_per_step": round(per_step, 3),
            "train_tokens_per_s": round(result.train_tokens / result.train_seconds, 1),
            "s_per_100_examples_per_epoch": round(100 * result.train_seconds
                                                  / (result.train_examples * args.epochs), 2),
            "initial_validation_loss": round(result.initial_validation_loss or 0, 4),
            "validation_loss": round(result.validation_loss or 0, 4),
            "adapter_bytes": result.adapter_bytes,
            "base_gguf_bytes": base.stat().st_size,
        })

        threads = args.threads or 2
        timings = {}
        models = {}
        for name, lora in (("base", None), ("tuned", str(adapter))):
            started = time.perf_counter()
            models[name] = llama_cpp.Llama(model_path=str(base), lora_path=lora, n_ctx=2048, n_threads=threads,
                                           seed=0, verbose=False)
            timings[f"llama_load_{name}_s"] = round(time.perf_counter() - started, 3)
        for name, speed in decode_speeds(models).items():
            timings[f"decode_{name}_tok_s"] = round(speed, 1)
        figures.update(timings)

        stop = ["\n"]
        zero = accuracy(models["base"], [f"{header(labels)}Message: {r['input']}\nIntent:" for r in test], golds,
                        stop)
        icl = accuracy(models["base"], [icl_prompt(labels, shots, r["input"]) for r in test], golds, stop)
        tuned = accuracy(models["tuned"], [format_prompt(r["input"]) for r in test], golds, stop)
        for name, (acc, tokens, seconds) in (("zero_shot", zero), ("few_shot", icl), ("tuned", tuned)):
            figures[f"{name}_accuracy"] = round(acc, 3)
            figures[f"{name}_prompt_tokens"] = round(tokens, 1)
            figures[f"{name}_s_per_item"] = round(seconds, 3)
        for llm in models.values():
            llm.close()

    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
