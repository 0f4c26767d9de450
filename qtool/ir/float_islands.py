"""Leave float what onnxruntime runs in float anyway: the QDQ-model half of `--target ort-cpu`.

Given the nodes onnxruntime's CPU provider keeps in float (from the kernel report), one thing in
a QDQ model costs time there and gives nothing back:

* the DequantizeLinear of a constant read by a float node: onnxruntime does not constant-fold
  DequantizeLinear in QDQ models, so it runs on every inference, and a Conv cannot pre-pack a weight
  that is not constant. `float_constants` stores the dequantized values instead (the same numbers,
  computed as DequantizeLinear does: float(q - zero point) * scale). Not for a Conv/Gemm/MatMul
  between a DequantizeLinear input and a QuantizeLinear output: there onnxruntime's
  WeightBiasQuantization pass would quantize the float weight again, per tensor.

The Q -> DQ pairs between float nodes stay: removing them moves the model away from the one the
encodings describe (bias correction and AdaRound compensate those roundings: the demo classifier
fell from 61 to 44 dB SQNR against float when they went).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import add_initializer

QDQ = ("QuantizeLinear", "DequantizeLinear")
REQUANTIZED_BY_ORT = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def remove_nodes(model: ir.Model, nodes: list[ir.Node]) -> None:
    """Disconnect `nodes` (whose outputs nothing reads any more) and take them out of the graph."""
    for node in reversed(nodes):
        for index in range(len(node.inputs)):
            node.replace_input_with(index, None)
    model.graph.remove(nodes, safe=True)


def _dequantized(dq: ir.Node) -> np.ndarray | None:
    """DequantizeLinear of constants computed as onnxruntime does, or None when not constant."""
    inputs = list(dq.inputs) + [None] * (3 - len(dq.inputs))
    if inputs[0] is None or inputs[0].const_value is None or inputs[1].const_value is None:
        return None
    q, scale = inputs[0].const_value.numpy(), inputs[1].const_value.numpy().astype(np.float32)
    zero = inputs[2].const_value.numpy() if inputs[2] is not None and inputs[2].const_value is not None else None
    if q.dtype not in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        return None
    axis = dq.attributes.get("axis")
    shape = [1] * q.ndim
    if scale.ndim == 1 and q.ndim > 0 and scale.size > 1:
        shape[(axis.as_int() if axis is not None else 1) % q.ndim] = -1
    shifted = q.astype(np.int64) - (zero.astype(np.int64).reshape(shape) if zero is not None else 0)
    return shifted.astype(np.float32) * scale.reshape(shape) if scale.ndim else shifted.astype(np.float32) * scale


def _sandwiched(node: ir.Node) -> bool:
    """A linear op whose data input comes out of a DequantizeLinear and output goes into a
    QuantizeLinear: onnxruntime would requantize a float weight there."""
    data = node.inputs[0] if node.inputs else None
    from_dq = data is not None and data.producer() is not None and data.producer().op_type == "DequantizeLinear"
    return (node.op_type in REQUANTIZED_BY_ORT and from_dq
            and any(reader.op_type == "QuantizeLinear" for out in node.outputs for reader in out.consumers()))


def float_constants(model: ir.Model, is_float: set[int]) -> int:
    """Float nodes (ids in `is_float`) read their DequantizeLinear'd constants as float
    initializers instead; DequantizeLinear nodes left without readers are removed."""
    count, touched = 0, []
    for node in [node for node in model.graph if id(node) in is_float and node.op_type not in QDQ]:
        if _sandwiched(node):
            continue
        for index, value in enumerate(node.inputs):
            dq = value.producer() if value is not None else None
            array = _dequantized(dq) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if array is None:
                continue
            node.replace_input_with(index, add_initializer(model, f"{dq.inputs[0].name}_float", array))
            touched.append(dq)
            count += 1
    unused = {id(dq): dq for dq in touched if not dq.outputs[0].consumers() and not dq.outputs[0].is_graph_output()}
    remove_nodes(model, list(unused.values()))
    return count


def drop_unused_initializers(model: ir.Model) -> None:
    """Initializers nothing reads any more (scales and integers of removed quantizers)."""
    outputs = {id(value) for value in model.graph.outputs}
    for name, value in list(model.graph.initializers.items()):
        if not value.uses() and id(value) not in outputs and not value.is_graph_input():
            model.graph.initializers.pop(name)
