"""The graph as aimet-onnx's ConnectedGraph sees it, for placement "aimet" (plan/aimet_plan.py).

aimet places quantizers on a ConnectedGraph built from the model *after* its fusion passes
(``QuantSimConfigurator.apply_fusions``: MatMul+Add -> one Gemm, a written-out LayerNorm -> one
LayerNormalization). qtool does not rewrite the model: this view holds ops that are either one
ONNX node or a fused group of nodes (``fused_from``), keyed by tensor names, so the placement
modules can follow aimet's code step by step without touching the model or the encodings' names.

Mirrors ``ConnectedGraph.fill_op_product_graph`` (meta/connectedgraph.py): one op per node
(Constant nodes are none: qtool lifts them to initializers when it loads a model), a product per
tensor whose ``consumers`` list has one entry per input slot that reads it (``Mul(x, x)`` reads
x twice), ``output_ops`` the consumers of all outputs in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import is_float

FUSED_DOMAIN = "aimet.supergroup"  # aimet's domain for fused supergroup functions (fusion_registry.py)


@dataclass(eq=False)
class Op:
    """One op of the view: an ONNX node, or a fused group of nodes (aimet's supergroup function)."""

    name: str
    type: str
    inputs: list[str]  # "" for an omitted optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)  # group, transB, perm, axes ... as Python values
    domain: str = ""
    fused_from: tuple[str, ...] = ()  # names of the nodes a fusion replaced

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


def _attr_value(attr: ir.Attr) -> Any:
    value = attr.value
    if isinstance(value, (list, tuple)):
        return list(value)
    return value if isinstance(value, (int, float, str)) else None


class Graph:
    """Ops in graph order, tensors by name; `constants` are initializers (lifted Constants included)."""

    def __init__(self, model: ir.Model) -> None:
        self.constants: dict[str, np.ndarray] = {
            name: value.const_value.numpy() for name, value in model.graph.initializers.items()
            if value.const_value is not None}
        self.float_tensors: set[str] = {name for name, value in model.graph.initializers.items() if is_float(value)}
        self.inputs = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
        self.float_tensors.update(v.name for v in model.graph.inputs if is_float(v))
        self.outputs = [v.name for v in model.graph.outputs]
        self.ops: list[Op] = []
        for index, node in enumerate(model.graph):
            attrs = {name: _attr_value(attr) for name, attr in node.attributes.items()}
            self.ops.append(Op(node.name or f"{node.op_type}_{index}", node.op_type,
                               [v.name if v is not None else "" for v in node.inputs],
                               [v.name for v in node.outputs], attrs, node.domain))
            self.float_tensors.update(v.name for v in node.outputs if is_float(v))
        self.reindex()

    def reindex(self) -> None:
        """Producer and consumer maps, after the ops changed (a fusion)."""
        self.producer: dict[str, Op] = {name: op for op in self.ops for name in op.outputs}
        self.consumers: dict[str, list[Op]] = {}
        for op in self.ops:
            for name in op.inputs:
                if name:
                    self.consumers.setdefault(name, []).append(op)

    def output_ops(self, op: Op) -> list[Op]:
        """aimet's ``Op.output_ops``: the consumers of every output, one entry per input slot."""
        return [consumer for name in op.outputs for consumer in self.consumers.get(name, [])]

    def only_consumer(self, op: Op) -> Op | None:
        found = self.output_ops(op)
        return found[0] if len(found) == 1 else None

    def static(self, name: str) -> str | None:
        """aimet's ``get_constant_value`` (ir_utils.py): the constant behind `name`, through Identity ops."""
        while name in self.producer and self.producer[name].type == "Identity":
            name = self.producer[name].inputs[0]
        return name if name in self.constants else None

    def scalar(self, name: str) -> float | None:
        array = self.constants.get(name)
        return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None

    def weight(self, op: Op) -> tuple[str | None, bool]:
        """aimet's ``get_weight_value`` (ir_utils.py): input 1 when constant, or the constant before a
        Transpose into a MatMul/Gemm (transposed); and whether the stored weight is [out, in]."""
        if len(op.inputs) <= 1 or not op.inputs[1]:
            return None, False
        weight = op.inputs[1]
        if weight in self.constants:
            return weight, op.type == "Gemm" and bool(op.attr("transB", 0))
        producer = self.producer.get(weight)
        if op.type in ("MatMul", "Gemm") and producer is not None and producer.type == "Transpose":
            for name in producer.inputs:
                if name in self.constants:
                    return name, True
        return None, False

    def replace(self, old: list[Op], new: Op) -> None:
        """Put `new` where the first of `old` was and drop the others (a fusion)."""
        position = min(self.ops.index(op) for op in old)
        self.ops = [op for op in self.ops if op not in old]
        self.ops.insert(position, new)
        self.reindex()
