"""Small ONNX models for the bad-input corpus (tests/corpus/build_corpus.py), written with
onnx.helper, seeded: a tiny conv classifier (optionally with a fixed batch dim, a NaN/Inf weight
or a custom-domain op), a model whose output is no classifier, one whose Reshape fails inside
onnxruntime on some lengths, and embedding models whose ids are checked by qtool or only by
onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

SAMPLES = 8


def _model(nodes, inputs, outputs, inits, path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def tiny_model(path: Path, *, batch: int | str = "N", weight_fault: float | None = None,
               custom_op: bool = False) -> Path:
    """input [N,3,8,8] -> Conv(4) Relu Conv(4) Relu GlobalAveragePool Flatten Gemm -> logits [N,5]."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    if weight_fault is not None:
        w1[1, 0, 0, 0] = weight_fault
    inits = [numpy_helper.from_array(w1, "conv1.weight"),
             numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "conv1.bias"),
             numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), "conv2.weight"),
             numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "conv2.bias"),
             numpy_helper.from_array((rng.standard_normal((5, 4)) * 0.5).astype(np.float32), "fc.weight"),
             numpy_helper.from_array(np.zeros(5, np.float32), "fc.bias")]
    pooled = "custom_in" if custom_op else "pooled"
    nodes = [helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], [pooled], name="gap")]
    if custom_op:
        nodes.append(helper.make_node("Scale", ["custom_in"], ["pooled"], name="scale", domain="com.example"))
    nodes += [helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if custom_op else [])
    path.write_bytes(helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString())
    return path


def nan_constant_model(path: Path) -> Path:
    """seg_model's output plus a constant holding a NaN (not a layer weight: still refused)."""
    seg_model(path)
    import onnx

    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0.5, np.nan, 1, 2], np.float32)
                                                           .reshape(1, 4, 1, 1), "offset"))
    model.graph.node.append(helper.make_node("Add", ["out", "offset"], ["shifted"], name="add"))
    model.graph.output[0].name = "shifted"
    path.write_bytes(model.SerializeToString())
    return path


def seg_model(path: Path) -> Path:
    """input [N,3,8,8] -> Conv(4) -> out [N,4,8,8]: not a classifier."""
    weight = numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    return _model([helper.make_node("Conv", ["input", "w"], ["out"], name="conv")],
                  [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8, 8])], [weight], path)


def reshape_model(path: Path) -> Path:
    """x [N, L] (L dynamic) -> Reshape to [N, -1, 3] -> MatMul -> y: onnxruntime fails when 3 does not divide L."""
    inits = [numpy_helper.from_array(np.array([0, -1, 3], np.int64), "shape"),
             numpy_helper.from_array(np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["rows"], name="reshape"),
             helper.make_node("MatMul", ["rows", "w"], ["y"], name="matmul")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "R", 4])], inits, path)


def embedding_model(path: Path, *, indirect: bool = False) -> Path:
    """ids [N, 6] int64 -> Gather(table 10 x 4) -> ReduceMean over the tokens -> MatMul -> out [N, 3].
    `indirect`: the ids pass through an Add first, so qtool cannot tell the table's size from the
    graph and an id beyond it fails inside onnxruntime."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "head"),
             numpy_helper.from_array(np.zeros((), np.int64), "zero")]
    ids = "shifted" if indirect else "ids"
    nodes = ([helper.make_node("Add", ["ids", "zero"], ["shifted"], name="shift")] if indirect else []) + [
        helper.make_node("Gather", ["table", ids], ["embedded"], name="gather"),
        helper.make_node("ReduceMean", ["embedded"], ["mean"], name="mean", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "head"], ["out"], name="head_matmul")]
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])], inits, path)


def good_data(n: int = SAMPLES) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, 3, 8, 8)).astype(np.float32)
