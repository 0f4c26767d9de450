"""Weight layouts of the linear layers (Conv, ConvTranspose, Gemm, MatMul) and their biases.

Folding, equalization, bias correction and the weight-range report all need the same facts:
which weight axis holds output channels and which input channels, and how to write a bias.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import add_initializer, hand_over, set_initializer, unique_name

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return attr.as_float() if attr is not None else default


def scale_output_channels(node: ir.Node, weight: np.ndarray, k: np.ndarray) -> np.ndarray:
    """W with every output channel o multiplied by k[o] (the layouts of LINEAR_OPS)."""
    if node.op_type == "Conv":
        return weight * k.reshape(-1, *([1] * (weight.ndim - 1)))
    if node.op_type == "ConvTranspose":
        groups = attr_int(node, "group", 1)
        in_ch, out_per_group = weight.shape[0], weight.shape[1]
        view = weight.reshape(groups, in_ch // groups, out_per_group, -1)
        return (view * k.reshape(groups, 1, out_per_group, 1)).reshape(weight.shape)
    if node.op_type == "Gemm" and attr_int(node, "transB", 0):
        return weight * k[:, None]
    return weight * k[None, :]  # Gemm without transB, MatMul: (K, N)


def output_channels(node: ir.Node, weight: np.ndarray) -> int:
    if node.op_type == "Conv":
        return weight.shape[0]
    if node.op_type == "ConvTranspose":
        return weight.shape[1] * attr_int(node, "group", 1)
    if node.op_type == "Gemm" and attr_int(node, "transB", 0):
        return weight.shape[0]
    return weight.shape[-1]


def output_channel_axis(node: ir.Node, weight: np.ndarray) -> int:
    """Weight axis of the output channels for Conv, Gemm and MatMul (ConvTranspose: see
    scale_output_channels, its output channels span two axes when grouped)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if attr_int(node, "transB", 0) else 1
    return weight.ndim - 1


def input_channel_axis(node: ir.Node, weight: np.ndarray) -> int | None:
    """Weight axis of the layer's input channels; None where one axis does not hold them
    (grouped, non-depthwise convolutions)."""
    if node.op_type == "Conv":
        groups = attr_int(node, "group", 1)
        if groups == 1:
            return 1
        return 0 if weight.shape[1] == 1 and groups == weight.shape[0] else None  # depthwise
    if node.op_type == "Gemm":
        return 1 if attr_int(node, "transB", 0) else 0
    if node.op_type == "MatMul" and weight.ndim == 2:
        return 0
    return None


def scale_input_channels(node: ir.Node, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """W with every input channel i multiplied by s[i]."""
    axis = input_channel_axis(node, weight)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight * s.reshape(shape)


def matmul_bias_add(layer: ir.Node) -> ir.Node | None:
    """The Add that holds a MatMul's bias (MatMul has no bias input): the MatMul's only consumer,
    adding a constant with one value per output channel, shape (N,) or (1, ..., N)."""
    out, weight = layer.outputs[0], layer.inputs[1] if len(layer.inputs) > 1 else None
    if layer.op_type != "MatMul" or weight is None or weight.const_value is None:
        return None
    if len(out.uses()) != 1 or out.is_graph_output():
        return None
    add = out.consumers()[0]
    if add.op_type != "Add" or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    if other is None or other is out or other.const_value is None:
        return None
    shape, channels = tuple(other.const_value.shape), output_channels(layer, weight.const_value)
    if not shape or shape[-1] != channels or int(np.prod(shape)) != channels:
        return None
    if out.shape is None or len(shape) > len(out.shape):  # the bias must not add axes to the output
        return None
    return add


def bias_value(layer: ir.Node) -> ir.Value | None:
    """The value holding the layer's bias: its third input, or a MatMul's bias Add constant."""
    if layer.op_type == "MatMul":
        add = matmul_bias_add(layer)
        if add is None:
            return None
        return add.inputs[1] if add.inputs[0] is layer.outputs[0] else add.inputs[0]
    return layer.inputs[2] if len(layer.inputs) > 2 else None


def bias_array(layer: ir.Node, channels: int) -> np.ndarray:
    """The layer's bias in float64 (zeros when it has none)."""
    value = bias_value(layer)
    if value is None or value.const_value is None:
        return np.zeros(channels)
    return np.broadcast_to(value.const_value.numpy().astype(np.float64).reshape(-1), (channels,)).copy()


def set_bias(model: ir.Model, layer: ir.Node, bias: np.ndarray) -> None:
    """Write the layer's bias, adding a bias input (or an Add after MatMul) when it had none."""
    bias = bias.astype(np.float32)
    value = bias_value(layer)
    if value is not None and value.const_value is not None:
        shape = tuple(value.const_value.shape)
        if len(value.uses()) == 1 and value.name in model.graph.initializers:
            set_initializer(model, value, bias.reshape(shape))
        else:  # shared with another node: this layer gets its own copy
            own = add_initializer(model, f"{layer.outputs[0].name}_bias", bias.reshape(shape))
            holder = matmul_bias_add(layer) if layer.op_type == "MatMul" else layer
            holder.replace_input_with(list(holder.inputs).index(value), own)
        return
    if layer.op_type == "MatMul":
        _insert_bias_add(model, layer, bias)
        return
    value = add_initializer(model, f"{layer.outputs[0].name}_bias", bias)
    if len(layer.inputs) < 3:
        layer.resize_inputs(3)
    layer.replace_input_with(2, value)


def _insert_bias_add(model: ir.Model, layer: ir.Node, bias: np.ndarray) -> None:
    """MatMul -> Add(bias). The Add's output takes the MatMul output's name, so encodings and
    consumers keyed by it now see the biased value (as for Conv, whose bias is inside)."""
    out = layer.outputs[0]
    name = out.name
    bias_input = add_initializer(model, f"{name}_bias", bias)
    biased = ir.Value(name=None, shape=out.shape, type=out.type)
    hand_over(out, biased, unique_name(model, f"{name}_no_bias"))  # before the Add reads `out`
    add = ir.node("Add", [out, bias_input], outputs=[biased], name=unique_name(model, f"{layer.name or name}_bias_add"))
    model.graph.insert_after(layer, add)
