"""One QDQ model in which every quantizer can be switched at run time, without a new session.

The debugging flow and mixed precision evaluate the model under hundreds of quantizer settings
(each quantizer alone on, alone off, a layer at 16 bits...). Building a QDQ model and an
onnxruntime session per setting costs more than the evaluation itself, so each quantizer gets
a selector input instead: an int64 scalar choosing between the float tensor (0) and the
quantizer's candidate encodings (1, 2, ...), through nested If nodes:

    y = If(sel == 1, QDQ_1(x), If(sel == 2, QDQ_2(x), Identity(x)))

Only the chosen branch runs (a Where over precomputed candidates cost 5x the float model on
PP-OCRv4, If about 1.5x); selecting 0 everywhere passes the float tensors through unchanged,
which is the FP32 sanity check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.ir.graph import add_initializer, clone, ensure_opset, unique_name, value_by_name
from qtool.ir.qdq import MS_DOMAIN, activation_quantizer, first_consumer, param_quantizer, splice_after
from qtool.quant import Encoding

SELECTOR_PREFIX = "qtool_select_"


@dataclass
class SwitchableModel:
    model: ir.Model
    selectors: dict[str, str]  # quantizer (tensor) name -> its selector input's name
    candidates: dict[str, int]  # quantizer name -> number of candidate encodings
    quantized_values: dict[str, str]  # activation name -> the name of its selected (quantized) value

    def feeds(self, choice: dict[str, int] | None = None, default: int = 0) -> dict[str, np.ndarray]:
        """Selector inputs: `choice[name]` for the named quantizers, `default` for the rest
        (0 float, 1 the first candidate...)."""
        choice = choice or {}
        return {input_name: np.array(min(choice.get(name, default), self.candidates[name]), dtype=np.int64)
                for name, input_name in self.selectors.items()}


def build_switchable(model: ir.Model, candidates: dict[str, list[Encoding]], *,
                     source: str = "encodings") -> SwitchableModel:
    """A copy of `model` with a switchable quantizer on every tensor named in `candidates`."""
    qdq = ensure_opset(clone(model), source=source)
    values = value_by_name(qdq)
    missing = sorted(set(candidates) - set(values))
    if missing:
        raise QtoolError(f"{source}: tensor '{missing[0]}' is not in the model",
                         "were the encodings computed for another model?")
    selectors: dict[str, str] = {}
    quantized_values: dict[str, str] = {}
    for index, name in enumerate(sorted(candidates)):
        value, options = values[name], candidates[name]
        selector = ir.Value(name=unique_name(qdq, f"{SELECTOR_PREFIX}{index}"))
        selector.dtype, selector.shape = ir.DataType.INT64, ir.Shape([])
        if value.const_value is not None:
            if not _switch_param(qdq, value, options, selector):
                continue
        else:
            quantized_values[name] = _switch_activation(qdq, value, options, selector)
        qdq.graph.inputs.append(selector)
        selectors[name] = selector.name
    if MS_DOMAIN in {node.domain for node in qdq.graph}:
        qdq.opset_imports.setdefault(MS_DOMAIN, 1)
    return SwitchableModel(qdq, selectors, {name: len(candidates[name]) for name in selectors}, quantized_values)


def _chain(qdq: ir.Model, base: str, selector: ir.Value, float_value: ir.Value,
           candidates: list[tuple[list[ir.Node], ir.Value]]) -> tuple[list[ir.Node], ir.Value]:
    """If(sel == 1, QDQ_1(x), If(sel == 2, QDQ_2(x), ... x)): only the chosen branch runs, so a
    quantizer switched off costs one If, not a quantizer plus a select."""
    nodes: list[ir.Node] = []
    inner_nodes, inner_out = [_identity(qdq, base, float_value)], None
    inner_out = inner_nodes[0].outputs[0]
    for k in range(len(candidates), 0, -1):
        branch_nodes, q = candidates[k - 1]
        if not branch_nodes:  # a fake-quantized initializer: a subgraph output must be computed in it
            branch_nodes = [_identity(qdq, f"{base}_candidate{k}", q)]
            q = branch_nodes[0].outputs[0]
        k_value = add_initializer(qdq, f"{base}_choice{k}", np.array(k, dtype=np.int64))
        equal = ir.node("Equal", [selector, k_value], outputs=[ir.Value(name=unique_name(qdq, f"{base}_is{k}"))],
                        name=unique_name(qdq, f"{base}_is{k}_node"))
        then_graph = ir.Graph([], [q], nodes=branch_nodes, name=unique_name(qdq, f"{base}_then{k}"))
        else_graph = ir.Graph([], [inner_out], nodes=inner_nodes, name=unique_name(qdq, f"{base}_else{k}"))
        out = ir.Value(name=unique_name(qdq, f"{base}_select{k}"))
        out.dtype, out.shape = float_value.dtype, float_value.shape
        branch = ir.node("If", [equal.outputs[0]], {"then_branch": then_graph, "else_branch": else_graph},
                         outputs=[out], name=unique_name(qdq, f"{base}_select{k}_node"))
        if k == 1:
            nodes = [equal, branch]
        else:
            inner_nodes, inner_out = [equal, branch], out
    return nodes, nodes[-1].outputs[0]


def _identity(qdq: ir.Model, base: str, value: ir.Value) -> ir.Node:
    out = ir.Value(name=unique_name(qdq, f"{base}_float"))
    out.dtype, out.shape = value.dtype, value.shape
    return ir.node("Identity", [value], outputs=[out], name=unique_name(qdq, f"{base}_float_node"))


def _switch_param(qdq: ir.Model, value: ir.Value, options: list[Encoding], selector: ir.Value) -> bool:
    uses = list(value.uses())
    built = [param_quantizer(qdq, value, enc) for enc in options]
    if any(b is None for b in built):
        return False
    chain, out = _chain(qdq, value.name, selector, value, built)
    qdq.graph.insert_before(first_consumer(qdq, value), chain)
    for node, index in uses:
        node.replace_input_with(index, out)
    return True


def _switch_activation(qdq: ir.Model, value: ir.Value, options: list[Encoding], selector: ir.Value) -> str:
    consumers = list(value.consumers())
    chain, out = _chain(qdq, value.name, selector, value, [activation_quantizer(qdq, value, enc) for enc in options])
    splice_after(qdq, value, consumers, chain, out)
    return out.name  # a graph output's quantized value takes the original name
