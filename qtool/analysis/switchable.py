"""One QDQ model in which every quantizer can be switched at run time, without a new session.

The debugging flow and mixed precision evaluate the model under hundreds of quantizer settings
(each quantizer alone on, alone off, a layer at 16 bits...). Building a QDQ model and an
onnxruntime session per setting costs more than the evaluation itself, so each quantizer gets
a selector input instead: an int64 scalar choosing between the float tensor (0) and the
quantizer's candidate encodings (1, 2, ...), through a chain of Where nodes:

    y = Where(sel == 2, QDQ_2(x), Where(sel == 1, QDQ_1(x), x))

Every candidate is computed on every run (a few percent of a convolution's cost); selecting 0
everywhere passes the float tensors through unchanged, which is the FP32 sanity check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.graph import add_initializer, clone, ensure_opset, unique_name, value_by_name
from qtool.qdq import MS_DOMAIN, activation_quantizer, first_consumer, param_quantizer, splice_after
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
           quantized: list[ir.Value]) -> tuple[list[ir.Node], ir.Value]:
    """Where(sel == k, q_k, ...) over the candidates, the float value at the bottom."""
    nodes, current = [], float_value
    for k, q in enumerate(quantized, start=1):
        k_value = add_initializer(qdq, f"{base}_choice{k}", np.array(k, dtype=np.int64))
        equal = ir.node("Equal", [selector, k_value], outputs=[ir.Value(name=unique_name(qdq, f"{base}_is{k}"))],
                        name=unique_name(qdq, f"{base}_is{k}_node"))
        where = ir.node("Where", [equal.outputs[0], q, current],
                        outputs=[ir.Value(name=unique_name(qdq, f"{base}_select{k}"))],
                        name=unique_name(qdq, f"{base}_select{k}_node"))
        where.outputs[0].dtype, where.outputs[0].shape = float_value.dtype, float_value.shape
        nodes += [equal, where]
        current = where.outputs[0]
    return nodes, current


def _switch_param(qdq: ir.Model, value: ir.Value, options: list[Encoding], selector: ir.Value) -> bool:
    uses = list(value.uses())
    built = [param_quantizer(qdq, value, enc) for enc in options]
    if any(b is None for b in built):
        return False
    nodes = [node for b in built for node in b[0]]
    chain, out = _chain(qdq, value.name, selector, value, [b[1] for b in built])
    qdq.graph.insert_before(first_consumer(qdq, value), nodes + chain)
    for node, index in uses:
        node.replace_input_with(index, out)
    return True


def _switch_activation(qdq: ir.Model, value: ir.Value, options: list[Encoding], selector: ir.Value) -> str:
    consumers = list(value.consumers())
    nodes, quantized = [], []
    for enc in options:
        built, out = activation_quantizer(qdq, value, enc)
        nodes += built
        quantized.append(out)
    chain, out = _chain(qdq, value.name, selector, value, quantized)
    splice_after(qdq, value, consumers, nodes + chain, out)
    return out.name  # a graph output's quantized value takes the original name
