"""Quantizers that change nothing in the simulated model: a Q->DQ pair whose input is already on
its grid.

qtool gives an op that only moves values (Pad, Reshape, Transpose, Concat, MaxPool...) the
encoding of its input (its output range is its input's), so the QDQ model reads

    DQ(s, z) -> Pad -> Q(s, z) -> DQ(s, z) -> Conv

Every value that leaves the first DequantizeLinear is on the grid, y = s * (q - z) for an
integer q in the container's range; moving values keeps them there (Pad's constant 0 is on
every grid: q = z). The second pair computes round(y / s) + z = q (y / s is within a few ulps of
the integer q - z, far from a rounding tie), then s * (q - z) = y: the same float, bit for bit.
So the simulation leaves it out (`drop_repeated_quantizers`): one Q->DQ pair per activation
fewer passes over the tensor, and onnxruntime can fuse the Pad into the Conv again (as in the
float model: PP-OCR and EfficientNet pad before their strided depthwise layers). The exported
model keeps every pair (onnxruntime's integer kernels want them).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

# op -> the input positions whose values reach the output unchanged (None: every input)
_MOVES: dict[str, tuple[int, ...] | None] = {
    "Reshape": (0,), "Flatten": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Transpose": (0,), "Identity": (0,),
    "Pad": (0,), "MaxPool": (0,), "Slice": (0,), "Gather": (0,), "Expand": (0,), "Tile": (0,),
    "DepthToSpace": (0,), "SpaceToDepth": (0,), "Concat": None,
}
_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")


def drop_repeated_quantizers(model: ir.Model) -> int:
    """Remove, in place, every Q->DQ pair that re-quantizes values already on its grid (see the
    module doc); the number removed. The outputs are bit-identical."""
    grids: dict[ir.Value, tuple] = {}  # value -> the grid all its values are on
    for node in model.graph:  # topological order: a mover's inputs are known before it
        if _is(node, "DequantizeLinear"):
            key = _grid(node)
        elif node.op_type in _MOVES and node.domain in ("", "ai.onnx") and _moves_only(node):
            positions = _MOVES[node.op_type]
            keys = {grids.get(v) for i, v in enumerate(node.inputs) if positions is None or i in positions}
            key = keys.pop() if len(keys) == 1 else None
            if key is not None and (key[6] is not None or key[7]):
                key = None  # a per-axis or block grid names an axis that Transpose/Reshape/... may move
        else:
            continue
        if key is not None:
            grids[node.outputs[0]] = key
    removed = 0
    for q in [node for node in model.graph if _is(node, "QuantizeLinear")]:
        moved, dq = q.inputs[0], _only_dequantize(q)
        if moved is None or dq is None or moved.producer() is None or _is(moved.producer(), "DequantizeLinear"):
            continue
        key = _grid(q)
        if key is None or grids.get(moved) != key or _grid(dq) != key or len(moved.uses()) != 1:
            continue
        out = dq.outputs[0]
        name = out.name if out.is_graph_output() else None
        if moved.is_graph_output():
            continue
        out.replace_all_uses_with(moved, replace_graph_outputs=True)
        if name is not None:  # the graph output keeps its name
            moved.name = name
        model.graph.remove([q, dq], safe=True)
        removed += 1
    return removed


def _is(node: ir.Node, op: str) -> bool:
    return node.op_type == op and node.domain in _QDQ_DOMAINS


def _only_dequantize(q: ir.Node) -> ir.Node | None:
    uses = list(q.outputs[0].uses())
    if len(uses) != 1 or q.outputs[0].is_graph_output():
        return None
    node, index = uses[0]
    return node if _is(node, "DequantizeLinear") and index == 0 else None


def _grid(node: ir.Node) -> tuple | None:
    """The grid of a Q or DQ node with constant parameters, as a comparable key (scale and zero
    point bytes and types, axis, block size, domain); None when a parameter is computed."""
    if len(node.inputs) < 3 or any(v is None or v.const_value is None for v in node.inputs[1:3]):
        return None
    scale, zero = node.inputs[1].const_value.numpy(), node.inputs[2].const_value.numpy()
    if scale.dtype.itemsize < 4 and zero.dtype.itemsize > 1:
        return None  # a 16-bit grid with a half-precision scale: x / s may land many steps off q
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes and scale.size > 1 else None
    block = node.attributes["block_size"].as_int() if "block_size" in node.attributes else 0
    domain = "" if node.domain == "ai.onnx" else node.domain
    return (scale.dtype.str, scale.shape, scale.tobytes(), zero.dtype.str, zero.shape, zero.tobytes(), axis, block,
            domain)


def _moves_only(mover: ir.Node) -> bool:
    """Whether the node's first output holds only values it read (its other outputs unused:
    MaxPool's indices); a constant Pad must pad with 0, which is on every grid."""
    if any(v.uses() or v.is_graph_output() for v in mover.outputs[1:]):
        return False
    return mover.op_type != "Pad" or _pad_constant(mover) == 0.0


def _pad_constant(pad: ir.Node) -> float | None:
    """The value a Pad fills with (0 unless given; 0 too for edge, reflect and wrap, which copy
    values already on the grid), None when it is computed."""
    mode = pad.attributes["mode"].as_string() if "mode" in pad.attributes else "constant"
    if mode != "constant":
        return 0.0
    if "value" in pad.attributes:  # opset < 11
        return pad.attributes["value"].as_float()
    if len(pad.inputs) < 3 or pad.inputs[2] is None:
        return 0.0
    constant = pad.inputs[2].const_value
    return None if constant is None else float(np.asarray(constant.numpy()).reshape(-1)[0])
