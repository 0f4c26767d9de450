"""EqualizeCrossLayer: the unified cross-layer equalization of white paper section 4.3.

In this order:
1. fold BatchNormalization (qtool.steps.fold), keeping gamma/beta for step 4;
2. replace ReLU6 (Clip 0..6) by ReLU, because ReLU6 is not scale-equivariant: relu6(s x) != s relu6(x);
   the float model changes where activations exceeded 6 (`keep_relu6` skips this, and then pairs
   joined by a ReLU6 are not scaled);
3. cross-layer scaling of every pair of layers joined by a scale-equivariant activation (Relu,
   LeakyRelu, PRelu, or none), depthwise-separable triplets included as two overlapping pairs,
   iterated until the scales converge. For a pair, with r1_i the range of output channel i of W1
   and r2_i the range of input channel i of W2 (ranges: max |w|):
       s_i = sqrt(r1_i * r2_i) / r2_i,   W1' = W1 / s (per output channel), b1' = b1 / s,
       W2' = W2 * s (per input channel)
   after which both channel ranges equal sqrt(r1_i r2_i): f(W2 relu(W1 x)) is unchanged since
   relu(x / s) = relu(x) / s for s > 0;
4. high-bias absorption (section 4.3.2) where W1's output went through a BN with (gamma, beta)
   and a ReLU follows: c = max(0, beta - 3 gamma), b1' = b1 - c, b2' = b2 + W2 c. Exact as long
   as the pre-activation stays above c (BN statistics say it does, up to 3 sigma). Unlike AIMET we
   skip a zero-padded W2: at its borders the absorbed W2 c would be added where padding adds 0.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qtool.graph import add_initializer, constant_array, set_initializer
from qtool.layers import (
    LINEAR_OPS,
    bias_array,
    input_channel_axis,
    output_channel_axis,
    output_channels,
    scale_input_channels,
    scale_output_channels,
    set_bias,
)
from qtool.ranges import clip_bounds
from qtool.steps.fold import BN_STATS_KEY, fold_batch_norms

log = logging.getLogger(__name__)

EQUIVARIANT_ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu"}
DEAD_CHANNEL = 1e-6


@dataclass
class EqualizeResult:
    model: ir.Model
    folded: int = 0
    relu6_replaced: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)
    iterations: int = 0
    absorbed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Pair:
    first: ir.Node
    second: ir.Node
    activation: ir.Node | None
    pad: ir.Node | None = None


def _label(node: ir.Node) -> str:
    return node.name or node.outputs[0].name


def _is_relu6_activation(node: ir.Node) -> bool:
    """Clip(0, 6) applied to a layer's output: the ReLU6 that blocks CLE. A Clip(0, 6) elsewhere,
    e.g. inside hard-swish x * clip(x + 3, 0, 6) / 6, is a different function and stays."""
    if node.op_type != "Clip":
        return False
    bounds = clip_bounds(node)
    producer = node.inputs[0].producer()
    return (bounds is not None and float(bounds[0]) == 0.0 and float(bounds[1]) == 6.0
            and producer is not None and producer.op_type in (*LINEAR_OPS, "BatchNormalization"))


def replace_relu6(model: ir.Model) -> int:
    """Clip(0, 6) on a layer's output, attribute or input form, becomes Relu; returns how many."""
    count = 0
    for node in list(model.graph):
        if not _is_relu6_activation(node):
            continue
        relu = ir.node("Relu", [node.inputs[0]], name=node.name or None)
        out = node.outputs[0]
        model.graph.insert_after(node, relu)
        new_out = relu.outputs[0]
        new_out.dtype, new_out.shape = out.dtype, out.shape
        name = out.name
        out.replace_all_uses_with(new_out, replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        out.name = None
        new_out.name = name
        count += 1
    return count


def _weight(node: ir.Node) -> np.ndarray | None:
    if node.op_type not in LINEAR_OPS or node.op_type == "ConvTranspose" or len(node.inputs) < 2:
        return None
    value = node.inputs[1]
    if value is None or value.const_value is None or len(value.uses()) != 1:
        return None
    return value.const_value.numpy()


def _zero_pad(node: ir.Node) -> bool:
    """A Pad that adds zeros: it commutes with per-channel positive scaling."""
    if node.op_type != "Pad":
        return False
    mode = node.attributes.get("mode")
    if mode is not None and mode.as_string() != "constant":
        return False
    value = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    return value is None or not np.any(value)


def _sole_consumer(value: ir.Value) -> ir.Node | None:
    consumers = value.consumers()
    return consumers[0] if len(consumers) == 1 and not value.is_graph_output() else None


def find_pairs(model: ir.Model, relu6: str = "replace") -> tuple[list[Pair], list[tuple[str, str]]]:
    """Layer -> [equivariant activation] -> [zero Pad] -> layer chains, single consumers, own weights.

    With relu6="bound", a ReLU6 counts as equivariant: its bound becomes per channel (6 / s)."""
    pairs, skipped = [], []
    for first in model.graph:
        w1 = _weight(first)
        if w1 is None:
            continue
        nxt = _sole_consumer(first.outputs[0])
        activation = pad = None
        if nxt is not None and (nxt.op_type in EQUIVARIANT_ACTIVATIONS or nxt.op_type == "Clip"):
            if nxt.op_type == "Clip" and not (relu6 == "bound" and _is_relu6_activation(nxt)):
                skipped.append((_label(first), "followed by a Clip (ReLU6 kept): not scale-equivariant"))
                continue
            activation, nxt = nxt, _sole_consumer(nxt.outputs[0])
        if nxt is not None and _zero_pad(nxt):
            pad, nxt = nxt, _sole_consumer(nxt.outputs[0])
        w2 = _weight(nxt) if nxt is not None else None
        if w2 is None or nxt.inputs[0] is not (pad or activation or first).outputs[0]:
            continue
        axis = input_channel_axis(nxt, w2)
        if axis is None or w2.shape[axis] != output_channels(first, w1):
            skipped.append((_label(first), f"next layer {_label(nxt)} has a grouped or mismatched input"))
            continue
        pairs.append(Pair(first, nxt, activation, pad))
    return pairs, skipped


def _bound_relu6(model: ir.Model, clip: ir.Node, bounds: np.ndarray, channel_rank: int) -> None:
    """Clip(0, 6) -> Relu then Min with per-channel bounds 6/s: the same function after scaling."""
    relu = ir.node("Relu", [clip.inputs[0]], name=f"{clip.name or clip.outputs[0].name}_relu")
    shape = (bounds.size, *([1] * (channel_rank - 2))) if channel_rank > 2 else (bounds.size,)
    bound = add_initializer(model, f"{clip.outputs[0].name}_bound", bounds.reshape(shape).astype(np.float32))
    minimum = ir.node("Min", [relu.outputs[0], bound], name=clip.name or None)
    out = clip.outputs[0]
    relu.outputs[0].dtype = out.dtype
    minimum.outputs[0].dtype, minimum.outputs[0].shape = out.dtype, out.shape
    model.graph.insert_after(clip, [relu, minimum])
    name = out.name
    out.replace_all_uses_with(minimum.outputs[0], replace_graph_outputs=True)
    model.graph.remove(clip, safe=True)
    out.name = None
    minimum.outputs[0].name = name


def _out_ranges(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    axis = output_channel_axis(node, weight)
    return np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)


def _in_ranges(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    axis = input_channel_axis(node, weight)
    return np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)


def _scale_pair(model: ir.Model, pair: Pair, stats: dict, bounds: dict[int, np.ndarray]) -> float:
    """Equalize one pair in place; returns the largest |log s| applied (0 when converged)."""
    w1 = pair.first.inputs[1].const_value.numpy().astype(np.float64)
    w2 = pair.second.inputs[1].const_value.numpy().astype(np.float64)
    r1, r2 = _out_ranges(pair.first, w1), _in_ranges(pair.second, w2)
    # near-dead channels (a range below DEAD_CHANNEL of the layer's widest) keep s = 1: scaling
    # them up would mostly scale their bias up, and with it the activation range of the whole tensor
    valid = (r1 > DEAD_CHANNEL * r1.max(initial=0)) & (r2 > DEAD_CHANNEL * r2.max(initial=0))
    s = np.ones_like(r1)
    s[valid] = np.sqrt(r1[valid] * r2[valid]) / r2[valid]
    channels = s.size
    set_initializer(model, pair.first.inputs[1], scale_output_channels(pair.first, w1, 1 / s).astype(np.float32))
    if len(pair.first.inputs) > 2 and pair.first.inputs[2] is not None:
        set_bias(model, pair.first, bias_array(pair.first, channels) / s)
    set_initializer(model, pair.second.inputs[1], scale_input_channels(pair.second, w2, s).astype(np.float32))
    key = pair.first.outputs[0].name
    if key in stats:
        stats[key] = {k: list(np.asarray(v) / s) for k, v in stats[key].items()}
    if pair.activation is not None and id(pair.activation) in bounds:
        bounds[id(pair.activation)] = bounds[id(pair.activation)] / s
    return float(np.max(np.abs(np.log(s)))) if channels else 0.0


def _absorb(model: ir.Model, pair: Pair, stats: dict) -> bool:
    """High-bias absorption across a ReLU, from the BN statistics of the first layer's output."""
    key = pair.first.outputs[0].name
    if key not in stats or pair.activation is None or pair.activation.op_type != "Relu":
        return False
    if pair.second.op_type == "MatMul":
        return False  # no bias input to absorb into
    if pair.pad is not None or (pair.second.op_type == "Conv" and _pads(pair.second)):
        return False  # zero padding would add W2 c where the unabsorbed model adds nothing
    gamma, beta = np.asarray(stats[key]["gamma"]), np.asarray(stats[key]["beta"])
    c = np.maximum(0.0, beta - 3 * np.abs(gamma))
    if not np.any(c > 0):
        return False
    w1 = pair.first.inputs[1].const_value.numpy()
    w2 = pair.second.inputs[1].const_value.numpy().astype(np.float64)
    set_bias(model, pair.first, bias_array(pair.first, output_channels(pair.first, w1)) - c)
    axis = input_channel_axis(pair.second, w2)
    if pair.second.op_type == "Conv":
        if axis == 1:  # W2: (O, I, k...) -> sum over I and the kernel
            contribution = w2.reshape(w2.shape[0], w2.shape[1], -1).sum(axis=2) @ c
        else:  # depthwise: channel i only sees itself
            contribution = w2.reshape(w2.shape[0], -1).sum(axis=1) * c
    else:
        contribution = c @ (w2 if axis == 0 else w2.T)
    second_out = output_channels(pair.second, w2)
    set_bias(model, pair.second, bias_array(pair.second, second_out) + contribution)
    stats[key] = {"gamma": list(gamma), "beta": list(beta - c)}
    return True


def _pads(conv: ir.Node) -> bool:
    pads = conv.attributes.get("pads")
    auto_pad = conv.attributes.get("auto_pad")
    return bool(pads is not None and any(pads.as_ints())) or (
        auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID"))


RELU6_MODES = ("replace", "keep", "bound")


def equalize(model: ir.Model, *, relu6: str = "replace", absorb_bias: bool = True,
             max_iterations: int = 100, tolerance: float = 1e-6) -> EqualizeResult:
    """Fold, handle ReLU6, scale every pair to convergence, absorb high biases; a new model.

    relu6: "replace" (AIMET: ReLU6 -> ReLU, the float function changes where activations exceed
    6), "keep" (pairs joined by a ReLU6 are not scaled), or "bound" (qtool: ReLU6 -> ReLU and a
    per-channel Min at 6 / s, so scaling goes through it and the float function stays exact).
    """
    if relu6 not in RELU6_MODES:
        raise ValueError(f"relu6 must be one of {RELU6_MODES}, not {relu6!r}")
    folded = fold_batch_norms(model)
    model = folded.model
    result = EqualizeResult(model, folded=len(folded.folded))
    if relu6 == "replace":
        result.relu6_replaced = replace_relu6(model)
        if result.relu6_replaced:
            log.warning("replaced %d ReLU6 (Clip 0..6) by ReLU: float outputs change where activations "
                        "exceeded 6 (--relu6 bound keeps them exact, --relu6 keep leaves those pairs unscaled)",
                        result.relu6_replaced)
    stats = json.loads(model.metadata_props.get(BN_STATS_KEY, "{}"))
    pairs, result.skipped = find_pairs(model, relu6)
    result.pairs = [(_label(p.first), _label(p.second)) for p in pairs]
    bounds = {id(p.activation): np.full(output_channels(p.first, p.first.inputs[1].const_value.numpy()), 6.0)
              for p in pairs if p.activation is not None and p.activation.op_type == "Clip"}
    for result.iterations in range(1, max_iterations + 1):
        change = max((_scale_pair(model, pair, stats, bounds) for pair in pairs), default=0.0)
        if change < tolerance:
            break
    for pair in pairs:
        if pair.activation is not None and id(pair.activation) in bounds:
            rank = len(pair.first.inputs[1].const_value.shape) if pair.first.op_type == "Conv" else 2
            _bound_relu6(model, pair.activation, bounds[id(pair.activation)], rank)
            result.relu6_replaced += 1
    if absorb_bias:
        result.absorbed = sum(_absorb(model, pair, stats) for pair in pairs)
    if stats:
        model.metadata_props[BN_STATS_KEY] = json.dumps(stats, sort_keys=True)
    return result
