"""Build an ONNX graph of all-MiniLM-L6-v2 (BERT encoder + mean pooling + L2 norm) from safetensors.

The weights packages on the registry ship safetensors but no ONNX file, and torch is too heavy to
export one at install time; the graph is small enough to write out with ``onnx.helper``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

#: Bump when the graph changes so cached files keyed on the weights are rebuilt.
GRAPH_VERSION = 1

_HIDDEN, _HEADS, _LAYERS, _EPS = 384, 12, 6, 1e-12


def build_minilm_graph(weights_path: Path) -> onnx.ModelProto:
    """The ONNX model: ``input_ids``, ``attention_mask`` (int64 [B, S]) → ``embedding`` (float32 [B, 384])."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    w = load_file(str(weights_path))
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node("LayerNormalization", [x, const(f"{prefix}.weight", w[f"{prefix}.weight"]),
                                           const(f"{prefix}.bias", w[f"{prefix}.bias"])],
                    out, axis=-1, epsilon=_EPS)

    def dense(x: str, weight: np.ndarray, bias: np.ndarray, out: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out].
        mm = node("MatMul", [x, const(f"{out}.w", weight.T)], f"{out}.mm")
        return node("Add", [mm, const(f"{out}.b", bias)], out)

    f32 = np.float32
    i64 = np.int64
    # Embeddings. token_type_ids are always 0 for single sentences: fold that row into positions.
    word = node("Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "word")
    pos_table = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    seq = node("Shape", ["input_ids"], "seq_len", start=1, end=2)
    zero = const("zero", np.array([0], dtype=i64))
    pos = node("Slice", [const("pos_emb", pos_table), zero, seq, zero], "pos")
    x = layer_norm(node("Add", [word, pos], "emb_sum"), "embeddings.LayerNorm", "h0")

    # Additive attention bias [B, 1, 1, S]: 0 for tokens, a large negative for padding.
    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inv = node("Sub", [const("onef", np.array(1.0, dtype=f32)), mask_f], "mask_inv")
    bias = node("Mul", [inv, const("neg", np.array(-1e9, dtype=f32))], "mask_bias2d")
    bias = node("Unsqueeze", [bias, const("axes12", np.array([1, 2], dtype=i64))], "mask_bias")

    head_dim = _HIDDEN // _HEADS
    split_shape = const("split_shape", np.array([0, 0, _HEADS, head_dim], dtype=i64))
    merge_shape = const("merge_shape", np.array([0, 0, _HIDDEN], dtype=i64))
    scale = const("scale", np.array(1.0 / np.sqrt(head_dim), dtype=f32))
    for i in range(_LAYERS):
        p = f"encoder.layer.{i}"
        att = f"{p}.attention.self"
        # One fused QKV projection is faster than three small MatMuls.
        qkv_w = np.concatenate([w[f"{att}.{n}.weight"] for n in ("query", "key", "value")], axis=0)
        qkv_b = np.concatenate([w[f"{att}.{n}.bias"] for n in ("query", "key", "value")], axis=0)
        qkv = dense(x, qkv_w, qkv_b, f"l{i}.qkv")
        nodes.append(helper.make_node("Split", [qkv, const(f"l{i}.split", np.array([_HIDDEN] * 3, dtype=i64))],
                                      [f"l{i}.q", f"l{i}.k", f"l{i}.v"], axis=-1, name=f"l{i}.split"))
        heads = {}
        for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            r = node("Reshape", [f"l{i}.{n}", split_shape], f"l{i}.{n}.r")
            heads[n] = node("Transpose", [r], f"l{i}.{n}.t", perm=perm)
        scores = node("MatMul", [heads["q"], heads["k"]], f"l{i}.scores")
        scores = node("Mul", [scores, scale], f"l{i}.scaled")
        scores = node("Add", [scores, bias], f"l{i}.masked")
        probs = node("Softmax", [scores], f"l{i}.probs", axis=-1)
        ctx = node("MatMul", [probs, heads["v"]], f"l{i}.ctx")
        ctx = node("Transpose", [ctx], f"l{i}.ctx.t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape], f"l{i}.ctx.r")
        attn = dense(ctx, w[f"{p}.attention.output.dense.weight"], w[f"{p}.attention.output.dense.bias"],
                     f"l{i}.attn_out")
        x = layer_norm(node("Add", [attn, x], f"l{i}.res1"), f"{p}.attention.output.LayerNorm", f"l{i}.h1")
        inter = dense(x, w[f"{p}.intermediate.dense.weight"], w[f"{p}.intermediate.dense.bias"], f"l{i}.inter")
        # Exact (erf) GELU, as BERT uses: 0.5 * x * (1 + erf(x / sqrt 2)).
        erf = node("Erf", [node("Mul", [inter, const(f"l{i}.rsqrt2", np.array(1 / np.sqrt(2), dtype=f32))],
                                f"l{i}.gx")], f"l{i}.erf")
        gelu = node("Mul", [node("Mul", [inter, const(f"l{i}.half", np.array(0.5, dtype=f32))], f"l{i}.hx"),
                            node("Add", [erf, "onef"], f"l{i}.erf1")], f"l{i}.gelu")
        out = dense(gelu, w[f"{p}.output.dense.weight"], w[f"{p}.output.dense.bias"], f"l{i}.ffn_out")
        x = layer_norm(node("Add", [out, x], f"l{i}.res2"), f"{p}.output.LayerNorm", f"l{i}.h2")

    # Mean pooling over real tokens, then L2 normalisation (sentence-transformers' recipe).
    mask3 = node("Unsqueeze", [mask_f, const("axis2", np.array([2], dtype=i64))], "mask3")
    axis1 = const("axis1", np.array([1], dtype=i64))
    summed = node("ReduceSum", [node("Mul", [x, mask3], "masked_h"), axis1], "summed", keepdims=0)
    count = node("ReduceSum", [mask3, axis1], "count", keepdims=0)
    count = node("Max", [count, const("tiny", np.array(1e-9, dtype=f32))], "count_c")
    mean = node("Div", [summed, count], "mean")
    norm = node("ReduceL2", [mean, const("axis_last", np.array([-1], dtype=i64))], "norm", keepdims=1)
    norm = node("Max", [norm, const("eps", np.array(1e-12, dtype=f32))], "norm_c")
    node("Div", [mean, norm], "embedding")

    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", _HIDDEN])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="genroute")
    model.ir_version = 8
    return model
