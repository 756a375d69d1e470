"""Time and memory of the offline compile's parts on a large synthetic outcome matrix (no model calls).

    python benchmarks/matrix_scale.py --rows 100000 --candidates 10 --tasks 14        # the parts, ~minutes
    python benchmarks/matrix_scale.py --rows 100000 --tasks 10000 --parts per_task    # a task per 10 records
    python benchmarks/matrix_scale.py --rows 20000 --whole                            # compile_outcomes itself

The matrix is random (scores 0/1 with a per-task skill per candidate, costs rising with the candidate's index);
the embedder is a hashed random vector per text (384 wide, as MiniLM's), so that nothing here measures MiniLM.
Parts: ``load`` (``load_matrix`` of the file), ``per_task`` (``baselines.per_task_best``, which one compile
calls five times), ``knn`` (a kNN router's predictions for the held-out records against the training ones). Prints
seconds and the process's peak RSS after each part (the peak only grows: run one part to see its own).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

class HashedEmbedder:
    """A fixed random unit-scale vector per text: the shape of MiniLM's output, none of its cost."""

    model = "hashed-384"

    def embed_array(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), 384), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            out[i] = np.random.default_rng(seed).standard_normal(384)
        return out


def write_matrix(path: Path, rows: int, candidates: int, tasks: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    skill = rng.random((tasks, candidates))
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            task = i % tasks
            right = rng.random(candidates) < skill[task]
            fh.write(json.dumps({
                "input": f"question {i} of task {task}: {rng.integers(10 ** 9)}",
                "metadata": {"task": f"task{task}", "id": f"q{i}"},
                "outcomes": {f"m{j:02d}": {"score": float(right[j]), "cost_usd": 1e-4 * (j + 1)}
                             for j in range(candidates)}}) + "\n")
    return path


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=14)
    parser.add_argument("--parts", default="load,per_task,knn", help="comma-separated: load, per_task, knn")
    parser.add_argument("--whole", action="store_true", help="run compile_outcomes (kNN and logreg) instead")
    args = parser.parse_args()

    from genroute.bench import baselines as bl
    from genroute.bench.offline import compile_outcomes, split_by_text
    from genroute.bench.outcomes import load_matrix
    from genroute.policies.router_models import fit, normalise

    with tempfile.TemporaryDirectory() as tmp:
        path = write_matrix(Path(tmp) / "matrix.jsonl", args.rows, args.candidates, args.tasks)
        print(f"{args.rows:,} rows x {args.candidates} candidates, {args.tasks:,} tasks; "
              f"peak RSS before: {peak_gb():.2f} GB")
        if args.whole:
            start = time.perf_counter()
            compile_outcomes(path, out_dir=Path(tmp) / "out", embedder=HashedEmbedder(), min_n=10,
                             specs=({"method": "knn", "k": 40}, {"method": "logreg"}))
            print(f"compile_outcomes: {time.perf_counter() - start:.1f} s, peak RSS {peak_gb():.2f} GB")
            return
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        start = time.perf_counter()
        matrix = load_matrix(path)
        if "load" in parts:
            print(f"load: {time.perf_counter() - start:.1f} s, peak RSS {peak_gb():.2f} GB")
        train, held = split_by_text(matrix, holdout=0.3, seed=0)
        if "per_task" in parts:
            start = time.perf_counter()
            bl.per_task_best(train, held)
            print(f"per_task: {time.perf_counter() - start:.2f} s, peak RSS {peak_gb():.2f} GB")
        if "knn" in parts:
            embedder = HashedEmbedder()
            x_train = normalise(embedder.embed_array([r.input for r in train.records]))
            x_held = normalise(embedder.embed_array([r.input for r in held.records]))
            model = fit(x_train, train.scores, list(train.candidates), method="knn", k=100)
            start = time.perf_counter()
            model.predict(x_held)
            print(f"knn: {len(held.records):,} x {len(train.records):,}: {time.perf_counter() - start:.1f} s, "
                  f"peak RSS {peak_gb():.2f} GB")


if __name__ == "__main__":
    main()
