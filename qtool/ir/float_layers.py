"""Layers of an exported QDQ model that onnxruntime runs in float: their weights stored as float.

onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into an integer kernel (QLinearConv,
QGemm, QLinearMatMul) only when the layer's output is quantized. A layer whose output has no
quantizer (a Conv fused with the hard-swish after it, qtool.ir.hard_swish; a model output left in
float) runs as a float Conv, and onnxruntime deliberately does not constant-fold the
DequantizeLinear of its weight in a QDQ model: the weight is dequantized again on every inference
(docs/deploy.md; the bundled classifier's 18 such Convs took 2.1 ms per run against 1.2 ms for all
48 Convs of the float model). Storing those weights (and int32 biases) already dequantized gives
the same numbers, (q - z) * s computed once, and removes that cost; the encodings file keeps
every weight's encoding for the targets that read it (QNN, AIMET).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import add_initializer, constant_array, unique_name

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _dequantized(node: ir.Node) -> np.ndarray | None:
    """The float value of a DequantizeLinear whose inputs are all constants (None otherwise)."""
    if node.op_type != "DequantizeLinear" or node.attributes.get("block_size") is not None:
        return None
    arrays = [constant_array(v) if v is not None else None for v in node.inputs]
    if arrays[0] is None or arrays[1] is None or (len(arrays) > 2 and node.inputs[2] is not None and arrays[2] is None):
        return None
    q, scale = arrays[0].astype(np.float64), arrays[1].astype(np.float64)
    zero = arrays[2].astype(np.float64) if len(arrays) > 2 and arrays[2] is not None else np.zeros_like(scale)
    if scale.ndim == 1 and scale.size > 1:  # per axis
        axis = node.attributes["axis"].as_int() if node.attributes.get("axis") is not None else 1
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _output_quantized(node: ir.Node) -> bool:
    return any(c.op_type == "QuantizeLinear" for out in node.outputs for c in out.consumers())


def store_float_weights(qdq: ir.Model) -> list[str]:
    """Replace the constant DequantizeLinear inputs of layers whose output is not quantized by
    their float values; returns the layers changed (their names)."""
    changed = []
    for node in list(qdq.graph):
        if node.op_type not in LAYERS or _output_quantized(node):
            continue
        done = False
        for index, value in enumerate(node.inputs):
            if index == 0 or value is None:
                continue
            producer = value.producer()
            weight = _dequantized(producer) if producer is not None else None
            if weight is None:
                continue
            node.replace_input_with(index, add_initializer(qdq, unique_name(qdq, f"{value.name}_float"), weight))
            if not value.uses() and not value.is_graph_output():
                stored = [v for v in producer.inputs if v is not None]
                qdq.graph.remove(producer, safe=True)
                for unused in stored:  # the integers, scale and zero point, unless shared
                    if not unused.uses() and unused.name in qdq.graph.initializers:
                        del qdq.graph.initializers[unused.name]
            done = True
        if done:
            changed.append(node.name or node.outputs[0].name)
    return changed
