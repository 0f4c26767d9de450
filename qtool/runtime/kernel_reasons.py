"""Why onnxruntime leaves a node of a QDQ model in float (or removes it), read from the graph.

The rules are those of onnxruntime's CPU provider (onnxruntime/core/optimizer/qdq_transformer:
qdq_selector_action_transformer.cc, qdq_selectors.cc, qdq_s8_to_u8.cc):

* an op is fused only if there is a rule for it: Conv, MatMul, Gemm, Add, Mul, Concat, Where,
  AveragePool, GlobalAveragePool, LeakyRelu, Sigmoid, Softmax become QLinear* kernels;
  Reshape, Transpose, MaxPool, Resize, Gather, Slice, Split, ... lose their Q/DQ pair and run on
  the 8-bit tensor when the input and output grids are the same;
* every float input must come out of a DequantizeLinear (weights 8-bit, a Conv/Gemm bias int32),
  and the output must go into a QuantizeLinear (MatMul and Gemm also fuse without one: their
  integer kernel then writes float);
* 16-bit Q/DQ are not fused into QLinearConv/QLinearMatMul/QLinearAdd (8-bit kernels only);
* on x86 Conv and MatMul fuse with uint8 activations only; an int8 Q/DQ pair is turned into
  uint8 only where the QuantizeLinear has a single consumer, and onnxruntime first gives every
  consumer of a shared DequantizeLinear its own copy, so an int8 tensor read twice stays int8.
"""

from __future__ import annotations

import platform
import re

import numpy as np
import onnx_ir as ir

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QLINEAR_RULES = ("Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "Where", "AveragePool", "GlobalAveragePool",
                 "LeakyRelu", "Sigmoid", "Softmax")
DROP_RULES = ("MaxPool", "Resize", "ReduceMax", "ReduceMin", "ArgMax", "Split", "Expand", "Flatten", "Gather",
              "GatherElements", "Reshape", "Slice", "Squeeze", "Tile", "Transpose", "Unsqueeze")
OPTIONAL_OUTPUT_Q = ("MatMul", "Gemm", "ArgMax")
HARD_SWISH_OPS = ("Add", "Clip", "Mul", "Div", "HardSigmoid", "HardSwish", "Relu", "Min", "Max")
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
NO_OP = "a no-op, removed"
UNRECOGNISED = "a form onnxruntime's QDQ fusion does not recognise"
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def _producer_op(value: ir.Value) -> str:
    producer = value.producer()
    return producer.op_type if producer is not None else ""


def _dequantize(value: ir.Value | None) -> ir.Node | None:
    producer = value.producer() if value is not None else None
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The float value of a constant input, through a DequantizeLinear of a constant."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy().astype(np.float64)
    dq = _dequantize(value)
    if dq is None or any(v is None or v.const_value is None for v in dq.inputs[:2]):
        return None
    q, scale = dq.inputs[0].const_value.numpy(), dq.inputs[1].const_value.numpy()
    zero = dq.inputs[2].const_value.numpy() if len(dq.inputs) > 2 and dq.inputs[2] is not None else 0
    if q.ndim and scale.ndim:  # per-channel: not a scalar constant of interest here
        return None
    return (q.astype(np.float64) - np.asarray(zero, np.float64)) * scale.astype(np.float64)


def _is_three(value: ir.Value | None) -> bool:
    array = _constant(value)
    return array is not None and array.size == 1 and abs(float(array.reshape(-1)[0]) - 3.0) < 1e-3


def read_as_hard_swish(value: ir.Value) -> bool:
    """`value` is the x of a hard-swish: read by HardSwish, or by a Mul and a HardSigmoid / Add(x, 3)."""
    readers = value.consumers()
    ops = {node.op_type for node in readers}
    gate = "HardSigmoid" in ops or any(node.op_type == "Add" and any(_is_three(v) for v in node.inputs)
                                       for node in readers)
    return "HardSwish" in ops or ("Mul" in ops and gate)


def _data_inputs(node: ir.Node) -> list[ir.Value]:
    """Float inputs that are computed (not constants, not quantized constants)."""
    return [v for v in node.inputs if v is not None and v.const_value is None and _constant(v) is None
            and (v.dtype is None or v.dtype in FLOAT_TYPES)]


def in_hard_swish(node: ir.Node) -> bool:
    """`node` is one of the ops of a written-out hard-swish, reached from its x with no quantizer between."""
    frontier = [node]
    for _ in range(4):
        if not frontier:
            return False
        step = []
        for current in frontier:
            if current.op_type not in HARD_SWISH_OPS:
                continue
            for value in _data_inputs(current):
                if read_as_hard_swish(value):
                    return True
                producer = value.producer()
                if producer is not None:
                    step.append(producer)
        frontier = step
    return False


def _quantizers_after(value: ir.Value) -> list[ir.Node]:
    return [node for node in value.consumers() if node.op_type == "QuantizeLinear"]


def _is_16_bit(node: ir.Node | None) -> bool:
    if node is None:
        return False
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    wide = (ir.DataType.INT16, ir.DataType.UINT16)
    return node.domain == "com.microsoft" or (zero is not None and zero.dtype in wide)


def _is_int8(node: ir.Node | None) -> bool:
    zero = node.inputs[2] if node is not None and len(node.inputs) > 2 else None
    return zero is not None and zero.dtype == ir.DataType.INT8


def _grid(node: ir.Node) -> tuple | None:
    arrays = [v.const_value.numpy() if v is not None and v.const_value is not None else None for v in node.inputs[1:3]]
    return None if arrays[0] is None else tuple(np.asarray(a).tobytes() if a is not None else b"" for a in arrays)


def _read_by(value: ir.Value) -> str:
    ops = sorted({node.op_type for node in value.consumers()})
    return f"read by {', '.join(ops)}" if ops else "a graph output"


def float_reason(node: ir.Node) -> str:
    """Why onnxruntime runs `node` (of the QDQ model) in float, as far as the graph tells. The
    part before " (" or ": " is the short form (`short_reason`)."""
    op, out = node.op_type, node.outputs[0] if node.outputs else None
    if in_hard_swish(node):
        return "part of a hard-swish (onnxruntime has no integer hard-swish)"
    if op not in QLINEAR_RULES + DROP_RULES:
        return f"no integer {op} in onnxruntime's CPU provider"
    quantizers = _quantizers_after(out) if out is not None else []
    if not quantizers and out is not None and read_as_hard_swish(out):
        return "output fused with the hard-swish after it (onnxruntime has no integer hard-swish)"
    dequantizers = [_dequantize(v) for v in node.inputs if _dequantize(v) is not None]
    if any(_is_16_bit(q) for q in dequantizers + quantizers):
        return f"16-bit activations (onnxruntime's integer {op} takes 8 bits)"
    shared = _shared_int8(dequantizers + quantizers) if platform.machine().lower() in X86 else None
    if shared:
        return (f"int8 activation '{shared[0]}' has {shared[1]} consumers: on x86 onnxruntime converts an int8 "
                f"Q/DQ pair to the uint8 its {op} fusion needs only where the QuantizeLinear has one consumer")
    missing = _unquantized_input(node)
    no_output_q = not quantizers and op not in OPTIONAL_OUTPUT_Q
    float_weight = missing.startswith("float bias") or "is a float constant" in missing
    if missing and not (no_output_q and float_weight):  # a float weight follows from the missing quantizer
        return missing
    if no_output_q:
        return f"no QuantizeLinear on its output ({_read_by(out)})" if out is not None else "no output"
    if op in DROP_RULES and dequantizers and quantizers and _grid(dequantizers[0]) != _grid(quantizers[0]):
        return f"input and output grids differ (onnxruntime drops the Q/DQ around {op} only when they are equal)"
    return UNRECOGNISED


def short_reason(reason: str) -> str:
    """The reason without its explanation: what a one-line summary shows."""
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


def _unquantized_input(node: ir.Node) -> str:
    """The first float input that does not come out of a DequantizeLinear, described; "" if none."""
    for index, value in enumerate(node.inputs):
        if value is None or (value.dtype is not None and value.dtype not in FLOAT_TYPES) or _dequantize(value):
            continue
        if node.op_type in ("Conv", "Gemm") and index == 2:
            return "float bias (the integer kernel needs an int32 bias of scale s_x * s_w)"
        if value.const_value is not None:
            return f"input '{value.name}' is a float constant (weights need an 8-bit DequantizeLinear)"
        source = f"from {_producer_op(value)}" if value.producer() is not None else "a graph input"
        return f"input '{value.name}' is not quantized ({source})"
    return ""


def integer_note(node: ir.Node) -> str:
    """What to know about a node onnxruntime did fuse: a float weight it quantized itself."""
    weight = node.inputs[1] if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 1 else None
    if weight is not None and weight.const_value is not None and weight.dtype in FLOAT_TYPES:
        return ("onnxruntime quantized its float weight to per-tensor int8 itself (WeightBiasQuantization): "
                "the model's own weight grid is not what runs")
    return ""


def _shared_int8(nodes: list[ir.Node]) -> tuple[str, int] | None:
    """(tensor, consumers) of an int8 Q/DQ among `nodes` whose QuantizeLinear feeds several nodes."""
    for node in nodes:
        if not _is_int8(node):
            continue
        q = node if node.op_type == "QuantizeLinear" else node.inputs[0].producer()
        if q is None:
            continue
        readers = [reader for dq in q.outputs[0].consumers() for reader in
                   (dq.outputs[0].consumers() if dq.op_type == "DequantizeLinear" else [dq])]
        if len(readers) > 1:
            return q.inputs[0].name, len(readers)
    return None


def removed_reason(node: ir.Node) -> str:
    """Why `node` is not in the graph onnxruntime runs."""
    out = node.outputs[0] if node.outputs else None
    if node.op_type in ("Relu", "Clip") and out is not None and out.consumers() and all(
            reader.op_type == "QuantizeLinear" for reader in out.consumers()):
        return "folded into the QuantizeLinear after it (its grid clips as well)"
    if node.op_type in ("Identity", "Dropout"):
        return NO_OP
    if all(value is None or _constant(value) is not None or _producer_op(value) in ("Shape", "Constant")
           for value in node.inputs):
        return "constant-folded"
    return "fused into a neighbouring node by onnxruntime"


SHAPE_TYPES = (ir.DataType.INT64, ir.DataType.INT32)


def _static(value: ir.Value) -> bool:
    """A constant, or an int64/int32 tensor computed from Shape/Size and constants only."""
    if _constant(value) is not None:
        return True
    producer = value.producer()
    return value.dtype in SHAPE_TYPES and producer is not None and shape_only(producer)


def shape_only(node: ir.Node) -> bool:
    """`node` does shape arithmetic: Shape/Size, or integer ops on their results and constants."""
    if node.op_type in ("Shape", "Size"):
        return True
    if not node.outputs or any(out.dtype not in SHAPE_TYPES for out in node.outputs):
        return False
    return all(_static(value) for value in node.inputs if value is not None)
