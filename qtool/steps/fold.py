"""FoldBatchNorm: fold BatchNormalization (and per-channel Mul/Add) into adjacent linear layers.

With k = gamma / sqrt(var + eps) and c = beta - mean * k, BN(y) = k * y + c per channel, so

* BN after a layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight):
      W' = W * k   (along the layer's output-channel axis)      b' = b * k + c
* BN before a layer (Gemm, or a Conv with zero padding and one group; padding would pad with
  0 where the unfolded model pads with the BN's output for 0, so it is not exact then):
      W' = W * k   (along the input-channel axis)               b' = b + W . c
* a Mul by a per-channel constant after a layer: like BN with k = the constant, c = 0;
  an Add of a per-channel constant: b' = b + the constant.

A BN is folded only where that is exact: constant weights used by this layer alone, a layer
output consumed by the BN alone and not a graph output, the channel axis of BN matching the
layer's output-channel axis. Every BN left in place is reported with the reason.

The folded BN's gamma and beta (the distribution of the layer's pre-activation output) are kept
in the model's metadata (`qtool.bn_stats`, keyed by the layer's output tensor) because
high-bias absorption and analytic bias correction need them after folding (white paper 4.3, 4.5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnx_ir.passes.common import RemoveUnusedNodesPass

from qtool.files import strict_json
from qtool.ir.graph import clone, constant_array, hand_over, set_initializer
from qtool.ir.layers import (  # noqa: F401  (output_channels/scale_output_channels re-exported)
    LINEAR_OPS,
    attr_float,
    attr_int,
    output_channels,
    scale_output_channels,
    set_bias,
)

BN_STATS_KEY = "qtool.bn_stats"


@dataclass
class FoldResult:
    model: ir.Model
    folded: list[str] = field(default_factory=list)  # "BN name -> layer name"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)

    @property
    def modified(self) -> bool:
        return bool(self.folded)


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _layer_check(layer: ir.Node) -> str | None:
    """Why the layer's weight cannot be rewritten in place (None when it can)."""
    weight = layer.inputs[1] if len(layer.inputs) > 1 else None
    if weight is None or weight.const_value is None:
        return "the layer's weight is not a constant"
    if len(weight.uses()) != 1 or weight.is_graph_output() or weight.is_graph_input():
        return "the layer's weight is shared with other nodes"
    if layer.op_type == "MatMul" and len(weight.const_value.shape) != 2:
        return "the MatMul weight is not 2-D"
    if len(layer.inputs) > 2 and layer.inputs[2] is not None:
        bias = layer.inputs[2]
        if bias.const_value is None:
            return "the layer's bias is not a constant"
        if len(bias.uses()) != 1:
            return "the layer's bias is shared with other nodes"
    return None


def _channel_axis_ok(layer: ir.Node, out: ir.Value) -> bool:
    """BN normalises axis 1; Gemm/MatMul outputs must be 2-D for that to be their channel axis."""
    if layer.op_type in ("Conv", "ConvTranspose"):
        return True
    if layer.op_type == "Gemm":
        return True
    return out.shape is not None and len(out.shape) == 2


def _bn_affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """(k, c, gamma, beta) of an inference-mode BN, or the reason it is not foldable."""
    if len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:]):
        return "BN is in training mode (running statistics are used)"
    arrays = [constant_array(v) for v in bn.inputs[1:5]]
    if any(a is None for a in arrays):
        return "BN parameters are not constants"
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
    k = gamma / np.sqrt(var + attr_float(bn, "epsilon", 1e-5))
    return k, beta - mean * k, gamma, beta


def _take_over_name(model: ir.Model, removed: ir.Node, survivor: ir.Value) -> None:
    """Remove `removed`, moving its output's consumers and name onto `survivor`."""
    hand_over(removed.outputs[0], survivor)
    model.graph.remove(removed, safe=True)


def _fold_after(model: ir.Model, layer: ir.Node, follower: ir.Node, k: np.ndarray, c: np.ndarray) -> None:
    weight_value = layer.inputs[1]
    weight = weight_value.const_value.numpy().astype(np.float64)
    set_initializer(model, weight_value, scale_output_channels(layer, weight, k).astype(np.float32))
    channels = output_channels(layer, weight)
    if layer.op_type == "Gemm":
        beta_attr = attr_float(layer, "beta", 1.0)
        old = constant_array(layer.inputs[2]) if len(layer.inputs) > 2 and layer.inputs[2] is not None else None
        old = np.zeros(channels) if old is None else np.broadcast_to(old.astype(np.float64) * beta_attr, (channels,))
        layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        set_bias(model, layer, old * k + c)
    elif layer.op_type == "MatMul":  # its only consumer is the follower: no bias Add yet
        set_bias(model, layer, c)  # inserts MatMul -> Add(c), which the follower now reads
        _take_over_name(model, follower, follower.inputs[0])
        return
    else:
        old = constant_array(layer.inputs[2]) if len(layer.inputs) > 2 and layer.inputs[2] is not None else None
        old = np.zeros(channels) if old is None else old.astype(np.float64)
        set_bias(model, layer, old * k + c)
    _take_over_name(model, follower, layer.outputs[0])


def _per_channel_constant(node: ir.Node, channels: int, layer: ir.Node) -> np.ndarray | None:
    """The per-output-channel vector of a Mul/Add constant that broadcasts along axis 1 of the
    layer's output (shape (C,1,1), (1,C,1,1), (1,C), a scalar...), or None."""
    if len(node.inputs) != 2:
        return None
    const = next((constant_array(v) for v in node.inputs if v is not None and v.const_value is not None), None)
    if const is None:
        return None
    if const.size == 1:
        return np.full(channels, float(const.reshape(())))
    rank = len(layer.inputs[1].const_value.shape) if layer.op_type in ("Conv", "ConvTranspose") else 2
    if const.ndim > rank:
        return None
    shape = (1,) * (rank - const.ndim) + tuple(const.shape)
    wanted = tuple(channels if axis == 1 else 1 for axis in range(rank))
    return const.reshape(-1).astype(np.float64) if shape == wanted else None


def foldable_batch_norms(model: ir.Model) -> int:
    """BatchNormalization nodes right after a Conv / ConvTranspose / Gemm / MatMul: what `fold`
    would most likely remove. Quantizing with them in place puts a quantizer on the layer's
    output before the BN (PP-OCRv4 min-max per-channel: 90.1% unfolded, 97.9% folded)."""
    layers = ("Conv", "ConvTranspose", "Gemm", "MatMul")
    return sum(1 for node in model.graph if node.op_type == "BatchNormalization" and node.inputs[0] is not None
               and node.inputs[0].producer() is not None and node.inputs[0].producer().op_type in layers)


def fold_batch_norms(model: ir.Model) -> FoldResult:
    """Fold every BN (and per-channel Mul/Add) that can be folded exactly; returns a new model."""
    model = clone(model)
    result = FoldResult(model)
    stats = json.loads(model.metadata_props.get(BN_STATS_KEY, "{}"))
    pending = [n for n in model.graph if n.op_type == "BatchNormalization"]
    while True:  # to a fixed point: folding a bias Add (ConvTranspose -> Add -> BN) frees the BN after it
        folded_before, left = len(result.folded), []
        for bn in pending:
            reason = _fold_one(model, bn, stats)
            if reason is None:
                result.folded.append(bn.name or bn.outputs[0].name)
            else:
                left.append((bn, reason))
        for node in [n for n in model.graph if n.op_type in ("Mul", "Add")]:
            _fold_scale_shift(model, node, result)
        pending = [bn for bn, _ in left]
        if not pending or len(result.folded) == folded_before:
            break
    result.skipped = [(bn.name or bn.outputs[0].name, reason) for bn, reason in left]
    if stats:
        model.metadata_props[BN_STATS_KEY] = strict_json.dumps(stats, indent=None)
    RemoveUnusedNodesPass()(model)  # the folded BN parameters
    return result


def _fold_one(model: ir.Model, bn: ir.Node, stats: dict) -> str | None:
    affine = _bn_affine(bn)
    if isinstance(affine, str):
        return affine
    k, c, gamma, beta = affine
    source = bn.inputs[0].producer()
    if source is not None and source.op_type in LINEAR_OPS and _single_use(bn.inputs[0]):
        reason = _layer_check(source) or (None if _channel_axis_ok(source, source.outputs[0])
                                           else "the layer output is not 2-D, BN's channel axis differs")
        if reason is None and output_channels(source, source.inputs[1].const_value.numpy()) != k.size:
            reason = "BN and layer channel counts differ"
        if reason is None:
            name = bn.outputs[0].name
            _fold_after(model, source, bn, k, c)
            stats[name] = {"gamma": [float(v) for v in gamma], "beta": [float(v) for v in beta]}
            return None
        return reason
    consumers = bn.outputs[0].consumers()
    if len(consumers) == 1 and not bn.outputs[0].is_graph_output():
        return _fold_before(model, bn, consumers[0], k, c)
    return "BN neither follows a foldable layer alone nor feeds one"


def _fold_before(model: ir.Model, bn: ir.Node, layer: ir.Node, k: np.ndarray, c: np.ndarray) -> str | None:
    """BN -> Conv (no padding, one group) or Gemm (transA=0): fold into the following layer."""
    if layer.op_type not in ("Conv", "Gemm") or layer.inputs[0] is not bn.outputs[0]:
        return "BN feeds a layer it cannot be folded into"
    reason = _layer_check(layer)
    if reason:
        return reason
    weight_value = layer.inputs[1]
    weight = weight_value.const_value.numpy().astype(np.float64)
    if layer.op_type == "Conv":
        pads = layer.attributes.get("pads")
        auto_pad = layer.attributes.get("auto_pad")
        if attr_int(layer, "group", 1) != 1:
            return "the following Conv has groups"
        if (pads is not None and any(pads.as_ints())) or (auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID")):
            return "the following Conv pads its input (folding would not be exact)"
        if weight.shape[1] != k.size:
            return "BN and Conv channel counts differ"
        new_weight = weight * k.reshape(1, -1, *([1] * (weight.ndim - 2)))
        shift = (weight * c.reshape(1, -1, *([1] * (weight.ndim - 2)))).sum(axis=tuple(range(1, weight.ndim)))
    else:
        if attr_int(layer, "transA", 0):
            return "the following Gemm transposes its input"
        trans_b = attr_int(layer, "transB", 0)
        w_kn = weight.T if trans_b else weight  # (K, N)
        if w_kn.shape[0] != k.size:
            return "BN and Gemm channel counts differ"
        new_weight = (w_kn * k[:, None]).T if trans_b else w_kn * k[:, None]
        shift = attr_float(layer, "alpha", 1.0) * (c @ w_kn)
        beta_attr = attr_float(layer, "beta", 1.0)
        if len(layer.inputs) > 2 and layer.inputs[2] is not None:
            old = np.broadcast_to(constant_array(layer.inputs[2]).astype(np.float64) * beta_attr, shift.shape)
            shift = shift + old
            layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        set_initializer(model, weight_value, new_weight.astype(np.float32))
        set_bias(model, layer, shift)
        _bypass(model, bn)
        return None
    set_initializer(model, weight_value, new_weight.astype(np.float32))
    old = constant_array(layer.inputs[2]) if len(layer.inputs) > 2 and layer.inputs[2] is not None else None
    set_bias(model, layer, shift if old is None else old.astype(np.float64) + shift)
    _bypass(model, bn)
    return None


def _bypass(model: ir.Model, node: ir.Node) -> None:
    """Remove a node whose input can stand in for its output (BN folded into its consumer)."""
    node.outputs[0].replace_all_uses_with(node.inputs[0], replace_graph_outputs=False)
    model.graph.remove(node, safe=True)


def _fold_scale_shift(model: ir.Model, node: ir.Node, result: FoldResult) -> None:
    """Mul/Add by a per-channel constant right after a foldable layer."""
    data = next((v for v in node.inputs if v is not None and v.const_value is None), None)
    source = data.producer() if data is not None else None
    if source is None or source.op_type not in LINEAR_OPS or not _single_use(data):
        return
    if _layer_check(source) or not _channel_axis_ok(source, data) or source.op_type == "MatMul":
        return
    channels = output_channels(source, source.inputs[1].const_value.numpy())
    vector = _per_channel_constant(node, channels, source)
    if vector is None:
        return
    if node.op_type == "Mul":
        k, c = vector, np.zeros(channels)
    else:
        k, c = np.ones(channels), vector
    _fold_after(model, source, node, k, c)
    result.folded.append(node.name or node.outputs[0].name)
