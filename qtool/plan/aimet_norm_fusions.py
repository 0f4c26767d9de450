"""aimet-onnx's LayerNormalization and RMSNormalization fusions, on the graph view (placement "aimet").

Mirrors graph_passes/fusions/rmsnorm.py (``NonAffineRMSNormFusion``, ``RMSNormFusion``),
layernorm.py (``LayerNormNoBiasFusion``, ``LayerNormFusion``) and their patterns (_patterns.py):

* the core, x / sqrt(mean(x^2) + eps): a square (``x * x`` or ``Pow(x, 2)``), a ReduceMean (axes as
  attribute or input, one axis), an Add of a constant eps >= 0, then ``Div(x, Sqrt(.))`` or ``x``
  times ``Reciprocal(Sqrt(.))``, ``Div(1, Sqrt(.))`` or ``Pow(., -0.5)``;
* RMSNormalization: the core alone -> ``RMSNormalization(x)``; times a scale (after an optional Cast,
  allowed only when x itself comes out of a Cast) -> ``RMSNormalization(x, scale)``, scale its
  ``weight`` parameter;
* LayerNormalization: the core on ``Sub(x, ReduceMean(x))`` (that first ReduceMean with a single
  axis as *attribute*: opset 18 exports do not match, aimet_passes.py's pass takes them), times a
  scale -> ``LayerNormalization(x, scale)``, and a following Add -> ``LayerNormalization(x, scale,
  bias)``: ``weight`` and ``bias`` parameters.

Every value inside a match must be read only inside it (onnxscript's rewriter refuses others).
"""

from __future__ import annotations

from qtool.plan.aimet_graph import FUSED_DOMAIN, Graph, Op


def _single(graph: Graph, name: str) -> bool:
    return len(graph.consumers.get(name, [])) == 1 and name not in graph.outputs


def _made_by(graph: Graph, name: str, op_type: str, inner: bool = True) -> Op | None:
    """The producer of `name` when it is an `op_type` and (inner) `name` is read only once."""
    producer = graph.producer.get(name)
    if producer is None or producer.type != op_type or (inner and not _single(graph, name)):
        return None
    return producer


def _axes(graph: Graph, reduce: Op) -> list[int] | None:
    if len(reduce.inputs) > 1 and reduce.inputs[1]:
        array = graph.constants.get(reduce.inputs[1])
        return None if array is None else [int(v) for v in array.reshape(-1)]
    axes = reduce.attr("axes")
    return list(axes) if axes is not None else []


def _square_mean(graph: Graph, name: str) -> tuple[str, list[Op]] | None:
    """(x, [square, ReduceMean, Add]) when `name` is mean(x^2) + eps, eps a constant >= 0."""
    add = _made_by(graph, name, "Add")
    if add is None or len(add.inputs) != 2:
        return None
    for mean_in, eps_in in ((0, 1), (1, 0)):
        eps = graph.scalar(add.inputs[eps_in])
        mean = _made_by(graph, add.inputs[mean_in], "ReduceMean")
        if eps is None or eps < 0 or mean is None or len(_axes(graph, mean) or []) > 1:
            continue
        square = graph.producer.get(mean.inputs[0])
        if square is None or not _single(graph, mean.inputs[0]):
            continue
        if square.type == "Mul" and len(square.inputs) == 2 and square.inputs[0] == square.inputs[1]:
            return square.inputs[0], [square, mean, add]
        if square.type == "Pow" and graph.scalar(square.inputs[1]) == 2.0:
            return square.inputs[0], [square, mean, add]
    return None


def _inverse_sqrt(graph: Graph, name: str) -> tuple[str, list[Op]] | None:
    """(mean + eps, ops) when `name` is 1 / sqrt(mean + eps) in one of aimet's three spellings."""
    producer = graph.producer.get(name)
    if producer is None or not _single(graph, name):
        return None
    if producer.type == "Pow" and graph.scalar(producer.inputs[1]) == -0.5:
        return producer.inputs[0], [producer]
    if producer.type == "Reciprocal" or (producer.type == "Div" and graph.scalar(producer.inputs[0]) == 1.0):
        sqrt = _made_by(graph, producer.inputs[-1], "Sqrt")
        return (sqrt.inputs[0], [sqrt, producer]) if sqrt is not None else None
    return None


def _core(graph: Graph, op: Op) -> tuple[str, list[Op]] | None:
    """(x, the core's ops, last first) when `op` ends x / sqrt(mean(x^2) + eps)."""
    if op.type == "Div" and len(op.inputs) == 2:
        sqrt = _made_by(graph, op.inputs[1], "Sqrt")
        found = _square_mean(graph, sqrt.inputs[0]) if sqrt is not None else None
        if found is not None and found[0] == op.inputs[0]:
            return found[0], [*found[1], sqrt, op]
    if op.type == "Mul" and len(op.inputs) == 2:
        for x_in, inv_in in ((0, 1), (1, 0)):
            inverse = _inverse_sqrt(graph, op.inputs[inv_in])
            found = _square_mean(graph, inverse[0]) if inverse is not None else None
            if found is not None and found[0] == op.inputs[x_in]:
                return found[0], [*found[1], *inverse[1], op]
    return None


def _scaled(graph: Graph, normalized: Op) -> tuple[Op, str, list[Op]] | None:
    """(the Mul by a scale, the scale, an optional Cast between) after a normalisation's output."""
    out = normalized.outputs[0]
    if not _single(graph, out):
        return None
    after, casts = graph.consumers[out][0], []
    if after.type == "Cast" and _single(graph, after.outputs[0]):
        casts, after = [after], graph.consumers[after.outputs[0]][0]
    if after.type != "Mul" or len(after.inputs) != 2:
        return None
    inner = (casts or [normalized])[-1].outputs[0]
    scale = after.inputs[1] if after.inputs[0] == inner else after.inputs[0]
    return after, scale, casts


def _centered(graph: Graph, x: str) -> tuple[str, list[Op]] | None:
    """(the input, [ReduceMean, Sub]) when x = input - ReduceMean(input) with one axis as attribute."""
    sub = graph.producer.get(x)
    if sub is None or sub.type != "Sub" or len(sub.inputs) != 2 or x in graph.outputs:
        return None
    mean = _made_by(graph, sub.inputs[1], "ReduceMean")
    if mean is None or mean.inputs[0] != sub.inputs[0] or len(mean.inputs) > 1 or len(mean.attr("axes") or []) != 1:
        return None
    return sub.inputs[0], [mean, sub]


def _fuse(graph: Graph, ops: list[Op], op_type: str, inputs: list[str], output: str) -> list[str]:
    new = Op(f"{op_type}_fused_{len(graph.ops)}", op_type, inputs, [output], {}, FUSED_DOMAIN,
             tuple(op.name for op in ops))
    graph.replace(ops, new)
    return [name for op in ops for name in op.outputs if name != output]


def fuse_rms_norms(graph: Graph) -> list[str]:
    """``NonAffineRMSNormFusion`` then ``RMSNormFusion``; the tensors fused away."""
    gone: list[str] = []
    for op in [o for o in graph.ops if o.type in ("Div", "Mul")]:
        found = _core(graph, op) if op in graph.ops else None
        if found is not None:
            gone += _fuse(graph, found[1], "RMSNormalization", [found[0]], op.outputs[0])
    for norm in [o for o in graph.ops if o.type == "RMSNormalization" and o.domain == FUSED_DOMAIN]:
        scaled = _scaled(graph, norm) if len(norm.inputs) == 1 else None
        if scaled is None:
            continue
        mul, scale, casts = scaled
        producer = graph.producer.get(norm.inputs[0])
        if casts and (producer is None or producer.type != "Cast"):
            continue  # an internal Cast only after an input Cast (RMSNormFusion.check)
        gone += _fuse(graph, [norm, *casts, mul], "RMSNormalization", [norm.inputs[0], scale], mul.outputs[0])
    return gone


def fuse_layer_norms(graph: Graph) -> list[str]:
    """``LayerNormNoBiasFusion`` then ``LayerNormFusion``; the tensors fused away."""
    gone: list[str] = []
    for op in list(graph.ops):
        if op not in graph.ops:
            continue
        if op.type == "RMSNormalization" and op.domain == FUSED_DOMAIN and len(op.inputs) == 2:
            core, x, scale_ops, scale = [op], op.inputs[0], [], op.inputs[1]
        elif op.type in ("Div", "Mul") and _core(graph, op) is not None:
            x, core = _core(graph, op)
            scaled = _scaled(graph, op)
            if scaled is None:
                continue
            scale_ops, scale = [*scaled[2], scaled[0]], scaled[1]
        else:
            continue
        centered = _centered(graph, x)
        if centered is None or any(reader not in core for reader in graph.consumers.get(x, [])):
            continue  # x - mean is read only inside the normalisation (by the square and the division)
        tail = (scale_ops or core)[-1]
        gone += _fuse(graph, [*centered[1], *core, *scale_ops], "LayerNormalization", [centered[0], scale],
                      tail.outputs[0])
    for norm in [o for o in graph.ops if o.type == "LayerNormalization" and o.domain == FUSED_DOMAIN]:
        out = norm.outputs[0]
        add = graph.consumers[out][0] if _single(graph, out) else None
        if add is not None and add.type == "Add" and len(add.inputs) == 2 and len(norm.inputs) == 2:
            bias = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
            gone += _fuse(graph, [norm, add], "LayerNormalization", [*norm.inputs, bias], add.outputs[0])
    return gone
