"""Derive the QDQ model from the (float model, encodings) pair.

Activations get QuantizeLinear -> DequantizeLinear after their producer where onnxruntime has
the integer type (8-bit: uint8/int8; 16-bit: com.microsoft uint16/int16) and a float
fake-quant subgraph otherwise (other bit-widths, strict symmetric grids):

    y = s * (clip(round(x / s) - offset, 0, q_max) + offset)       (white paper eq. 2.7)

Weights are stored already quantized, as integers in an int8/uint8 container (any bit-width up
to 8 fits: a 4-bit weight is an int8 holding values in [-8, 7]) followed by DequantizeLinear, the
standard QDQ layout onnxruntime turns into integer kernels. Wider weights (9..16 bits) and float16
ones are stored fake-quantized in float. For the deployable model (`integer_bias=True`), float
biases of Conv/Gemm whose input and weight are 8-bit quantized become int32 with scale
s_input * s_weight, which onnxruntime needs to fuse QLinearConv/QGemm.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.ir.block_qdq import BLOCK_OPSET, block_param_quantizer, has_blocks, stored_array
from qtool.ir.graph import (MIN_QDQ_OPSET, add_initializer, clone, ensure_opset, set_initializer, unique_name,
                            value_by_name)
from qtool.quant import Encoding, quantize, quantize_dequantize
from qtool.quant.blockwise import BlockEncoding

MS_DOMAIN = "com.microsoft"


def build_qdq_model(model: ir.Model, encodings: EncodingSet, *, integer_bias: bool = False,
                    source: str = "encodings") -> ir.Model:
    """A new model with quantizers inserted; `model` is not changed."""
    qdq = ensure_opset(clone(model), BLOCK_OPSET if has_blocks(encodings.params) else MIN_QDQ_OPSET, source=source)
    if "qtool.source" in model.meta:  # onnxruntime errors name the file the model came from
        qdq.meta["qtool.source"] = f"{model.meta['qtool.source']} (quantized with {source})"
    values = value_by_name(qdq)
    for name in list(encodings.params) + list(encodings.activations):
        if name not in values:
            raise QtoolError(f"{source}: tensor '{name}' is not in the model",
                             "were the encodings computed for another model?")
    for name, enc in sorted(encodings.params.items()):
        value = values[name]
        if value.const_value is None:
            raise QtoolError(f"{source}: param encoding '{name}' names a computed tensor, not an initializer")
        if not (enc.dtype == "int" and enc.bw >= 32):  # aimet's int32 bias encodings: lossless, not simulated
            _quantize_param(qdq, value, enc)
    for name, enc in sorted(encodings.activations.items()):
        value = values[name]
        if value.const_value is not None:  # a constant aimet quantizes as an activation: stored quantized
            _quantize_param(qdq, value, enc)
        else:
            _quantize_activation(qdq, value, enc)
    if integer_bias:
        _quantize_biases(qdq)
    if MS_DOMAIN in {node.domain for node in qdq.graph}:
        qdq.opset_imports.setdefault(MS_DOMAIN, 1)
    return qdq


def _container(enc: Encoding, bits: int) -> tuple[np.dtype, int]:
    """Integer container type and the shift from the unsigned grid into it (0 for unsigned)."""
    signed = enc.symmetric and bool(np.all(enc.offset < 0))
    if bits == 8:
        return (np.dtype(np.int8), -int(2 ** 7)) if signed else (np.dtype(np.uint8), 0)
    return (np.dtype(np.int16), -int(2 ** 15)) if signed else (np.dtype(np.uint16), 0)


def _zero_point(enc: Encoding, dtype: np.dtype) -> np.ndarray:
    """ONNX zero point: the integer that real 0 maps to, in the container type."""
    if dtype.kind == "i":
        return np.zeros_like(enc.offset).astype(dtype)
    return (-enc.offset).astype(dtype)


def _scale_zp(qdq: ir.Model, base: str, enc: Encoding, dtype: np.dtype) -> tuple[ir.Value, ir.Value]:
    scale = enc.scale if enc.per_channel else enc.scale.reshape(())
    zp = _zero_point(enc, dtype)
    zp = zp if enc.per_channel else zp.reshape(())
    return add_initializer(qdq, f"{base}_scale", scale.astype(np.float32)), add_initializer(qdq, f"{base}_zero_point", zp)


def param_quantizer(qdq: ir.Model, value: ir.Value, enc: Encoding) -> tuple[list[ir.Node], ir.Value] | None:
    """Nodes and the value holding the quantized weight (not wired to any consumer yet): an
    integer initializer + DequantizeLinear (8-bit containers), or a fake-quantized float
    initializer (no nodes). None for non-float32 parameters."""
    weights = value.const_value.numpy()
    if weights.dtype != np.float32:
        return None
    if isinstance(enc, BlockEncoding):  # opset-21 DequantizeLinear with block_size (qtool.ir.block_qdq)
        return block_param_quantizer(qdq, value, enc)
    if _fake_quantized(enc):
        return [], add_initializer(qdq, f"{value.name}_fakequant", quantize_dequantize(weights, enc))
    dtype, _ = _container(enc, 8)
    int_value = add_initializer(qdq, f"{value.name}_quantized", _stored_integers(weights, enc))
    scale, zp = _scale_zp(qdq, value.name, enc, dtype)
    attrs = {"axis": enc.axis} if enc.per_channel else {}
    out = ir.Value(name=unique_name(qdq, f"{value.name}_dequantized"))
    node = ir.node("DequantizeLinear", [int_value, scale, zp], attrs, outputs=[out],
                   name=unique_name(qdq, f"{value.name}_DequantizeLinear"))
    out.dtype, out.shape = ir.DataType.FLOAT, ir.Shape(weights.shape)
    return [node], out


def _fake_quantized(enc: Encoding) -> bool:
    """Parameters onnxruntime has no integer type for are stored already fake-quantized."""
    return enc.is_float or enc.bw > 8


def _stored_integers(weights: np.ndarray, enc: Encoding) -> np.ndarray:
    """The weight's grid integers in the 8-bit container DequantizeLinear reads."""
    dtype, _ = _container(enc, 8)
    grid = quantize(weights, enc)  # unsigned grid, float32 holding integers
    if dtype.kind == "i":  # in float32 (exact: integers below 2^24), not float64 through the int64 offset
        grid = np.add(grid, enc.offset.reshape(_axis_shape(enc, weights.ndim)).astype(np.float32), out=grid
                      if isinstance(grid, np.ndarray) and grid.ndim else None)
    return grid.astype(dtype)


def requantize_param(qdq: ir.Model, consumer: ir.Node, index: int, weights: np.ndarray, enc: Encoding) -> None:
    """Give an already-quantized parameter new float values (same encoding, same nodes): what
    `param_quantizer` would have built for `weights`, without rebuilding the model."""
    value = consumer.inputs[index]
    if isinstance(enc, BlockEncoding):
        dequantize_node = value.producer()
        stored = value if dequantize_node is None else dequantize_node.inputs[0]
        array = stored_array(weights, enc)
    elif _fake_quantized(enc):
        stored, array = value, quantize_dequantize(weights, enc)
    else:
        dequantize_node = value.producer()
        if dequantize_node is None or dequantize_node.op_type != "DequantizeLinear":
            raise ValueError(f"{consumer.name}: input {index} is not a quantized parameter")
        stored, array = dequantize_node.inputs[0], _stored_integers(weights, enc)
    set_initializer(qdq, stored, array)


def _quantize_param(qdq: ir.Model, value: ir.Value, enc: Encoding) -> None:
    """Replace the weight by its quantized form for every consumer."""
    built = param_quantizer(qdq, value, enc)
    if built is None:
        return
    nodes, out = built
    if nodes:
        qdq.graph.insert_before(first_consumer(qdq, value), nodes)
    value.replace_all_uses_with(out)
    if not value.uses() and not value.is_graph_output():
        qdq.graph.initializers.pop(value.name)


def _axis_shape(enc: Encoding, ndim: int) -> tuple[int, ...]:
    if not enc.per_channel:
        return ()
    shape = [1] * ndim
    shape[enc.axis] = -1
    return tuple(shape)


def first_consumer(qdq: ir.Model, value: ir.Value) -> ir.Node:
    users = {id(node) for node in value.consumers()}
    for node in qdq.graph:
        if id(node) in users:
            return node
    raise AssertionError(f"{value.name} has no consumer")


def activation_quantizer(qdq: ir.Model, value: ir.Value, enc: Encoding) -> tuple[list[ir.Node], ir.Value]:
    """The quantizer's nodes reading `value` and their output (not wired to the consumers yet)."""
    if enc.is_float:
        return _cast_chain(qdq, value, enc)
    if enc.bw in (8, 16) and not enc.strict:
        return _native_qdq(qdq, value, enc)
    return _fake_quant(qdq, value, enc)


def _quantize_activation(qdq: ir.Model, value: ir.Value, enc: Encoding) -> None:
    """Insert the quantizer right after the producer and move every consumer onto its output."""
    consumers = list(value.consumers())
    nodes, out = activation_quantizer(qdq, value, enc)
    splice_after(qdq, value, consumers, nodes, out)


def splice_after(qdq: ir.Model, value: ir.Value, consumers: list[ir.Node], nodes: list[ir.Node],
                 out: ir.Value) -> None:
    """Insert `nodes` right after `value`'s producer and make `consumers` (and the graph output,
    under its original name) read `out` instead of `value`."""
    anchor = value.producer()
    if anchor is None:
        qdq.graph.insert_before(next(iter(qdq.graph)), nodes)
    else:
        qdq.graph.insert_after(anchor, nodes)
    for consumer in consumers:
        for index, inp in enumerate(consumer.inputs):
            if inp is value:
                consumer.replace_input_with(index, out)
    if value.is_graph_output():
        outputs = qdq.graph.outputs
        position = next(i for i, v in enumerate(outputs) if v is value)
        original = value.name
        value.name = unique_name(qdq, f"{original}_float")
        out.name = original
        outputs[position] = out
    out.dtype, out.shape = value.dtype, value.shape


def _node(qdq: ir.Model, op: str, inputs: list, base: str, attrs: dict | None = None, domain: str = "") -> ir.Node:
    out = ir.Value(name=unique_name(qdq, f"{base}_{op}"))
    return ir.node(op, inputs, attrs or {}, domain=domain, outputs=[out], name=unique_name(qdq, f"{base}_{op}_node"))


def _native_qdq(qdq: ir.Model, value: ir.Value, enc: Encoding) -> tuple[list[ir.Node], ir.Value]:
    dtype, _ = _container(enc, enc.bw)
    scale, zp = _scale_zp(qdq, value.name, enc, dtype)
    domain = MS_DOMAIN if enc.bw == 16 else ""
    q = _node(qdq, "QuantizeLinear", [value, scale, zp], value.name, domain=domain)
    q.outputs[0].dtype = ir.DataType(zp.dtype)  # the integer type: export's bias quantization reads it
    dq = _node(qdq, "DequantizeLinear", [q.outputs[0], scale, zp], value.name, domain=domain)
    return [q, dq], dq.outputs[0]


def _fake_quant(qdq: ir.Model, value: ir.Value, enc: Encoding) -> tuple[list[ir.Node], ir.Value]:
    """Float subgraph for grids onnxruntime has no type for (eq. 2.7 step by step)."""
    if enc.per_channel:
        raise QtoolError(f"per-channel encoding on activation '{value.name}' is not supported")
    base = value.name
    scale = add_initializer(qdq, f"{base}_scale", enc.scale.reshape(()).astype(np.float32))
    offset = add_initializer(qdq, f"{base}_offset", np.float32(enc.offset[0]))
    low = add_initializer(qdq, f"{base}_qmin", np.float32(0))
    high = add_initializer(qdq, f"{base}_qmax", np.float32(enc.qmax))
    div = _node(qdq, "Div", [value, scale], base)
    rnd = _node(qdq, "Round", [div.outputs[0]], base)
    sub = _node(qdq, "Sub", [rnd.outputs[0], offset], base)
    clip = _node(qdq, "Clip", [sub.outputs[0], low, high], base)
    add = _node(qdq, "Add", [clip.outputs[0], offset], base)
    mul = _node(qdq, "Mul", [add.outputs[0], scale], base)
    return [div, rnd, sub, clip, add, mul], mul.outputs[0]


def _cast_chain(qdq: ir.Model, value: ir.Value, enc: Encoding) -> tuple[list[ir.Node], ir.Value]:
    if enc.bw != 16:
        raise QtoolError(f"float encoding of {enc.bw} bits on '{value.name}': only float16 is supported")
    down = _node(qdq, "Cast", [value], value.name, {"to": ir.DataType.FLOAT16})
    up = _node(qdq, "Cast", [down.outputs[0]], value.name, {"to": ir.DataType.FLOAT})
    return [down, up], up.outputs[0]


def _dq_scale(value: ir.Value | None) -> tuple[np.ndarray, int | None] | None:
    """(scale, axis) when `value` comes out of an 8-bit DequantizeLinear, else None."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain not in ("", "ai.onnx"):
        return None
    if producer.inputs[0].dtype not in (ir.DataType.INT8, ir.DataType.UINT8) or producer.inputs[1].const_value is None:
        return None
    axis = producer.attributes.get("axis")
    return producer.inputs[1].const_value.numpy(), (axis.as_int() if axis is not None else None)


def _quantize_biases(qdq: ir.Model) -> None:
    """int32 biases (scale = s_in * s_w) so onnxruntime can fuse Conv/Gemm into integer kernels."""
    for node in list(qdq.graph):
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
            continue
        bias = node.inputs[2]
        x, w = _dq_scale(node.inputs[0]), _dq_scale(node.inputs[1])
        if bias.const_value is None or x is None or w is None or x[0].size != 1:
            continue
        b = bias.const_value.numpy().astype(np.float64)
        w_scale = w[0].astype(np.float64)
        if w_scale.size == 1:
            w_scale = np.full(b.shape, float(w_scale.reshape(())))
        elif w[1] != 0 or w_scale.shape != b.shape:
            continue
        b_scale = (float(x[0].reshape(())) * w_scale).astype(np.float32)
        q = np.clip(np.round(b / b_scale.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
        q_value = add_initializer(qdq, f"{bias.name}_quantized", q)
        s_value = add_initializer(qdq, f"{bias.name}_scale", b_scale)
        z_value = add_initializer(qdq, f"{bias.name}_zero_point", np.zeros(b.shape, np.int32))
        out = ir.Value(name=unique_name(qdq, f"{bias.name}_dequantized"))
        dq = ir.node("DequantizeLinear", [q_value, s_value, z_value], {"axis": 0}, outputs=[out],
                     name=unique_name(qdq, f"{bias.name}_DequantizeLinear"))
        out.dtype, out.shape = ir.DataType.FLOAT, ir.Shape(b.shape)
        qdq.graph.insert_before(node, dq)
        node.replace_input_with(2, out)
        if not bias.uses():
            qdq.graph.initializers.pop(bias.name)
