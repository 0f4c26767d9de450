"""What each node does in a transformer (or detector), so `analyze` can say more than an op type.

"MatMul_12 (MatMul)" tells a user nothing; "MatMul_12 (MatMul: attention scores Q.K^T)" tells
them that the culprit is one of the tensors the transformer quantization literature singles
out, and which treatment applies (docs/design.md, "Where quantizers go beyond the config's op
types"). Roles are read from the graph alone (no names, no data), so they hold for any
exporter:

* attention scores: a MatMul of two activations whose result reaches a Softmax (through
  scaling, the mask add and movers); attention context: a MatMul of two activations one of
  which comes from a Softmax;
* attention probabilities: a Softmax feeding such a MatMul;
* Q/K/V projection: a weight MatMul/Gemm whose output (after its bias) reaches an attention
  MatMul through movers; attention output projection: one that reads the attention context
  through movers; FFN up-projection: one whose output goes into a GELU/SiLU; FFN
  down-projection: one whose input comes out of one;
* residual sum into LayerNorm / its linear branch (plan_patterns.layer_norm_inputs), LayerNorm
  (fused or written out), GELU/SiLU (plan_patterns.pointwise_internals and its result), the
  attention-mask path (plan_patterns.attention_mask_tensors), embedding tables (a Gather of a
  constant table), mixed-range joins when the plan recorded them.
"""

from __future__ import annotations

import onnx_ir as ir

from qtool.ir.graph import node_label
from qtool.ir.hard_swish import hard_swishes
from qtool.ir.patterns import (MOVERS, attention_mask_tensors, decomposed_layer_norm_internals,
                                 layer_norm_inputs, pointwise_internals)

_SCALES = MOVERS | {"Div", "Mul", "Add", "Sub", "Where"}  # between Q.K^T and its Softmax
_NORMS = {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization"}
_FUSED_FUNCTIONS = {"Gelu": "GELU", "FastGelu": "GELU", "BiasGelu": "GELU", "QuickGelu": "GELU",
                    "HardSwish": "hard-swish", "Mish": "Mish"}


def _reaches(value: ir.Value, targets: set[str], through: set[str], depth: int = 6) -> bool:
    """Whether a consumer of `value` is one of `targets`, directly or through `through` ops."""
    for consumer in value.consumers():
        if consumer.op_type in targets:
            return True
        if depth and consumer.op_type in through and any(_reaches(v, targets, through, depth - 1)
                                                         for v in consumer.outputs):
            return True
    return False


def _comes_from(value: ir.Value | None, op_types: set[str], depth: int = 4) -> ir.Node | None:
    """The nearest producer of one of `op_types` behind `value`, seen through movers."""
    producer = value.producer() if value is not None else None
    if producer is None:
        return None
    if producer.op_type in op_types:
        return producer
    if depth and producer.op_type in MOVERS:
        return _comes_from(producer.inputs[0] if producer.inputs else None, op_types, depth - 1)
    return None


def _is_activation_matmul(node: ir.Node) -> bool:
    return node.op_type == "MatMul" and all(v is not None and v.const_value is None for v in node.inputs)


def _functions(model: ir.Model, norm_inner: set[str]) -> dict[str, tuple[str, str]]:
    """Result tensors of pointwise functions -> (kind, the tensor it is a function of): kinds
    'GELU' (an Erf or Tanh inside), 'SiLU' (a Sigmoid inside), or the fused op's name."""
    inner = pointwise_internals(model) - norm_inner
    results: dict[str, tuple[str, str]] = {}
    for node in model.graph:
        parts = [v for v in node.inputs if v is not None and v.name in inner]
        if not node.outputs or node.outputs[0].name in inner or not parts:
            continue
        ops: set[str] = set()
        sources: set[str] = set()
        stack = [v.producer() for v in parts]
        seen: set[int] = set()
        while stack:
            producer = stack.pop()
            if producer is None or id(producer) in seen:
                continue
            seen.add(id(producer))
            ops.add(producer.op_type)
            for v in producer.inputs:
                if v is not None and v.name in inner:
                    stack.append(v.producer())
                elif v is not None and v.const_value is None:
                    sources.add(v.name)
        if len(sources) == 1 and ops & {"Erf", "Tanh", "Sigmoid"}:
            kind = "GELU" if ops & {"Erf", "Tanh"} else "SiLU"
            results[node.outputs[0].name] = (kind, sources.pop())
    for node in model.graph:
        data = node.inputs[0] if node.inputs else None
        if node.op_type in _FUSED_FUNCTIONS and node.outputs and data is not None:
            results[node.outputs[0].name] = (_FUSED_FUNCTIONS[node.op_type], data.name)
        elif node.op_type == "Mul" and len(node.inputs) == 2 and node.outputs and data is not None:
            sig = _comes_from(node.inputs[1], {"Sigmoid"}, 0)
            if sig is not None and sig.inputs and sig.inputs[0] is data:
                results[node.outputs[0].name] = ("SiLU", data.name)  # x * sigmoid(x), one node each
    for match in hard_swishes(model):  # written out (x * Clip(x + 3, 0, 6) / 6, ...): qtool.ir.hard_swish
        results[match.result.name] = ("hard-swish", match.source.name)
    return results


def _linear_role(node: ir.Node, functions: dict[str, tuple[str, str]], attention_inputs: set[str],
                 contexts: set[int]) -> str | None:
    out = node.outputs[0]
    consumers = out.consumers()
    after_bias = consumers[0].outputs[0] if len(consumers) == 1 and consumers[0].op_type == "Add" and any(
        v is not None and v.const_value is not None for v in consumers[0].inputs) else out
    function_inputs = {source for _, source in functions.values()}
    ahead = list({id(v): v for v in (out, after_bias)}.values())
    for _ in range(4):  # through movers to the attention MatMul or the function
        if any(v.name in attention_inputs for v in ahead):
            return "Q/K/V projection"
        if any(v.name in function_inputs for v in ahead):
            return "FFN up-projection"
        ahead = [o for v in ahead for c in v.consumers() if c.op_type in MOVERS for o in c.outputs]
    data = next((v for v in node.inputs if v is not None and v.const_value is None), None)
    if data is not None and data.name in functions:
        return "FFN down-projection"
    if id(_comes_from(data, {"MatMul"})) in contexts:
        return "attention output projection"
    return None


def node_roles(model: ir.Model) -> dict[str, str]:
    """Node label (graph.node_label) -> its role; nodes without a special role are left out."""
    roles: dict[str, str] = {}
    norm_inner = decomposed_layer_norm_internals(model)
    functions = _functions(model, norm_inner)
    mask = attention_mask_tensors(model)
    residual = layer_norm_inputs(model)
    attention_inputs: set[str] = set()
    contexts: set[int] = set()  # the P.V MatMuls (by id: nodes are not hashable by name alone)
    for node in model.graph:
        if not _is_activation_matmul(node) or not node.outputs:
            continue
        if _reaches(node.outputs[0], {"Softmax"}, _SCALES):
            roles[node_label(node)] = "attention scores Q.K^T"
        elif any(_comes_from(v, {"Softmax"}) is not None for v in node.inputs):
            roles[node_label(node)] = "attention context P.V"
            contexts.add(id(node))
        else:
            continue
        attention_inputs.update(v.name for v in node.inputs if v is not None)
    for node in model.graph:
        label, outs = node_label(node), [v.name for v in node.outputs]
        if label in roles or not outs:
            continue
        if node.op_type == "Softmax" and _reaches(node.outputs[0], {"MatMul"}, MOVERS):
            roles[label] = "attention probabilities"
        elif any(name in mask for name in outs):
            roles[label] = "attention mask"
        elif node.op_type in _NORMS or any(name in norm_inner for name in outs) or any(
                v is not None and v.name in norm_inner for v in node.inputs):
            roles[label] = "LayerNorm"
        elif outs[0] in residual:
            summed = node.op_type == "Add" and all(v is not None and v.const_value is None for v in node.inputs)
            roles[label] = "residual sum into LayerNorm" if summed else "linear branch into LayerNorm"
        elif outs[0] in functions:
            roles[label] = functions[outs[0]][0]
        elif node.op_type == "Gather" and node.inputs and node.inputs[0] is not None \
                and node.inputs[0].const_value is not None and len(node.inputs[0].shape or ()) == 2:
            roles[label] = "embedding table"
        elif node.op_type in ("MatMul", "Gemm") and not _is_activation_matmul(node):
            role = _linear_role(node, functions, attention_inputs, contexts)
            if role:
                roles[label] = role
    return roles
