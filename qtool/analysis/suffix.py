"""Run only the part of the switchable model that a setting changes, from cached activations.

A sensitivity run toggles one group of quantizers against a base setting (every quantizer
float, every quantizer quantized, every block at the lowest candidate...). Every node before
the first node that reads a toggled selector computes exactly what it computes under the base,
so its outputs can be taken from a run of the base and only the rest of the graph run: on
average about half the model per run instead of all of it.

The model is cut at a few positions (`CUTS`) among the nodes where quantizer chains start,
placed where they waste least (the work of the nodes between a run's cut and its first change,
summed over the quantizers, from a rough count of each node's multiply-adds). For a cut, the *boundary* is every value computed before it and read at or after it
(by a node or by a subgraph that captures it) or a graph output; the *suffix* is the graph from
the boundary to the outputs (``onnx_ir.convenience.extract``), one onnxruntime session per cut.
A base's run keeps its boundary values per batch (in a Spill: RAM, then disk). A setting runs
from the latest cut before its first toggled selector, fed from the base it differs least
from (the one whose first difference comes latest).

The evaluator's sessions run with graph optimisations off, so a node's kernel and inputs are
the same in the suffix as in the whole model: the outputs are bit-identical (tested), and so is
every score.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from qtool.runtime.spill import Spill
from qtool.analysis.switchable import SwitchableModel

CUTS = 8  # sessions per switchable model: each cut is one more session (its part of the weights)


def _reads(node: ir.Node) -> Iterator[ir.Value]:
    """The values a node reads: its inputs and, recursively, what its subgraphs read."""
    for value in node.inputs:
        if value is not None:
            yield value
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            graphs = [attr.value]
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs = list(attr.value)
        else:
            continue
        for graph in graphs:
            for inner in graph:
                yield from _reads(inner)


class SuffixPlan:
    """Where the switchable model is cut, what crosses each cut, and where each quantizer's
    selector is first read."""

    def __init__(self, switchable: SwitchableModel, cuts: int = CUTS) -> None:
        graph = switchable.model.graph
        order = list(graph)
        selector_of = {input_name: name for name, input_name in switchable.selectors.items()}
        initializers = set(graph.initializers.values())
        produced: dict[ir.Value, int] = {v: -1 for v in graph.inputs if v not in initializers}
        for index, node in enumerate(order):
            for value in node.outputs:
                produced[value] = index
        dynamic = {v for v in produced if produced[v] == -1}
        last_read: dict[ir.Value, int] = {}
        self.start: dict[str, int] = {}  # quantizer -> first node (position) reading its selector
        for index, node in enumerate(order):
            reads = [v for v in _reads(node) if v in produced]
            for value in reads:
                last_read[value] = index
                name = selector_of.get(value.name) if produced[value] == -1 else None
                if name is not None and name not in self.start:
                    self.start[name] = index
            if any(v in dynamic for v in reads):
                dynamic.update(node.outputs)
        for value in graph.outputs:
            last_read[value] = len(order)
        self.selector_inputs = set(selector_of)
        starts = sorted(set(self.start.values()) - {0})
        weights = [sum(1 for p in self.start.values() if p == at) for at in starts]
        before = np.concatenate([[0.0], np.cumsum([_cost(node) for node in order])])  # cost of the nodes before i
        self.cuts: list[int] = []
        self.boundary: dict[int, list[str]] = {}  # cut -> values computed before it, read after
        self.data_inputs: dict[int, list[str]] = {}  # cut -> graph inputs (not selectors) read after it
        for cut in _place(starts, weights, before, cuts):
            crossing = [v for v, at in produced.items() if at < cut and last_read.get(v, -2) >= cut and v in dynamic]
            computed = [v for v in crossing if produced[v] >= 0]
            if any(v.dtype is None for v in computed):  # a tap needs its type
                continue
            self.cuts.append(cut)
            self.boundary[cut] = sorted(v.name for v in computed)
            self.data_inputs[cut] = [v.name for v in crossing if produced[v] == -1 and v.name not in selector_of]
        self.taps = sorted({name for cut in self.cuts for name in self.boundary[cut]})

    def cut_for(self, first_change: int) -> int:
        """The latest cut at or before node `first_change` (0: none, run the whole model)."""
        return max((c for c in self.cuts if c <= first_change), default=0)

    def suffix_model(self, model: ir.Model, cut: int) -> ir.Model:
        """The graph from cut `cut`'s boundary (and the selectors and data inputs it reads) to the
        outputs; inputs carry their types but no shapes (a declared shape is not checked
        against the run in the whole model, but would be against a feed)."""
        graph = model.graph
        names = [*self.boundary[cut], *self.data_inputs[cut], *sorted(self.selector_inputs)]
        suffix = ir.convenience.extract(graph, inputs=names, outputs=[v.name for v in graph.outputs])
        for value in list(suffix.inputs):
            if not value.uses() and not value.is_graph_output():  # an output made before the cut passes through
                suffix.inputs.remove(value)
            else:
                value.shape = None
        return ir.Model(suffix, ir_version=model.ir_version, functions=model.functions.values())


def _cost(node: ir.Node) -> float:
    """A node's work, roughly: its output's elements (symbolic dims as 1), times the weight's
    elements per output channel for a layer (multiply-adds). Only the ratios matter."""
    shape = node.outputs[0].shape if node.outputs else None
    size = float(np.prod([d if isinstance(d, int) else 1 for d in shape])) if shape is not None else 1.0
    layer = node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
    if layer and len(node.inputs) > 1 and node.inputs[1] is not None:
        weight = node.inputs[1].shape
        if weight is not None and all(isinstance(d, int) for d in weight) and len(weight) >= 2:
            size *= float(np.prod(weight)) / max(weight[0] if node.op_type != "MatMul" else weight[-1], 1)
    return max(size, 1.0)


def _place(positions: list[int], weights: list[int], before: np.ndarray, count: int) -> list[int]:
    """`count` cuts among `positions` (where quantizers start, `weights` of them at each) that
    waste least: a run starting at p from the cut c <= p runs the nodes between c and p for
    nothing, `before[p] - before[c]`; summed over the starts, minimised exactly (dynamic
    programming over the sorted positions; the cut at 0, the whole model, is always there)."""
    n = len(positions)
    if n <= count:
        return positions
    at = np.array([before[p] for p in positions])
    w = np.array(weights, dtype=np.float64)
    prefix_w, prefix_wc = np.concatenate([[0.0], np.cumsum(w)]), np.concatenate([[0.0], np.cumsum(w * at)])
    best = np.full((count + 1, n), np.inf)  # [k, i]: least waste of the starts before i, k cuts, the last at i
    back = np.full((count + 1, n), -1)
    best[1] = prefix_wc[:n]  # one cut: the starts before it run from the top (cost 0 before them)
    for k in range(2, count + 1):
        for i in range(1, n):
            j = np.arange(i)  # the previous cut; the starts j..i-1 run from it
            values = best[k - 1, :i] + (prefix_wc[i] - prefix_wc[j]) - at[j] * (prefix_w[i] - prefix_w[j])
            back[k, i] = int(np.argmin(values))
            best[k, i] = values[back[k, i]]
    total = best[count] + (prefix_wc[n] - prefix_wc[:n]) - at * (prefix_w[n] - prefix_w[:n])
    last, chosen = int(np.argmin(total)), []
    for k in range(count, 0, -1):
        chosen.append(positions[last])
        last = int(back[k, last])
    return sorted(chosen)


class BaseCache:
    """The boundary values of one base setting, per batch and cut."""

    def __init__(self, key: tuple[int, ...]) -> None:
        self.key = key
        self.batches: list[dict[str, np.ndarray]] = []

    def add(self, spill: Spill, values: dict[str, np.ndarray]) -> None:
        self.batches.append({name: spill.keep(array) for name, array in values.items()})

    def feeds(self, plan: SuffixPlan, cut: int, batch: int) -> dict[str, np.ndarray]:
        stored = self.batches[batch]
        return {name: np.asarray(stored[name]) for name in plan.boundary[cut]}

    def release(self, spill: Spill) -> None:
        for values in self.batches:
            spill.release(list(values.values()))
        self.batches = []
