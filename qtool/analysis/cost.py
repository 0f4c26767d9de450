"""What precision costs: multiply-accumulates per layer, bit-operations and weight bytes.

BOPs of a layer = MACs x weight bits x activation bits (AIMET's mixed-precision cost); the
activation bits are those of the layer block's output quantizers, which the next layer reads.
MACs come from the tensor shapes of one float run (dynamic sizes resolved by real data).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.analysis.groups import LAYER_OPS
from qtool.ir.graph import node_label
from qtool.runtime.sessions import make_session, with_taps


def layer_macs(model: ir.Model, sample: dict[str, np.ndarray]) -> dict[str, int]:
    """MACs per sample of every Conv/ConvTranspose/Gemm/MatMul, by node label."""
    layers = [node for node in model.graph if node.op_type in LAYER_OPS and node.op_type in
              ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    names = sorted({v.name for node in layers for v in (node.inputs[0], node.outputs[0]) if v is not None})
    session = make_session(with_taps(model, names), optimize=False)
    one = {k: v[:1] for k, v in sample.items()}
    shapes = {name: array.shape for name, array in zip(names, session.run(names, one))}
    macs = {}
    for node in layers:
        out_elems = int(np.prod(shapes[node.outputs[0].name]))
        in_shape = shapes[node.inputs[0].name]
        weight = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if node.op_type == "Conv" and weight is not None:
            macs[node_label(node)] = out_elems * int(np.prod(weight.shape[1:]))
        elif node.op_type == "ConvTranspose" and weight is not None:
            macs[node_label(node)] = int(np.prod(in_shape)) * int(np.prod(weight.shape[1:]))
        else:  # Gemm / MatMul: each output element is a dot product over the inner dimension
            trans_a = node.attributes.get("transA")
            inner = in_shape[-2] if trans_a is not None and trans_a.as_int() else in_shape[-1]
            macs[node_label(node)] = out_elems * int(inner)
    return macs


def param_elements(model: ir.Model, names: list[str]) -> int:
    initializers = model.graph.initializers
    return sum(int(np.prod(initializers[n].const_value.shape)) for n in names if n in initializers)
