"""The demo's review adapter: training time, and held-out accuracy of the base model vs the LoRA-tuned one.

    python benchmarks/demo_tuning.py                        # train with the demo's settings, then evaluate
    python benchmarks/demo_tuning.py --epochs 3             # another epoch count (same data, same seed)
    python benchmarks/demo_tuning.py --adapter ~/.cache/genroute/demo/review-lora.gguf   # evaluate only

Held out: the binary DynaSent round-2 rows of ``dynasent_r2.jsonl`` in the shared data directory (``--shared-data``,
default ../shared/data beside the repository; or ``--data FILE``) that
pass the bundled set's filter (<= 90 characters, all five annotators agree) and are not in it. Both models
get the bare review in the Gemma user turn, as the tuned backend sends it; greedy, at most 8 tokens.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from importlib.resources import files
from pathlib import Path

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import shared_data


def held_out(data: Path) -> list[dict]:
    """Rows like the bundled training set's (binary, short, unanimous) that are not in it."""
    bundled = files("genroute.demo") / "data" / "review_sentiment.jsonl"
    seen = {json.loads(line)["metadata"]["id"] for line in bundled.read_text(encoding="utf-8").splitlines()}
    rows = []
    for line in data.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        meta = row["metadata"]
        if (row["label"] in {"negative", "positive"} and meta["id"] not in seen and len(row["input"]) <= 90
                and max(meta["label_vote_counts"].values()) == 5):
            rows.append(row)
    return rows


def evaluate(adapter: Path | None, rows: list[dict], threads: int) -> dict:
    """Accuracy, per-label accuracy, how often the model stopped by itself, and ms per review."""
    import llama_cpp

    from genroute.tuning.local_lora import END_OF_TURN, format_prompt, resolve_base_model

    llm = llama_cpp.Llama(model_path=str(resolve_base_model(None)), lora_path=str(adapter) if adapter else None,
                          n_ctx=512, n_threads=threads, verbose=False)
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    stopped = 0
    started = time.perf_counter()
    for row in rows:
        out = llm.create_completion(format_prompt(row["input"]), max_tokens=8, temperature=0.0, stop=[END_OF_TURN])
        choice = out["choices"][0]
        total[row["label"]] += 1
        right[row["label"]] += choice["text"].strip() == row["label"]
        stopped += choice["finish_reason"] == "stop"
    elapsed = time.perf_counter() - started
    return {
        "accuracy": round(sum(right.values()) / len(rows), 4),
        "per_label": {label: round(right[label] / total[label], 4) for label in sorted(total)},
        "stopped": round(stopped / len(rows), 4),
        "ms_per_review": round(elapsed / len(rows) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="default: dynasent_r2.jsonl of --shared-data")
    shared_data.add_option(parser)
    parser.add_argument("--adapter", type=Path, help="evaluate this adapter instead of training one")
    parser.add_argument("--epochs", type=int, help="override the demo's epoch count")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads for the evaluation")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.data is None:
        args.data = shared_data.resolve(args.shared_data, "dynasent_r2.jsonl") / "dynasent_r2.jsonl"

    from genroute.demo.tune import TRAIN_DATA, tune_options
    from genroute.tuning.local_lora import LocalTuneConfig, tune_local

    rows = held_out(args.data)
    report: dict = {"held_out": len(rows), "labels": dict(Counter(r["label"] for r in rows))}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter
        if adapter is None:
            options = {**tune_options(), "progress": False}
            if args.epochs:
                options["epochs"] = args.epochs
            started = time.perf_counter()
            result = tune_local(Path(str(files("genroute.demo") / "data" / TRAIN_DATA)), tmp,
                                config=LocalTuneConfig(**options))
            report["training"] = {
                "epochs": options["epochs"], "threads": options["threads"], "steps": result.steps,
                "wall_s": round(time.perf_counter() - started, 1), "train_s": result.train_seconds,
                "adapter_mb": round(result.adapter_bytes / 1e6, 2),
                "validation_loss": result.validation_loss,
            }
            adapter = result.adapter_path
        report["base"] = evaluate(None, rows, args.threads)
        report["tuned"] = evaluate(adapter, rows, args.threads)
    for key, value in report.items():
        print(f"{key}: {value}")
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
