"""Depthwise-input equalization: one activation grid for channels of very different ranges.

Why. A per-tensor activation grid of range R gives a channel of range r only
bw - log2(R / r) bits. After BN folding the channels that a depthwise convolution reads often
differ in range by 16-30x (MobileNet-style blocks, PicoDet's LCNet backbone: the median channel
of 27 hard-swish outputs loses 3-5 of 8 bits), and per-channel *weights* do nothing for that.

Where rescaling is free. A depthwise Conv (group = input channels, one filter per channel, or m
filters per channel) computes output channel o from input channel o // m only, so

    DWConv(x / s, W * s) = DWConv(x, W)       (filter o scaled by s[o // m])

exactly, and a per-channel weight grid (axis 0) scales with its filter: the weights' quantization
is unchanged up to its scale. So the channels of a tensor X whose every consumer is a depthwise
Conv can be brought to one range for nothing, provided the producer can emit X / s exactly:

* a linear layer (Conv, Gemm: output channel c of W and b divided by s_c; with per-channel
  weights again free), directly or through a positively homogeneous activation (Relu,
  LeakyRelu, PRelu: f(x / s) = f(x) / s for s > 0) or a ReLU6, whose bound becomes 6 / s
  (Relu then a per-channel Min, as `equalize --relu6 bound` writes it);
* a function that ends in a scalar Div or Mul, e.g. hard-swish written out as
  x * Clip(x + 3, 0, 6) / 6: the constant becomes per channel (6 s_c, or (1/6) / s_c).

The scales: channel c's extent r_c = max(hi_c, 0) - min(lo_c, 0) (a grid always holds 0) is
measured in one float pass (onnxruntime reductions, qtool.runtime.channel_stats), and
s_c = max(r_c / max(r), floor): every channel is widened to the widest one, by at most 1 / floor.
No channel gets wider than the tensor already was, so no range grows. With per-tensor weights the
same scaling would shrink depthwise filters on a shared weight grid: it is meant for per-channel
weights only (`qtool equalize --per-channel`); cross-layer equalization (steps.equalize) is the
per-tensor answer.

Measured (PicoDet layout detector, per-channel W8A8, detection F1 against float, 24 pages):
0.76 -> 0.96 together with the hard-swish supergroup (qtool.ir.hard_swish); float outputs
unchanged (113 dB).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.files import strict_json
from qtool.ir.graph import add_initializer, constant_array, set_initializer
from qtool.ir.layers import attr_int, bias_array, output_channels, scale_output_channels, set_bias
from qtool.ir.ranges import clip_bounds
from qtool.progress import Progress, no_progress
from qtool.runtime.channel_stats import ChannelStats, ChannelTap, channel_statistics
from qtool.steps.equalize import EqualizeResult, bound_relu6, zero_pad  # bound_relu6: as `equalize --relu6 bound`
from qtool.steps.fold import BN_STATS_KEY, fold_batch_norms

DEFAULT_FLOOR = 1.0 / 16  # widen a channel by at most 4 bits' worth (measured: module docstring)
HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}  # f(x / s) = f(x) / s for s > 0


@dataclass(frozen=True)
class Candidate:
    """A tensor read only by depthwise Convs, and how its producer can emit it divided by s."""

    tensor: ir.Value
    readers: tuple[ir.Node, ...]  # the depthwise Convs (maybe behind a zero Pad)

    @property
    def rank(self) -> int:
        """The tensor's rank: its readers' weight rank (N, C, spatial...), known without shape inference."""
        return len(self.readers[0].inputs[1].const_value.shape)
    kind: str  # "layer" (a Conv/Gemm, maybe through an activation) or "constant" (final Div/Mul)
    layer: ir.Node | None = None  # kind "layer": the linear layer whose output channels scale
    activation: ir.Node | None = None  # kind "layer": Relu / LeakyRelu / PRelu / ReLU6 in between
    final: ir.Node | None = None  # kind "constant": the Div or Mul by a scalar


def _depthwise(node: ir.Node, value: ir.Value) -> bool:
    """A Conv reading `value` as its data input with one group per input channel and own weights."""
    if node.op_type != "Conv" or node.inputs[0] is not value or len(node.inputs) < 2:
        return False
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or len(weight.uses()) != 1:
        return False
    shape = weight.const_value.shape
    groups = attr_int(node, "group", 1)
    return groups > 1 and shape[1] == 1 and shape[0] % groups == 0


def _spatial_zero_pad(node: ir.Node) -> bool:
    """A zero Pad (it commutes with x / s) that pads no batch or channel entries (opset 11+ form)."""
    if not zero_pad(node) or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    pads = constant_array(node.inputs[1])
    if pads is None or (len(node.inputs) > 3 and node.inputs[3] is not None):
        return False  # unknown pads, or an axes input: not worth the bookkeeping
    rank = pads.size // 2
    return rank >= 2 and not np.any(pads.reshape(2, rank)[:, :2])


def _depthwise_reader(consumer: ir.Node, value: ir.Value) -> ir.Node | None:
    """The depthwise Conv that reads `value`, directly or through a spatial zero Pad (TF 'SAME')."""
    if _depthwise(consumer, value):
        return consumer
    if consumer.op_type == "Pad" and consumer.inputs[0] is value and _spatial_zero_pad(consumer):
        padded = consumer.outputs[0]
        readers = padded.consumers()
        if len(readers) == 1 and not padded.is_graph_output() and _depthwise(readers[0], padded):
            return readers[0]
    return None


def _own_layer(node: ir.Node | None) -> bool:
    """A Conv or Gemm(transB) whose weight (and bias) nothing else reads: we may rescale it."""
    if node is None or node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 2:
        return False
    if node.op_type == "Gemm" and not attr_int(node, "transB", 0):
        return False
    params = [v for v in node.inputs[1:] if v is not None]
    return all(v.const_value is not None and len(v.uses()) == 1 for v in params) and attr_int(node, "group", 1) == 1


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _relu6(node: ir.Node) -> bool:
    bounds = clip_bounds(node) if node.op_type == "Clip" else None
    return bounds is not None and float(bounds[0]) == 0.0 and float(bounds[1]) == 6.0


def _scalar_input(node: ir.Node) -> float | None:
    if len(node.inputs) != 2 or node.inputs[1] is None:
        return None
    array = constant_array(node.inputs[1])
    return float(array.reshape(-1)[0]) if array is not None and array.size == 1 and node.inputs[0].const_value is None else None


def _candidate(value: ir.Value) -> Candidate | None:
    """How the producer of `value` can emit value / s, when every reader is a depthwise Conv."""
    consumers = value.consumers()
    readers = tuple(_depthwise_reader(n, value) for n in consumers)
    if not readers or value.is_graph_output() or None in readers:
        return None
    node = value.producer()
    if node is None:
        return None
    if _own_layer(node):
        return Candidate(value, readers, "layer", layer=node)
    if node.op_type in HOMOGENEOUS or _relu6(node):
        layer = node.inputs[0].producer()
        slope_ok = node.op_type != "PRelu" or (node.inputs[1] is not None and node.inputs[1].const_value is not None)
        if slope_ok and _single_use(node.inputs[0]) and _own_layer(layer):
            return Candidate(value, readers, "layer", layer=layer, activation=node)
        return None
    if node.op_type in ("Div", "Mul") and _scalar_input(node) not in (None, 0.0):
        return Candidate(value, readers, "constant", final=node)
    return None


def find_candidates(model: ir.Model) -> list[Candidate]:
    """Every tensor that depthwise-input equalization can rescale, in graph order."""
    found = []
    for node in model.graph:
        for value in node.outputs:
            candidate = _candidate(value)
            if candidate is not None:
                found.append(candidate)
    return found


def channel_scales(stats: ChannelStats, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """s_c = max(r_c / max(r), floor), r_c = max(hi_c, 0) - min(lo_c, 0): x_c / s_c spans the widest extent."""
    extent = np.maximum(stats.high, 0.0) - np.minimum(stats.low, 0.0)
    widest = float(extent.max()) if extent.size else 0.0
    if widest <= 0.0 or not np.isfinite(widest):
        return np.ones_like(extent)
    return np.clip(extent / widest, floor, 1.0)


def _per_channel(array: np.ndarray, rank: int) -> np.ndarray:
    return array.reshape(-1, *([1] * (rank - 2))).astype(np.float32)


def _scale_readers(model: ir.Model, candidate: Candidate, s: np.ndarray) -> None:
    """Depthwise filter o times s[o // m]: the Conv reads x / s and computes the same output."""
    for conv in candidate.readers:
        weight = conv.inputs[1].const_value.numpy()
        per_channel = weight.shape[0] // s.size
        set_initializer(model, conv.inputs[1], (weight * np.repeat(s, per_channel).reshape(
            -1, *([1] * (weight.ndim - 1)))).astype(np.float32))


def _scale_producer(model: ir.Model, candidate: Candidate, s: np.ndarray, rank: int, stats: dict) -> None:
    if candidate.kind == "constant":
        final = candidate.final
        c = _scalar_input(final)
        values = c * s if final.op_type == "Div" else c / s
        name = f"{candidate.tensor.name}_channel_{'divisor' if final.op_type == 'Div' else 'factor'}"
        final.replace_input_with(1, add_initializer(model, name, _per_channel(values, rank)))
        return
    layer = candidate.layer
    weight = layer.inputs[1].const_value.numpy()
    set_initializer(model, layer.inputs[1], scale_output_channels(layer, weight, 1.0 / s).astype(np.float32))
    if len(layer.inputs) > 2 and layer.inputs[2] is not None:
        set_bias(model, layer, bias_array(layer, output_channels(layer, weight)) / s)
    key = layer.outputs[0].name
    if key in stats:  # folded BN's gamma/beta follow the channel (bias correction reads them)
        stats[key] = {k: list(np.asarray(v) / s) for k, v in stats[key].items()}
    act = candidate.activation
    if act is not None and act.op_type == "Clip":
        bound_relu6(model, act, 6.0 / s, rank)


def equalize_depthwise_inputs(model: ir.Model, data: Callable[[], Iterable[dict[str, np.ndarray]]], *,
                              floor: float = DEFAULT_FLOOR, total: int | None = None,
                              progress: Progress = no_progress) -> EqualizeResult:
    """Rescale, in place, the channels of every tensor read only by depthwise Convs (module docstring)."""
    result = EqualizeResult(model)
    candidates = find_candidates(model)
    if not candidates:
        return result
    taps = [ChannelTap(c.tensor.name, 1, c.rank) for c in candidates]
    measured = channel_statistics(model, taps, data(), total=total, progress=progress)
    stats = json.loads(model.metadata_props.get(BN_STATS_KEY, "{}"))
    for candidate in candidates:
        channels = measured.get(candidate.tensor.name)
        if channels is None:
            continue
        s = channel_scales(channels, floor)
        if np.all(s == 1.0):
            continue
        _scale_readers(model, candidate, s)
        _scale_producer(model, candidate, s, candidate.rank, stats)
        result.relu6_replaced += candidate.activation is not None and candidate.activation.op_type == "Clip"
        result.depthwise.append(candidate.tensor.name)
        result.widened_bits = max(result.widened_bits, float(np.log2(1.0 / s.min())))
    if stats:
        model.metadata_props[BN_STATS_KEY] = strict_json.dumps(stats, indent=None)
    return result


def equalize_for_per_channel(model: ir.Model, data: Callable[[], Iterable[dict[str, np.ndarray]]], *,
                             floor: float = DEFAULT_FLOOR, total: int | None = None,
                             progress: Progress = no_progress) -> EqualizeResult:
    """`qtool equalize --per-channel`: fold BatchNorms, then equalize depthwise-conv inputs; a new model."""
    folded = fold_batch_norms(model)
    result = equalize_depthwise_inputs(folded.model, data, floor=floor, total=total, progress=progress)
    result.folded = len(folded.folded)
    return result
