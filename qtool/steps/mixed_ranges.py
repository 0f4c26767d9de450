"""Joined tensors whose parts need different grids: decided after calibration, from the ranges.

A Concat joins tensors that were quantized on their own grids into one tensor that then gets
one grid of its own. When the parts' ranges differ a lot, the narrow parts lose most of their
levels on the joined grid: a part whose range is w_i inside a joined range W keeps

    b_i = bw - log2(W / w_i)      bits                                   (lost bits: log2(W / w_i))

(ranges widened to contain 0, as every grid is). A YOLOv8 head joins box coordinates in pixels
(0..320) with class probabilities (0..1): log2(320) = 8.3 bits lost, so at 8 bits every
probability rounds to 0 while the pooled output SQNR, dominated by the boxes, reads 38 dB.

The rule (``MixedRangeRule``, the ``mixed_ranges`` section of a runtime config): a Concat whose
parts lose more than ``max_lost_bits`` on the joined grid is *mixed*, and so is every tensor that
carries it on unchanged (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Identity, and a Concat
that takes a mixed tensor). A mixed tensor that only flows to model outputs gets
``at_output`` (default ``float``: no quantizer; the parts keep their own grids, so the deployed
model dequantizes each part and joins them in float, which is what cutting the graph before the
decode does on an NPU). One that feeds computation gets ``inside`` (default 16 bits: one grid, but
fine enough for every part; ``float`` leaves the consumer reading float).

AIMET and QNN do not do this: AIMET QuantSim gives the Concat output one quantizer like any op,
and QNN's converters go further and give the Concat inputs and output one shared encoding, which
is the failure above. Ultralytics works around it in its own int8 TFLite export by dividing the
boxes by the image size; that is a change of the model, this is a choice of grids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import constant_array, is_float, value_by_name
from qtool.plan.config import MixedRangeRule

# Ops whose output holds exactly the values of their (first) input, rearranged.
CARRIERS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


@dataclass(frozen=True)
class MixedJoin:
    """One mixed Concat and what became of the tensors that carry its output."""

    node: str  # the Concat's name (or its output's name when unnamed)
    parts: tuple[tuple[str, float, float], ...]  # (tensor, min, max) of each joined part
    lost_bits: float  # what the narrowest part would lose on the joined grid
    tensors: tuple[str, ...]  # the Concat output and the tensors carrying it on
    action: str  # "float" (quantizers removed) or "16" (16-bit grids)

    def describe(self) -> str:
        widths = ", ".join(f"{name} [{lo:.3g}, {hi:.3g}]" for name, lo, hi in self.parts)
        what = "left unquantized (model output)" if self.action == "float" else f"at {self.action} bits"
        return (f"{self.node}: parts lose up to {self.lost_bits:.1f} bits on one grid ({widths}); "
                f"{', '.join(self.tensors)} {what}")


def lost_bits(ranges: list[tuple[float, float]]) -> float:
    """log2(W / w_min): bits the narrowest part loses on the grid of the joined range."""
    lows = np.minimum([lo for lo, _ in ranges], 0.0)
    highs = np.maximum([hi for _, hi in ranges], 0.0)
    widths = np.maximum(highs - lows, 1e-12)
    joined = highs.max() - lows.min()
    return float(np.log2(max(joined, 1e-12) / widths.min()))


def find_mixed_joins(model: ir.Model, ranges: Mapping[str, tuple[float, float]],
                     rule: MixedRangeRule = MixedRangeRule()) -> list[MixedJoin]:
    """Every mixed Concat of `model` (graph order) given calibrated `ranges` (tensor -> (min, max)).

    A part without a range (unquantized, not constant) is left out of the comparison. A Concat
    that joins a mixed tensor again continues that join: one decision for the whole chain."""
    if not rule.enabled:
        return []
    found: list[dict] = []  # joins being built; merged ones are emptied
    owner: dict[str, int] = {}  # tensor -> index in found
    for node in model.graph:
        if node.op_type != "Concat" or not node.outputs or not is_float(node.outputs[0]):
            continue
        inputs = [v for v in node.inputs if v is not None]
        parts = [(v.name, *_range_of(v, ranges)) for v in inputs]
        parts = [p for p in parts if p[1] is not None]
        bits = lost_bits([(lo, hi) for _, lo, hi in parts]) if len(parts) > 1 else 0.0
        parents = sorted({owner[v.name] for v in inputs if v.name in owner})
        if bits <= rule.max_lost_bits and not parents:
            continue
        join = {"node": node.name or node.outputs[0].name, "parts": [], "bits": bits, "tensors": []}
        for index in parents:  # fold the earlier joins this one continues into it
            earlier = found[index]
            join["parts"] += earlier["parts"]
            join["tensors"] += earlier["tensors"]
            join["bits"] = max(join["bits"], earlier["bits"])
            found[index] = {}
        carried = set(join["tensors"])
        join["parts"] += [p for p in parts if p[0] not in carried]
        join["tensors"] += [t for t in _carried_on(node.outputs[0]) if t not in carried]
        found.append(join)
        owner.update({t: len(found) - 1 for t in join["tensors"]})
    values = value_by_name(model)
    joins = []
    for join in filter(None, found):
        to_outputs = all(_only_reaches_outputs(values[t]) for t in join["tensors"])
        action = rule.at_output if to_outputs else rule.inside
        if action != "keep":
            joins.append(MixedJoin(join["node"], tuple((n, float(lo), float(hi)) for n, lo, hi in join["parts"]),
                                   round(float(join["bits"]), 3), tuple(join["tensors"]), action))
    return joins


def apply_mixed_joins(activations: dict, joins: list[MixedJoin], encode_16: Callable[[str], object]) -> None:
    """Remove (float) or re-grid at 16 bits (via `encode_16(name)`) the joins' quantizers, in place."""
    for join in joins:
        for name in join.tensors:
            if name not in activations:
                continue
            if join.action == "float":
                del activations[name]
            else:
                activations[name] = encode_16(name)


def _range_of(value: ir.Value, ranges: Mapping[str, tuple[float, float]]) -> tuple[float | None, float | None]:
    if value.name in ranges:
        return ranges[value.name]
    array = constant_array(value)
    if array is not None and array.size and np.issubdtype(array.dtype, np.floating):
        finite = array[np.isfinite(array)]
        if finite.size:
            return float(finite.min()), float(finite.max())
    producer = value.producer()  # a carrier's output holds its input's values
    if producer is not None and producer.op_type in CARRIERS and producer.inputs:
        return _range_of(producer.inputs[0], ranges)
    return None, None


def _carried_on(value: ir.Value) -> tuple[str, ...]:
    """`value` and every tensor that holds its values unchanged (through CARRIERS), in order."""
    out, frontier = [value.name], [value]
    while frontier:
        current = frontier.pop(0)
        for consumer in current.consumers():
            if consumer.op_type in CARRIERS and consumer.inputs and consumer.inputs[0] is current:
                for produced in consumer.outputs:
                    if produced.name not in out:
                        out.append(produced.name)
                        frontier.append(produced)
    return tuple(out)


def _only_reaches_outputs(value: ir.Value) -> bool:
    """Whether `value` feeds nothing but model outputs, through Concats and carriers only."""
    consumers = value.consumers()
    for consumer in consumers:
        if consumer.op_type not in CARRIERS | {"Concat"}:
            return False
        if not all(_only_reaches_outputs(v) for v in consumer.outputs):
            return False
    return value.is_graph_output() or bool(consumers)
