"""A tiny BERT-style encoder written out the way torch.onnx exports Hugging Face models.

int64 input_ids / attention_mask [N, T] -> word + position embeddings (Gather) -> LayerNorm
(written out: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add) -> `layers` blocks of
self-attention (Q/K/V MatMul+Add, Reshape/Transpose to heads, Q.K^T MatMul, Div by sqrt(d),
additive mask (1 - mask) * MASK_VALUE, Softmax, attention.V MatMul, output projection, residual
Add, LayerNorm) and a GELU feed-forward (Erf form: x * 0.5 * (1 + erf(x / sqrt 2))) with residual
Add and LayerNorm -> last_hidden_state [N, T, H].

Like trained BERTs, a few hidden dimensions carry outliers in the residual stream (the LayerNorm
gains and the embedding of those dimensions are large), which is what makes W8A8 hard
(Bondarenko et al., 2021).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, HIDDEN, HEADS, FFN, MAX_LEN = 64, 32, 4, 64, 32


def tiny_bert(layers: int = 2, mask_value: float = -3.4028234663852886e38, outlier_dims: int = 2,
              seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    counter = [0]

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], **attrs) -> str:
        counter[0] += 1
        out = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{counter[0]}", **attrs))
        return out

    def layer_norm(x: str, tag: str, gain: np.ndarray) -> str:
        mean = node("ReduceMean", [x], axes=[-1])
        centred = node("Sub", [x, mean])
        var = node("ReduceMean", [node("Pow", [centred, const(f"{tag}_two", np.float32(2))])], axes=[-1])
        std = node("Sqrt", [node("Add", [var, const(f"{tag}_eps", np.float32(1e-12))])])
        normed = node("Div", [centred, std])
        scaled = node("Mul", [normed, const(f"{tag}_gamma", gain.astype(np.float32))])
        return node("Add", [scaled, const(f"{tag}_beta", (rng.standard_normal(HIDDEN) * 0.05).astype(np.float32))])

    def linear(x: str, tag: str, fin: int, fout: int) -> str:
        w = (rng.standard_normal((fin, fout)) / np.sqrt(fin)).astype(np.float32)
        b = (rng.standard_normal(fout) * 0.02).astype(np.float32)
        return node("Add", [node("MatMul", [x, const(f"{tag}_w", w)]), const(f"{tag}_b", b)])

    gain = np.ones(HIDDEN, np.float32)
    gain[:outlier_dims] = 12.0  # a few dimensions with outliers, as in trained BERTs
    heads_shape = const("heads_shape", np.array([0, 0, HEADS, HIDDEN // HEADS], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, HIDDEN], np.int64))

    word = node("Gather", [const("word_emb", (rng.standard_normal((VOCAB, HIDDEN)) * 0.5).astype(np.float32)),
                           "input_ids"])
    positions = node("Unsqueeze", [node("Range", [const("zero", np.int64(0)),
                                                  node("Gather", [node("Shape", ["input_ids"]), const("one", np.int64(1))]),
                                                  const("step", np.int64(1))]), const("axis0", np.array([0], np.int64))])
    pos = node("Gather", [const("pos_emb", (rng.standard_normal((MAX_LEN, HIDDEN)) * 0.2).astype(np.float32)), positions])
    x = layer_norm(node("Add", [word, pos]), "emb_ln", gain)

    # (1 - mask) * MASK_VALUE, broadcast over heads and query positions, as transformers exports it
    mask = node("Cast", [node("Unsqueeze", ["attention_mask", const("axes12", np.array([1, 2], np.int64))])],
                to=TensorProto.FLOAT)
    additive = node("Mul", [node("Sub", [const("one_f", np.float32(1)), mask]), const("mask_value", np.float32(mask_value))])

    for i in range(layers):
        def heads(t: str) -> str:
            return node("Transpose", [node("Reshape", [t, heads_shape])], perm=[0, 2, 1, 3])

        q, k, v = (heads(linear(x, f"l{i}_{n}", HIDDEN, HIDDEN)) for n in "qkv")
        scores = node("Div", [node("MatMul", [q, node("Transpose", [k], perm=[0, 1, 3, 2])]),
                              const(f"l{i}_sqrt_d", np.float32(np.sqrt(HIDDEN // HEADS)))])
        probs = node("Softmax", [node("Add", [scores, additive])], axis=-1)
        context = node("Reshape", [node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3]), merge_shape])
        x = layer_norm(node("Add", [linear(context, f"l{i}_o", HIDDEN, HIDDEN), x]), f"l{i}_ln1", gain)
        h = linear(x, f"l{i}_ffn1", HIDDEN, FFN)
        erf = node("Erf", [node("Div", [h, const(f"l{i}_sqrt2", np.float32(np.sqrt(2)))])])
        gelu = node("Mul", [node("Mul", [h, node("Add", [erf, const(f"l{i}_one", np.float32(1))])]),
                            const(f"l{i}_half", np.float32(0.5))])
        x = layer_norm(node("Add", [linear(gelu, f"l{i}_ffn2", FFN, HIDDEN), x]), f"l{i}_ln2", gain)
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    graph = helper.make_graph(
        nodes, "tiny_bert",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


def sentences(count: int, length: int = 12, seed: int = 1) -> dict[str, np.ndarray]:
    """Token ids with padding: each sentence has 4..length real tokens, the rest masked out."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (count, length)).astype(np.int64)
    lengths = rng.integers(4, length + 1, count)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: the mean of the hidden states over real tokens."""
    weights = mask[..., None].astype(np.float64)
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
