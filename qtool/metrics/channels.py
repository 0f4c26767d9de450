"""Which axis of each model output holds its channels, for the per-channel SQNR (qtool.metrics.comparison).

A pooled SQNR is dominated by the output's largest part: a YOLO head [N, 4 + C, anchors] that
joins box pixels (0..320) with class probabilities (0..1) reads 38 dB while every probability
rounds to 0. Measured per channel, the dead part shows. The rule, in order:

1. An explicit choice (`simulate --channel-axis NAME=AXIS`, AXIS an integer or `none`).
2. Rank 0 or 1: no channels (pooled only).
3. Probabilities from a Softmax or Hardmax, any rank: pooled only. All of them share one scale
   (0..1), so they hold no part that a pooled figure could hide, and per class the SQNR only
   measures how rare a class is: on PP-OCRv4 rec at 98.4% accuracy (pooled 13.0 dB) a class
   that never wins reads -92.6 dB, and even among the 49 classes that win somewhere the worst
   reads -2.8 dB. Judge them by their decisions (accuracy, top-1 agreement).
4. Rank 2 [N, C]: axis 1 (classes' logits, embedding features).
5. Rank >= 3: the op that last fixed the output's layout decides, found by walking up from the
   output through elementwise ops (Add, Mul, Sigmoid, Cast, ...; each input in turn, so a
   residual Add finds its branch's layer) and through Transpose (whose perm moves the axis):
   Concat -> its axis (the parts joined are exactly what a pooled figure hides);
   Softmax / LogSoftmax / Hardmax -> their axis (the classes);
   MatMul / Gemm / LayerNormalization -> the last axis (features of [N, T, C] sequences);
   Conv / ConvTranspose / pooling / BatchNormalization -> axis 1 (NCHW channels).
   A walk that passed a Transpose and then stops at another op (Reshape...) takes axis 1 there
   and carries it through the Transposes (PicoDet's [N, HW, C] heads -> the last axis).
6. Otherwise the declared shape: rank 3 with a symbolic dim 1 and a static last dim is a
   sequence [N, T, C] -> the last axis; anything else -> axis 1.

Measured on real exports: YOLO-style heads -> 1 (their Concat), PP-OCRv4 rec -> pooled (Softmax),
PicoDet layout heads [1, 7600, 10] -> 2, a CRNN's [T, N, C] logits -> 2, a MiniLM encoder's
token states -> 2 (LayerNormalization), a ViT's importance map and PP-OCR det -> 1.
"""

from __future__ import annotations

import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.ir.graph import shape_of

_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Relu", "LeakyRelu", "PRelu",
    "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Identity", "Cast", "Exp", "Log", "Neg", "Abs",
    "Sqrt", "Reciprocal", "Erf", "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Floor",
    "Ceil", "Round", "Sign", "QuantizeLinear", "DequantizeLinear", "Dropout",
})
_OWN_AXIS = {"Concat": 0, "LogSoftmax": -1}  # op -> its default axis
_PROBABILITIES = frozenset({"Softmax", "Hardmax"})  # outputs of these: pooled only (rule 3)
POOLED = "pooled"  # the walk's answer for rule 3
_LAST_AXIS = frozenset({"MatMul", "Gemm", "LayerNormalization", "SimplifiedLayerNormalization", "Attention"})
_AXIS_ONE = frozenset({"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization",
                       "GroupNormalization", "MaxPool", "AveragePool", "LpPool", "Resize", "Upsample",
                       "DepthToSpace", "SpaceToDepth"})
_MAX_WALK = 256  # ops visited from an output before the shape rule decides


def output_channel_axes(model: ir.Model, overrides: dict[str, int | None] | None = None) -> dict[str, int | None]:
    """Per float output of `model`: its channel axis (may be negative: counted from the end), or
    None for no channels. Outputs of unknown rank get the walk's answer, and axis 1 by default."""
    axes: dict[str, int | None] = {}
    for value in model.graph.outputs:
        shape = shape_of(value)
        rank = None if shape is None else len(shape)
        if overrides and value.name in overrides:
            axes[value.name] = overrides[value.name]
        elif rank is not None and rank < 2:
            axes[value.name] = None
        else:
            found = _layout_axis(value)
            if found == POOLED:
                axes[value.name] = None
            elif rank == 2:
                axes[value.name] = 1
            else:
                axes[value.name] = _normalized(found, rank) if found is not None else _shape_rule(shape)
    return axes


def parse_channel_axes(model: ir.Model, items: tuple[str, ...] | None) -> dict[str, int | None]:
    """`--channel-axis NAME=AXIS` (repeatable) -> {NAME: AXIS}; AXIS an integer (negative counts
    from the end) or `none` (pooled only). NAME must be a model output, AXIS within its rank."""
    outputs = {value.name: shape_of(value) for value in model.graph.outputs}
    chosen: dict[str, int | None] = {}
    for item in items or ():
        name, sep, text = item.rpartition("=")
        if not sep or not name:
            raise QtoolError(f"--channel-axis {item}: expected NAME=AXIS", "e.g. --channel-axis output0=1")
        if name not in outputs:
            raise QtoolError(f"--channel-axis {item}: the model has no output {name!r}",
                             f"name one of {', '.join(outputs)}")
        if text.strip().lower() == "none":
            chosen[name] = None
            continue
        try:
            axis = int(text)
        except ValueError:
            raise QtoolError(f"--channel-axis {item}: {text!r} is not an integer axis",
                             "give an axis such as 1 or -1, or none") from None
        rank = None if outputs[name] is None else len(outputs[name])
        problem = "out of range" if rank is not None and not -rank <= axis < rank else \
            "the batch axis" if axis == 0 or (rank is not None and axis % rank == 0) else None
        if problem:
            raise QtoolError(f"--channel-axis {item}: axis {axis} of output {name} (rank {rank}) is {problem}",
                             "give a non-batch axis such as 1 or -1 (negative counts from the end), or none")
        chosen[name] = axis
    return chosen


def _normalized(axis: int, rank: int | None) -> int:
    return axis % rank if rank else axis


def _shape_rule(shape: tuple | None) -> int:
    """No layout op found: [N, T, C] with a symbolic T and a static C is a sequence."""
    if shape is not None and len(shape) == 3 and not isinstance(shape[1], int) and isinstance(shape[2], int):
        return 2
    return 1


def _layout_axis(value: ir.Value) -> int | str | None:
    """Walk up from `value` to the op that fixed its layout; the axis in `value`'s own layout
    (negative when counted from the end), POOLED for probabilities, or None when no such op is
    found. An elementwise op's inputs are tried in turn (a residual Add: the branch that has a
    layout op); a walk that passed Transposes and then meets another op (Reshape, Flatten...)
    assumes axis 1 there, the NC... convention (PicoDet: Conv [N, C, H, W] -> Reshape
    [N, C, HW] -> Transpose -> [N, HW, C])."""
    budget, dead_ends = [_MAX_WALK], []
    found = _walk(value, [], budget, set(), dead_ends)
    if found is None and dead_ends:
        return _through_transposes(1, dead_ends[0])
    return found


def _walk(value: ir.Value, perms: list[list[int]], budget: list[int], seen: set[int],
          dead_ends: list[list[list[int]]]) -> int | str | None:
    """Depth first, at most `budget` ops in all. `perms`: the Transposes met so far (each maps
    an axis of its input to one of its output); `dead_ends` collects their list where the walk
    ended on an op that says nothing, after at least one Transpose."""
    node = value.producer()
    if node is None or budget[0] <= 0 or id(node) in seen:
        return None
    seen.add(id(node))
    budget[0] -= 1
    op = node.op_type
    if op in _PROBABILITIES:
        return POOLED
    if op in _OWN_AXIS:
        return _through_transposes(node.attributes.get_int("axis", _OWN_AXIS[op]), perms)
    if op in _LAST_AXIS:
        return _through_transposes(-1, perms)
    if op in _AXIS_ONE:
        return _through_transposes(1, perms)
    if op == "Transpose":
        perm = node.attributes.get_ints("perm", None)
        return None if perm is None or not node.inputs else \
            _walk(node.inputs[0], perms + [list(perm)], budget, seen, dead_ends)
    if op in _ELEMENTWISE:
        for source in _sources(node):
            found = _walk(source, perms, budget, seen, dead_ends)
            if found is not None:
                return found
        return None
    if perms:
        dead_ends.append(perms)
    return None


def _through_transposes(axis: int, perms: list[list[int]]) -> int:
    """Carry `axis` of the layout op's output down through the Transposes met on the way up (last met first)."""
    if not perms:
        return axis
    rank = len(perms[-1])
    axis %= rank
    for perm in reversed(perms):
        axis = perm.index(axis)
    return axis


def _sources(node: ir.Node) -> list[ir.Value]:
    """The computed inputs an elementwise op may carry its layout from, most likely first:
    produced by an op before graph inputs, higher known rank first (constants broadcast)."""
    computed = [v for v in node.inputs if v is not None and v.const_value is None
                and (v.producer() is None or v.producer().op_type != "Constant")]
    return sorted(computed, key=lambda v: (v.producer() is None, -len(v.shape) if v.shape is not None else 0))
