"""aimet-onnx's graph passes of ``supergroup_pass_list``, on what its fusions left (placement "aimet").

Mirrors ``apply_graph_passes`` / ``find_all_matches`` (graph_passes/pass_registry.py) and the
passes in graph_passes/passes/: they run after the config and only switch quantizers off (and
make a MatMul's bias a parameter); the ops they match are also kept out of ``supergroups``.

* ``MatmulAdd`` (matmul_add.py, ``_get_matmul_add_bias_idx`` in meta/connectedgraph.py): a MatMul
  with a constant weight whose only consumer is an Add of a 1-D constant: no quantizer on the
  MatMul output; the constant becomes the Add's ``bias`` parameter, disabled, symmetric, with the
  weight's granularity.
* ``LayerNormalization`` (layernorm.py): ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div [, Mul
  [, Add]] written out: only the last op's output is quantized; the constants inside (eps, the
  exponent, beta) are not; gamma (the Mul's constant) is, symmetric when 16-bit.
* ``RMSNormalization`` (rmsnorm.py, common_patterns.py): Pow(x, 2) or x*x, ReduceMean, Add, then
  Sqrt and a division (or Pow -0.5 and Mul) [, Cast...] [, Mul]: the same, gamma kept.
* ``MaskedSoftmax`` has no pass (aimet only fuses it): nothing here.
"""

from __future__ import annotations

from qtool.plan.aimet_graph import Graph, Op
from qtool.plan.aimet_tensors import Quantizer, op_params


def _matmul_add(graph: Graph, op: Op) -> tuple[list[Op], str] | None:
    """(the MatMul and its Add, the bias tensor) when the pattern holds."""
    if op.type != "MatMul" or not op_params(graph, op):
        return None
    consumers = graph.output_ops(op)
    if len(consumers) != 1 or consumers[0].type != "Add":
        return None
    add = consumers[0]
    for mine, other in ((0, 1), (1, 0)):
        if len(add.inputs) == 2 and add.inputs[mine] in op.outputs:
            if len(graph.consumers.get(add.inputs[mine], [])) > 1:
                return None
            bias = graph.constants.get(add.inputs[other])
            if bias is not None and bias.ndim == 1:
                return [op, add], add.inputs[other]
    return None


def _chain(graph: Graph, op: Op | None, types: list[str], last_single: bool = True) -> list[Op] | None:
    """``check_consecutive_ops``: ops of `types` one after another, each but the last read by one op."""
    found = []
    for index, op_type in enumerate(types):
        if op is None or op.type != op_type:
            return None
        found.append(op)
        consumers = graph.output_ops(op)
        if index < len(types) - 1:
            if len(consumers) != 1:
                return None
            op = consumers[0]
        elif last_single and len(consumers) > 1:
            return None
    return found


def _consumer_of_type(graph: Graph, op: Op, op_type: str) -> Op | None:
    return next((c for c in graph.output_ops(op) if c.type == op_type), None)


def _layer_norm(graph: Graph, op: Op) -> tuple[list[Op], list[Op], list[Op], str | None] | None:
    """(matched ops, ops whose outputs go off, ops whose constants go off, gamma) for the LN pass."""
    consumers = graph.output_ops(op)
    if op.type != "ReduceMean" or len(consumers) != 1:
        return None
    sub = consumers[0]
    if sub.type != "Sub" or len(graph.output_ops(sub)) != 2 or sub.inputs[0] != op.inputs[0]:
        return None
    power, div = _consumer_of_type(graph, sub, "Pow"), _consumer_of_type(graph, sub, "Div")
    denominator = _chain(graph, power, ["Pow", "ReduceMean", "Add", "Sqrt"]) if div is not None else None
    if denominator is None or graph.producer.get(div.inputs[0]) is not sub \
            or graph.producer.get(div.inputs[1]) is not denominator[-1]:
        return None
    ops = [op, sub, *denominator, div]
    off, consts = ops[:-1], list(ops)
    scale = _chain(graph, div, ["Div", "Mul"])
    if scale is None:
        return ops, off, consts, None
    mul = scale[1]
    gamma = mul.inputs[1] if graph.producer.get(mul.inputs[0]) is div else mul.inputs[0]
    ops.append(mul)
    off.append(div)
    bias = _chain(graph, mul, ["Mul", "Add"], last_single=False)
    if bias is not None:
        ops.append(bias[1])
        off.append(mul)
        consts.append(bias[1])
    return ops, off, consts, gamma


def _is_square(graph: Graph, op: Op) -> bool:
    """``match_pow_2_pattern``: Mul(x, x) or Pow(x, 2)."""
    if op.type == "Mul":
        return len(op.inputs) == 2 and op.inputs[0] == op.inputs[1]
    return op.type == "Pow" and graph.scalar(op.inputs[1]) == 2.0 and graph.constants[op.inputs[1]].ndim == 0


def _divide(graph: Graph, numerator: str, denominator: Op) -> list[Op] | None:
    """``match_a_div_b_pattern``: Div(a, b), Mul(a, Div(1, b)) or Mul(a, Reciprocal(b))."""
    readers = graph.consumers.get(denominator.outputs[0], [])
    if len(readers) != 1:
        return None
    op = readers[0]
    if op.type == "Div" and op.inputs == [numerator, denominator.outputs[0]]:
        return [op]
    after = graph.output_ops(op)
    inverse = (op.type == "Div" and graph.scalar(op.inputs[0]) == 1.0 and op.inputs[1] == denominator.outputs[0]) \
        or (op.type == "Reciprocal" and op.inputs[0] == denominator.outputs[0])
    if not inverse or len(after) != 1 or after[0].type != "Mul" or numerator not in after[0].inputs:
        return None
    return [op, after[0]]


def rms_norm_ops(graph: Graph, op: Op) -> list[Op]:
    """``match_rms_norm_pattern`` (common_patterns.py): the ops of an RMS normalisation from `op`."""
    if op.type == "RMSNormalization":
        return [op]
    if not _is_square(graph, op) or len(graph.output_ops(op)) != 1:
        return []
    found = _chain(graph, graph.output_ops(op)[0], ["ReduceMean", "Add"], last_single=False)
    if found is None or len(graph.output_ops(found[-1])) != 1:
        return []
    found = [op, *found]
    after = graph.output_ops(found[-1])[0]
    if after.type == "Sqrt" and len(graph.output_ops(after)) == 1:
        divide = _divide(graph, op.inputs[0], after)
        if divide:
            return found + [after] + divide
    if after.type == "Pow" and graph.scalar(after.inputs[1]) == -0.5 and len(graph.output_ops(after)) == 1:
        mul = graph.output_ops(after)[0]
        if mul.type == "Mul" and op.inputs[0] in mul.inputs:
            return found + [after, mul]
    return []


def _rms_norm(graph: Graph, op: Op) -> tuple[list[Op], list[Op], list[Op], str | None] | None:
    ops = rms_norm_ops(graph, op)
    if not ops:
        return None
    tail, casts = ops[-1], []
    while len(graph.output_ops(tail)) == 1 and graph.output_ops(tail)[0].type == "Cast":
        tail = graph.output_ops(tail)[0]
        casts.append(tail)
    after = graph.output_ops(tail)
    if len(after) == 1 and after[0].type == "Mul":
        ops = ops + casts + [after[0]]
        return ops, ops[:-1], ops[:-1], None
    return ops, ops[:-1], ops, None


def pass_matches(graph: Graph, passes: tuple[str, ...]) -> list[list[Op]]:
    """``find_all_matches``: every op set a pass matches (kept out of ``supergroups``)."""
    found = []
    for name in passes:
        for op in graph.ops:
            match = _match(graph, name, op)
            if match:
                found.append(match[0])
    return found


def _match(graph: Graph, name: str, op: Op) -> tuple[list[Op], ...] | None:
    if name == "MatmulAdd":
        matched = _matmul_add(graph, op)
        return (matched[0],) if matched else None
    if name == "LayerNormalization":
        return _layer_norm(graph, op)
    if name == "RMSNormalization":
        return _rms_norm(graph, op)
    return None


def apply_passes(graph: Graph, quantizers: dict[str, Quantizer], passes: tuple[str, ...]) -> list[str]:
    """Run each pass over every op (``GraphPass.apply_on_graph``); the tensors whose quantizers
    they switched off."""
    off: list[str] = []
    for name in passes:
        gammas: list[str] = []
        for op in graph.ops:
            if name == "MatmulAdd":
                matched = _matmul_add(graph, op)
                if matched:
                    off += _matmul_add_apply(graph, quantizers, op, matched[1])
                continue
            match = _match(graph, name, op)
            if not match:
                continue
            _ops, outputs, consts, gamma = match
            names = [n for o in outputs for n in o.outputs]
            names += [n for o in consts for n in o.inputs if n in graph.constants and quantizers.get(n)
                      and quantizers[n].kind != "param"]
            for tensor in names:
                if tensor in quantizers:
                    quantizers[tensor].enabled = False
                    off.append(tensor)
            gammas += [gamma] if gamma else []
        for gamma in gammas:  # the LayerNorm pass's callback: a 16-bit gamma is symmetric
            if gamma in quantizers and quantizers[gamma].bw == 16:
                quantizers[gamma].symmetric = True
    return off


def _matmul_add_apply(graph: Graph, quantizers: dict[str, Quantizer], matmul: Op, bias: str) -> list[str]:
    weight = quantizers[next(iter(op_params(graph, matmul)))]
    output = quantizers.get(matmul.outputs[0])
    if output is not None:
        output.enabled = False
    quantizer = quantizers.get(bias)
    if quantizer is not None:
        quantizer.kind, quantizer.param_type, quantizer.enabled, quantizer.symmetric = "param", "bias", False, True
        quantizer.channel_axis, quantizer.per_channel = weight.channel_axis, weight.per_channel
    return [matmul.outputs[0]]
