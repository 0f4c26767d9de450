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
   relu(x / s) = relu(x) / s for s > 0. With calibration data (`data`), s instead
   minimises each pair's weight-and-activation noise model (qtool.quant.cle_scales), from
   per-channel statistics measured in one float pass;
4. high-bias absorption (section 4.3.2) where W1's output went through a BN with (gamma, beta)
   and a ReLU follows: c = max(0, beta - 3 gamma), b1' = b1 - c, b2' = b2 + W2 c. Exact as long
   as the pre-activation stays above c (BN statistics say it does, up to 3 sigma). Unlike AIMET we
   skip a zero-padded W2: at its borders the absorbed W2 c would be added where padding adds 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qtool.files import strict_json
from qtool.ir.graph import add_initializer, constant_array, hand_over, set_initializer, shape_of
from qtool.runtime.channel_stats import ChannelStats, ChannelTap, channel_statistics
from qtool.ir.layers import (
    LINEAR_OPS,
    attr_int,
    bias_array,
    input_channel_axis,
    output_channel_axis,
    output_channels,
    scale_input_channels,
    scale_output_channels,
    set_bias,
)
from qtool.ir.ranges import clip_bounds
from qtool.progress import Progress, no_progress
from qtool.quant.cle_scales import PairNoise, cle_scales, noise_aware_scales
from qtool.steps import RELU6_MODES
from qtool.steps.fold import BN_STATS_KEY, fold_batch_norms

log = logging.getLogger(__name__)

EQUIVARIANT_ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu"}
NOISE_AWARE_ITERATIONS = 10  # grid-searched scales settle to a few % in 5-10 sweeps, not to 1e-6


@dataclass(frozen=True)
class NoiseAwareOptions:
    """The grids the noise model assumes (qtool.quant.cle_scales): per-tensor, these bit-widths."""

    param_bw: int = 8
    act_bw: int = 8


@dataclass
class EqualizeResult:
    model: ir.Model
    folded: int = 0
    relu6_replaced: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)
    noise_aware: int = 0  # pairs whose scales came from the noise model (data given)
    iterations: int = 0
    absorbed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)  # --per-channel: tensors rescaled (steps.depthwise_inputs)
    widened_bits: float = 0.0  # --per-channel: the largest log2(1 / s) applied


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
        hand_over(out, new_out)
        model.graph.remove(node, safe=True)
        count += 1
    return count


def _weight(node: ir.Node) -> np.ndarray | None:
    if node.op_type not in LINEAR_OPS or node.op_type == "ConvTranspose" or len(node.inputs) < 2:
        return None
    value = node.inputs[1]
    if value is None or value.const_value is None or len(value.uses()) != 1:
        return None
    return value.const_value.numpy()


def zero_pad(node: ir.Node) -> bool:
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
        if nxt is not None and zero_pad(nxt):
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


def bound_relu6(model: ir.Model, clip: ir.Node, bounds: np.ndarray, channel_rank: int) -> None:
    """Clip(0, 6) -> Relu then Min with per-channel bounds 6/s: the same function after scaling."""
    relu = ir.node("Relu", [clip.inputs[0]], name=f"{clip.name or clip.outputs[0].name}_relu")
    shape = (bounds.size, *([1] * (channel_rank - 2))) if channel_rank > 2 else (bounds.size,)
    bound = add_initializer(model, f"{clip.outputs[0].name}_bound", bounds.reshape(shape).astype(np.float32))
    minimum = ir.node("Min", [relu.outputs[0], bound], name=clip.name or None)
    out = clip.outputs[0]
    dtype = out.dtype or clip.inputs[0].dtype or ir.DataType.FLOAT  # None without shape inference
    relu.outputs[0].dtype = dtype
    minimum.outputs[0].dtype, minimum.outputs[0].shape = dtype, out.shape
    model.graph.insert_after(clip, [relu, minimum])
    hand_over(out, minimum.outputs[0])
    model.graph.remove(clip, safe=True)


def _out_ranges(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    axis = output_channel_axis(node, weight)
    return np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)


def _in_ranges(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    axis = input_channel_axis(node, weight)
    return np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)


def _pair_noise(pair: Pair, w1: np.ndarray, w2: np.ndarray, joining: ChannelStats, fan_in: ChannelStats,
                options: NoiseAwareOptions) -> PairNoise:
    """The pair's noise model (qtool.quant.cle_scales) from its current weights and the current
    statistics of the tensor joining it and of W1's input."""
    axis = input_channel_axis(pair.second, w2)
    columns = np.moveaxis(w2, axis, 0).reshape(w2.shape[axis], -1)
    channels = columns.shape[0]
    if pair.first.op_type == "Conv":  # group g: output c sees its group's C_in / g input channels
        groups = attr_int(pair.first, "group", 1)
        per_group = fan_in.power.reshape(groups, -1).sum(axis=1) * int(np.prod(w1.shape[2:]))
        input_energy = np.repeat(per_group, channels // groups)
    else:
        input_energy = np.full(channels, fan_in.power.sum())
    return PairNoise(
        first_ranges=_out_ranges(pair.first, w1), second_ranges=_in_ranges(pair.second, w2),
        second_energy=(columns ** 2).sum(axis=1), second_fan=columns.shape[1],
        act_high=np.maximum(joining.high, 0.0), act_low=np.minimum(joining.low, 0.0), act_power=joining.power,
        input_energy=input_energy, param_levels=2.0 ** (options.param_bw - 1) - 1,
        act_levels=2.0 ** options.act_bw - 1)


def _scale_pair(model: ir.Model, pair: Pair, stats: dict, bounds: dict[int, np.ndarray],
                channel_stats: dict[str, ChannelStats] | None = None,
                options: NoiseAwareOptions | None = None) -> float:
    """Equalize one pair in place; returns the largest |log s| applied (0 when converged).

    With channel statistics the scales minimise the pair's quantization noise model
    (activations included); without, they are AIMET's sqrt(r1 r2) / r2."""
    w1 = pair.first.inputs[1].const_value.numpy().astype(np.float64)
    w2 = pair.second.inputs[1].const_value.numpy().astype(np.float64)
    joining, fan_in = pair.second.inputs[0].name, pair.first.inputs[0].name
    if channel_stats is not None and joining in channel_stats and fan_in in channel_stats:
        s = noise_aware_scales(_pair_noise(pair, w1, w2, channel_stats[joining], channel_stats[fan_in],
                                           options or NoiseAwareOptions()))
    else:
        s = cle_scales(_out_ranges(pair.first, w1), _in_ranges(pair.second, w2))
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
    if channel_stats is not None and joining in channel_stats:
        channel_stats[joining] = channel_stats[joining].scaled(s)
    return float(np.max(np.abs(np.log(s)))) if channels else 0.0


def _channel_taps(pairs: list[Pair]) -> list[ChannelTap]:
    """The tensors the noise model reads: each pair's joining tensor and its first layer's input.
    Channels are axis 1 of Conv and Gemm tensors, the last axis of MatMul's; a MatMul tensor of
    unknown rank is left out (its pair keeps AIMET's scales)."""
    taps: dict[str, ChannelTap] = {}
    for pair in pairs:
        for value, layer in ((pair.second.inputs[0], pair.second), (pair.first.inputs[0], pair.first)):
            if layer.op_type == "Conv":
                rank = len(layer.inputs[1].const_value.shape)
            elif layer.op_type == "Gemm":
                rank = 2
            else:
                shape = shape_of(value)
                rank = len(shape) if shape is not None else 0
            if rank >= 2:
                taps[value.name] = ChannelTap(value.name, 1 if layer.op_type != "MatMul" else rank - 1, rank)
    return list(taps.values())


def _absorb(model: ir.Model, pair: Pair, stats: dict, bounds: dict[int, np.ndarray],
            channel_stats: dict[str, ChannelStats] | None = None) -> bool:
    """High-bias absorption across a ReLU (white paper 4.3.2): b1' = b1 - c, b2' = b2 + W2 c.

    c per channel: with data, the smallest value the activation took there (exact on that
    data); without, AIMET's max(0, beta - 3 gamma) from the first layer's BN statistics, which
    holds only as far as the BN statistics describe the data. Also across a bounded ReLU6
    (relu6="bound", before its Min is written), with data only: where x >= c,
    min(relu(x), b) = min(relu(x - c), b - c) + c, so the bound moves down by c too; without
    data a bounded pair is left alone, since 'bound' promises the float function unchanged
    (EfficientNet-Lite0 with the BN rule: 26 dB from the float model)."""
    key = pair.first.outputs[0].name
    bounded = pair.activation is not None and id(pair.activation) in bounds
    if pair.activation is None or not (pair.activation.op_type == "Relu" or bounded):
        return False
    if pair.pad is not None or (pair.second.op_type == "Conv" and _pads(pair.second)):
        return False  # zero padding would add W2 c where the unabsorbed model adds nothing
    joining = pair.second.inputs[0].name
    if channel_stats is not None and joining in channel_stats:
        c = np.maximum(0.0, channel_stats[joining].low)
    elif key in stats and not bounded:
        c = np.maximum(0.0, np.asarray(stats[key]["beta"]) - 3 * np.abs(np.asarray(stats[key]["gamma"])))
    else:
        return False
    if bounded:
        c = np.minimum(c, bounds[id(pair.activation)])
    if not np.any(c > 0):
        return False
    if bounded:
        bounds[id(pair.activation)] = bounds[id(pair.activation)] - c
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
    if key in stats:
        stats[key] = {"gamma": list(stats[key]["gamma"]), "beta": list(np.asarray(stats[key]["beta"]) - c)}
    return True


def _pads(conv: ir.Node) -> bool:
    pads = conv.attributes.get("pads")
    auto_pad = conv.attributes.get("auto_pad")
    return bool(pads is not None and any(pads.as_ints())) or (
        auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID"))




def equalize(model: ir.Model, *, relu6: str = "replace", absorb_bias: bool = True,
             max_iterations: int = 100, tolerance: float = 1e-6,
             data: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
             noise_options: NoiseAwareOptions = NoiseAwareOptions(), total: int | None = None,
             progress: Progress = no_progress) -> EqualizeResult:
    """Fold, handle ReLU6, scale every pair to convergence, absorb high biases; a new model.

    relu6: "replace" (AIMET: ReLU6 -> ReLU, the float function changes where activations exceed
    6), "keep" (pairs joined by a ReLU6 are not scaled), or "bound" (qtool: ReLU6 -> ReLU and a
    per-channel Min at 6 / s, so scaling goes through it and the float function stays exact).
    data: calibration batches (a fresh iterable per call). With it, one float pass measures the
    channels of every joining tensor and the scales minimise each pair's noise model, activation
    grid included (qtool.quant.cle_scales), instead of AIMET's weights-only rule.
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
    channel_stats = None
    if data is not None and pairs:
        channel_stats = channel_statistics(model, _channel_taps(pairs), data(), total=total, progress=progress)
        result.noise_aware = sum(p.second.inputs[0].name in channel_stats and p.first.inputs[0].name in channel_stats
                                 for p in pairs)
        max_iterations, tolerance = min(max_iterations, NOISE_AWARE_ITERATIONS), max(tolerance, 1e-3)
    for result.iterations in range(1, max_iterations + 1):
        change = max((_scale_pair(model, pair, stats, bounds, channel_stats, noise_options) for pair in pairs),
                     default=0.0)
        if change < tolerance:
            break
    if absorb_bias:
        result.absorbed = sum(_absorb(model, pair, stats, bounds, channel_stats) for pair in pairs)
    for pair in pairs:
        if pair.activation is not None and id(pair.activation) in bounds:
            rank = len(pair.first.inputs[1].const_value.shape) if pair.first.op_type == "Conv" else 2
            bound_relu6(model, pair.activation, bounds[id(pair.activation)], rank)
            result.relu6_replaced += 1
    if stats:
        model.metadata_props[BN_STATS_KEY] = strict_json.dumps(stats, indent=None)
    return result
