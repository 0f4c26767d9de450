"""Quantizer groups (a layer's output and its parameters) and the 'fix' encoding of each quantizer.

Sensitivity and mixed precision reason about layers, as AIMET's quant analyzer does per
quantized module: a node's output quantizers and the parameters it consumes form one group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from qtool.analysis.roles import node_roles
from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.graph import node_label, value_by_name
from qtool.plan.build import param_axis
from qtool.quant import Encoding, QuantSpec
from qtool.quant.encoding import compute_encoding, encode_tensor

FIX_BITS = 16


@dataclass
class Group:
    name: str  # the node's name (or label)
    op_type: str
    activations: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    members: list[Group] = field(default_factory=list)  # a block's node groups
    role: str | None = None  # what the node does in a transformer/detector (roles.py)

    @property
    def quantizers(self) -> list[str]:
        return self.activations + self.params


def quantizer_groups(model: ir.Model, encodings: EncodingSet) -> list[Group]:
    """Groups in model order: model inputs first (one group each), then one per node."""
    groups: list[Group] = []
    seen: set[str] = set()
    roles = node_roles(model)
    for value in model.graph.inputs:
        if value.name in encodings.activations:
            groups.append(Group(f"input {value.name}", "Input", [value.name]))
            seen.add(value.name)
    for node in model.graph:
        group = Group(node_label(node), node.op_type, role=roles.get(node_label(node)))
        for value in node.outputs:
            if value.name in encodings.activations and value.name not in seen:
                group.activations.append(value.name)
                seen.add(value.name)
        for value in node.inputs:
            if value is not None and value.name in encodings.params and value.name not in seen:
                group.params.append(value.name)
                seen.add(value.name)
        if group.quantizers:
            groups.append(group)
    return groups


LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU", "RNN"}


def blocks(model: ir.Model, groups: list[Group]) -> list[tuple[Group, list[Group]]]:
    """Coarse groups for a first sensitivity pass: each layer (Conv, Gemm, MatMul...) with the
    non-layer ops after it up to the next layer (its activation, residual add, hard-swish...).
    Returns (the block as one group, its node groups). Sensitivity over a few dozen blocks, then
    over the nodes of the worst blocks, costs a fraction of a pass over every node."""
    by_node = {g.name: g for g in groups}
    result: list[tuple[Group, list[Group]]] = []
    members: list[Group] = [g for g in groups if g.op_type == "Input"]
    head: Group | None = None

    def close() -> None:
        if members:
            first = head or members[0]
            extra = len(members) - 1
            block = Group(f"{first.name} (+{extra} ops)" if extra else first.name, first.op_type,
                          [a for m in members for a in m.activations], [p for m in members for p in m.params],
                          list(members), first.role)
            result.append((block, list(members)))

    started = False  # ops before the first layer join its block
    for node in model.graph:
        group = by_node.get(node_label(node))
        if node.op_type in LAYER_OPS:
            if started:
                close()
                members = []
            started, head = True, group
        if group is not None:
            members.append(group)
    close()
    return result


def fix_encoding(model: ir.Model, name: str, enc: Encoding) -> tuple[Encoding, str] | None:
    """The cheapest encoding that removes most of a quantizer's error, and how to say it as an
    override: per-channel for per-tensor weights, 16 bits otherwise (over the same range for
    activations). None when the quantizer is already 16-bit or float (only exclusion is left)."""
    if enc.is_float or enc.bw >= FIX_BITS:
        return None
    value = value_by_name(model).get(name)
    if value is not None and value.const_value is not None:
        weights = value.const_value.numpy()
        axis = param_axis(value, default=None)
        if not enc.per_channel and axis is not None and weights.ndim >= 2:
            spec = QuantSpec(bw=enc.bw, symmetric=enc.symmetric, axis=axis)
            return encode_tensor(weights, spec), "per_channel"
        spec = QuantSpec(bw=FIX_BITS, symmetric=enc.symmetric, axis=enc.axis)
        return encode_tensor(weights, spec), "bitwidth"
    spec = QuantSpec(bw=FIX_BITS, symmetric=enc.symmetric)
    return compute_encoding(enc.min.min(), enc.max.max(), spec), "bitwidth"


def override_for(name: str, kind: str, how: str, reason: str) -> dict:
    """The runtime-config override (docs/config.md) that applies a fix to one quantizer."""
    entry: dict = {"tensors": name}
    if how == "exclude":
        entry["exclude"] = True
    elif how == "per_channel":
        entry["per_channel"] = True
    else:
        entry["bitwidth"] = FIX_BITS
    entry["comment"] = reason
    return entry
