"""Per-output-channel weight ranges: is a model a candidate for cross-layer equalization?

White paper section 4.3 (figures 4.2-4.3): when the weight ranges of one layer's output channels
differ a lot, a per-tensor weight quantizer spends its grid on the widest channel and rounds the
narrow ones to a few levels; CLE rescales channels to even that out. The one number that says so
is the layer's *spread ratio*: widest output-channel range / narrowest. Near 1 CLE cannot help
that layer; in the tens or more (depthwise convs after BN folding) it usually does.

Pure numpy on onnx_ir models, no plotting (that lives in `qtool.commands.plots`, which needs matplotlib).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.ir.graph import constant_array
from qtool.steps.fold import LINEAR_OPS, output_channels

# Floor for the narrowest channel range: a dead (all-constant) channel gives a large but finite
# ratio, so tables, JSON and sorting never meet inf or nan.
EPS = 1e-12


@dataclass
class LayerRanges:
    """The min and max of every output channel of one layer's constant weight."""

    name: str  # node name, or its output tensor name when the node has none
    op_type: str
    weight: str  # initializer name (kept by fold/CLE, so it matches layers before and after)
    channel_min: np.ndarray
    channel_max: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.channel_min.shape[0])

    @property
    def channel_range(self) -> np.ndarray:
        """max - min per channel: the span an asymmetric per-tensor grid has to cover for it.
        (Not max(|min|, |max|): that is the symmetric view and hides a one-sided channel.)"""
        return self.channel_max - self.channel_min

    @property
    def spread_ratio(self) -> float:
        """Widest channel range / narrowest (floored at EPS); 1.0 when every channel is constant."""
        ranges = self.channel_range
        widest = float(ranges.max())
        if widest == 0.0:
            return 1.0
        return widest / max(float(ranges.min()), EPS)

    @property
    def tensor_range(self) -> tuple[float, float]:
        """(min, max) of the whole weight: what a per-tensor quantizer sees."""
        return float(self.channel_min.min()), float(self.channel_max.max())


def channel_matrix(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    """The weight as (output channels, everything else), one row per output channel.

    Axes as in `qtool.steps.fold`: Conv (O, I/g, k...) axis 0; ConvTranspose (I, O/g, k...) with
    output channel g*(O/g)+j in column j of group g's rows; Gemm (N, K) with transB else (K, N);
    MatMul (..., K, N) last axis.
    """
    op = node.op_type
    if op == "Conv":
        rows = weight.reshape(weight.shape[0], -1)
    elif op == "ConvTranspose":
        attr = node.attributes.get("group")
        groups = attr.as_int() if attr is not None else 1
        in_ch, out_per_group = weight.shape[0], weight.shape[1]
        view = weight.reshape(groups, in_ch // groups, out_per_group, -1)
        rows = view.transpose(0, 2, 1, 3).reshape(groups * out_per_group, -1)
    elif op == "Gemm":
        attr = node.attributes.get("transB")
        rows = weight if attr is not None and attr.as_int() else weight.T
    else:  # MatMul
        rows = np.moveaxis(weight, -1, 0).reshape(weight.shape[-1], -1)
    # fold's output_channels is the reference for the channel count; disagreeing would mean the
    # two modules read the layout differently.
    assert rows.shape[0] == output_channels(node, weight), (node.op_type, weight.shape)
    return rows


def _weight_of(node: ir.Node) -> tuple[ir.Value, np.ndarray] | None:
    """The layer's constant float weight (input 1), or None when there is nothing to measure."""
    if node.op_type not in LINEAR_OPS or len(node.inputs) < 2:
        return None
    value = node.inputs[1]
    array = constant_array(value)
    if array is None or array.size == 0 or not np.issubdtype(array.dtype, np.floating):
        return None
    if node.op_type == "MatMul" and array.ndim < 2:
        return None  # a 1-D right operand is contracted away: there is no output-channel axis
    if node.op_type == "ConvTranspose" and array.ndim < 2:
        return None
    return value, array


def layer_name(node: ir.Node) -> str:
    return node.name or node.outputs[0].name


def layer_ranges(model: ir.Model, layers: list[str] | None = None) -> list[LayerRanges]:
    """Per-output-channel ranges of every Conv/ConvTranspose/Gemm/MatMul with a constant weight,
    in graph order; `layers` (node or output tensor names) restricts the list, and a name that
    is not such a layer is a QtoolError naming a few that are."""
    found: list[tuple[ir.Node, ir.Value, np.ndarray]] = []
    for node in model.graph:
        weight = _weight_of(node)
        if weight is not None:
            found.append((node, *weight))
    if layers is not None:
        found = _select(found, layers)
    result = []
    for node, value, array in found:
        rows = channel_matrix(node, array.astype(np.float64))
        result.append(LayerRanges(layer_name(node), node.op_type, value.name or "", rows.min(axis=1), rows.max(axis=1)))
    return result


def _select(found: list[tuple[ir.Node, ir.Value, np.ndarray]], layers: list[str]) -> list:
    wanted = set(layers)
    known = {layer_name(node) for node, _, _ in found} | {node.outputs[0].name for node, _, _ in found}
    unknown = [name for name in layers if name not in known]
    if unknown:
        valid = [layer_name(node) for node, _, _ in found]
        shown = ", ".join(valid[:5]) + (f", ... ({len(valid)} in all)" if len(valid) > 5 else "")
        raise QtoolError(
            f"no Conv/ConvTranspose/Gemm/MatMul with a constant weight named {', '.join(map(repr, unknown))}",
            f"layers are named by node or output tensor name: {shown or 'this model has none'}",
        )
    return [item for item in found if layer_name(item[0]) in wanted or item[0].outputs[0].name in wanted]


def match_after(before: list[LayerRanges], after: list[LayerRanges]) -> list[LayerRanges | None]:
    """For each `before` layer, the same layer in `after` (None if gone).

    The weight initializer is the stable key: folding renames a layer's output tensor (it takes
    the BN's name), but keeps weight names. Shared weights fall back to the layer name.
    """
    by_both = {(r.weight, r.name): r for r in after}
    by_weight: dict[str, list[LayerRanges]] = {}
    for r in after:
        by_weight.setdefault(r.weight, []).append(r)
    by_name = {r.name: r for r in after}
    matched: list[LayerRanges | None] = []
    for r in before:
        hit = by_both.get((r.weight, r.name))
        if hit is None and len(by_weight.get(r.weight, [])) == 1:
            hit = by_weight[r.weight][0]
        matched.append(hit if hit is not None else by_name.get(r.name))
    return matched


def ranges_table(before: list[LayerRanges], after: list[LayerRanges] | None = None) -> list[dict]:
    """One JSON-ready row per layer; with `after`, the spread ratio after CLE beside it."""
    rows = []
    matched = match_after(before, after) if after is not None else [None] * len(before)
    for r, a in zip(before, matched):
        low, high = r.tensor_range
        row = {"layer": r.name, "op_type": r.op_type, "weight": r.weight, "channels": r.channels,
               "min": low, "max": high, "spread_ratio": r.spread_ratio}
        if after is not None:
            row["spread_ratio_after"] = a.spread_ratio if a is not None else None
        rows.append(row)
    return rows


_COLUMNS = [("layer", "layer"), ("op_type", "op"), ("channels", "channels"), ("min", "min"),
            ("max", "max"), ("spread_ratio", "spread"), ("spread_ratio_after", "spread after")]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """An aligned plain-text table (text left, numbers right) for `qtool info --ranges`."""
    if not rows:
        return "(no Conv/ConvTranspose/Gemm/MatMul with a constant weight)"
    columns = [(key, title) for key, title in _COLUMNS if any(key in row for row in rows)]
    cells = [[title for _, title in columns]] + [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    text_cols = {"layer", "op_type"}
    lines = []
    for line in cells:
        parts = [c.ljust(w) if key in text_cols else c.rjust(w) for c, w, (key, _) in zip(line, widths, columns)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
