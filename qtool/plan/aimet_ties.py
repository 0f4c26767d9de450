"""Quantizers aimet-onnx ties into one (placement "aimet"): tied tensors share one encoding.

Mirrors ``QuantizationSimModel._tie_quantizers_for_op_types`` (quantsim.py): the op types are
Concat, AveragePool and Relu, plus Resize/Upsample (``_is_htp_interpolation_op``) and
Concat/Scatter* (``_is_grid_equivariant_op``, multi-input) when the graph has them.

* Backward (``_propagate_output_encodings``; Concat, Scatter, ScatterElements, ScatterND, from
  the last op to the first): each input's effective quantizer becomes the output's quantizer,
  walking up through grid-preserving producers and further Concats, for inputs read by nothing
  else; when every input has the same fixed range the output takes it, else inputs with a fixed
  range keep their own quantizer.
* Forward (``_propagate_input_encodings``; AveragePool, Relu, Resize, Upsample, first to last):
  an enabled output quantizer becomes the input's effective quantizer, the two merged
  (``QcQuantizeOp._merge_constraints``: the smaller bit-width, symmetric if either is, one fixed
  range, widened to +-absmax when symmetric); skipped when the output's fixed range differs from
  the input's and the input's path has a tensor with several readers.

A tie shares the Quantizer object between names, as aimet shares the QcQuantizeOp.
"""

from __future__ import annotations

from qtool.plan.aimet_configure import is_grid_preserving
from qtool.plan.aimet_graph import Graph
from qtool.plan.aimet_rules import effective, walk
from qtool.plan.aimet_tensors import Quantizer

BACKWARD = {"Concat", "Scatter", "ScatterElements", "ScatterND"}
FORWARD = {"AveragePool", "Relu", "Resize", "Upsample"}


def _backward(graph: Graph, quantizers: dict[str, Quantizer], types: set[str]) -> None:
    visited: set[int] = set()
    for start in reversed(graph.ops):
        if start.type not in types or not start.outputs or start.outputs[0] not in quantizers:
            continue
        output = quantizers[start.outputs[0]]
        sources: dict[str, Quantizer | None] = {}
        ranges: set = set()
        stack = [start]
        while stack:
            op = stack.pop()
            if id(op) in visited:
                continue
            visited.add(id(op))
            for name in op.inputs:
                if name not in graph.float_tensors:
                    continue
                found = effective(graph, quantizers, name)
                source = found or name
                if found is not None:
                    ranges.add(quantizers[found].fixed)
                readers = {id(c): c for c in graph.consumers.get(source, [])}
                walked = walk(graph, quantizers, name)[1]
                if walked:
                    readers.update({id(c): c for o in walked for c in graph.output_ops(o)})
                    for o in walked:
                        readers.pop(id(o), None)
                if len(readers) > 1:
                    continue
                sources[source] = quantizers[found] if found is not None else None
                producer = graph.producer.get(name)
                if producer is not None and (producer.type in types or is_grid_preserving(producer)):
                    stack.append(producer)
        if len(ranges) == 1:
            output.fixed = ranges.pop()
        else:
            sources = {n: q for n, q in sources.items() if q is None or not q.fixed}
        for name, quantizer in sources.items():
            if quantizer is not None:
                quantizers[name] = output


def _merge(keep: Quantizer, other: Quantizer) -> None:
    """``QcQuantizeOp._merge_constraints``."""
    keep.bw = min(keep.bw, other.bw)
    keep.symmetric = keep.symmetric or other.symmetric
    fixed = keep.fixed or other.fixed
    if keep.symmetric and fixed:
        absmax = max(abs(v) for v in fixed if v is not None)
        fixed = (-absmax, absmax)
    keep.fixed = fixed


def _path_has_branches(graph: Graph, quantizers: dict[str, Quantizer], name: str) -> bool:
    """Whether a tensor on the path from `name` to its effective quantizer has several readers."""
    quantizer = quantizers.get(name)
    if quantizer is not None and quantizer.enabled:
        return len(graph.consumers.get(name, [])) != 1
    found, walked = walk(graph, quantizers, name)
    if found is None:
        return False
    counts = [1 if o.outputs[0] in quantizers else len(graph.consumers.get(o.outputs[0], [])) for o in walked]
    return any(n != 1 for n in counts + [len(graph.consumers.get(found, []))])


def _forward(graph: Graph, quantizers: dict[str, Quantizer], types: set[str]) -> None:
    for op in graph.ops:
        if op.type not in types or not op.inputs:
            continue
        found = effective(graph, quantizers, op.inputs[0])
        if found is None:
            continue
        source = quantizers[found]
        for name in op.outputs:
            output = quantizers.get(name)
            if output is None or not output.enabled:
                continue
            if output.fixed and output.fixed != source.fixed and _path_has_branches(graph, quantizers, op.inputs[0]):
                continue
            _merge(source, output)
            quantizers[name] = source


def tie_quantizers(graph: Graph, quantizers: dict[str, Quantizer]) -> None:
    present = {op.type for op in graph.ops if op.domain == ""}
    types = {"Concat", "AveragePool", "Relu"} | (present & (BACKWARD | {"Resize", "Upsample"}))
    _backward(graph, quantizers, types & BACKWARD)
    _forward(graph, quantizers, types & FORWARD)


def tie_groups(quantizers: dict[str, Quantizer]) -> list[list[str]]:
    """Names that share one quantizer object, enabled ones only, each group sorted; groups of 2+."""
    groups: dict[int, list[str]] = {}
    for name, quantizer in quantizers.items():
        if quantizer.enabled:
            groups.setdefault(id(quantizer), []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)
