"""Exported QDQ model: a layer whose output has no quantizer (onnxruntime runs it in float) reads
its weights already dequantized, with the same values; quantized layers keep integer weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import qtool
from qtool.ir.graph import model_bytes
from qtool.ir.qdq import build_qdq_model
from qtool.steps.export import export

RNG = np.random.default_rng(9)


def conv_hard_swish_conv() -> ir.Model:
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "three"], ["t"]), helper.make_node("Clip", ["t", "zero", "six"], ["g"]),
             helper.make_node("Mul", ["c", "g"], ["p"]), helper.make_node("Div", ["p", "six"], ["h"]),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"])]
    inits = [c("w1", RNG.normal(0, 1, (6, 3, 3, 3))), c("b1", RNG.normal(0, 1, 6)), c("three", 3), c("zero", 0),
             c("six", 6), c("w2", RNG.normal(0, 1, (4, 6, 1, 1))), c("b2", RNG.normal(0, 1, 4))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_float_layer_weights_stored_dequantized_same_outputs():
    x = RNG.normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    pair = qtool.calibrate(conv_hard_swish_conv(), {"x": x}, config="w8a8-per-channel")
    exported = export(pair.model, pair.encodings).qdq_model
    plain = build_qdq_model(pair.model, pair.encodings, integer_bias=True)
    first, second = [n for n in exported.graph if n.op_type == "Conv"]
    producers = [[v.producer().op_type if v.producer() else "initializer" for v in conv.inputs[1:]]
                 for conv in (first, second)]
    assert producers[0] == ["initializer", "initializer"], "fused with the hard-swish: float weights"
    assert producers[1] == ["DequantizeLinear", "DequantizeLinear"], "output quantized: integer weights kept"
    assert sum(n.op_type == "DequantizeLinear" for n in exported.graph) == sum(
        n.op_type == "DequantizeLinear" for n in plain.graph) - 2
    assert not any(v.dtype == ir.DataType.INT8 and not v.uses() for v in exported.graph.initializers.values())
    ref, out = run(plain, x), run(exported, x)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
