"""Min/max of a tensor derived from its input's min/max, for ops that are monotonic per element.

Min-max calibration needs each quantized tensor's range per batch. Reducing a tensor inside
onnxruntime costs about as much per byte as the op that made it, and quantized graphs have one
quantizer per op output, so reductions can cost more than the inference itself. But for a
unary op that is monotonic element by element, the range of the output is the op applied to
the range of the input: max(relu(x)) = relu(max(x)), min(x + 3) = min(x) + 3 (float rounding is
monotonic too, so this holds in float32), and data movement (Reshape, Transpose...) keeps the
range as it is. On PP-OCRv4 (hard-swish everywhere) more than half of the ranges come for free.

`derivations(model, names)` says which tensors can be derived from which source; the sources
are tapped and reduced, everything else is computed here from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import constant_array

Range = tuple[np.float32, np.float32]
RangeFn = Callable[[Range], Range]

DATA_MOVEMENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def _sorted(a: np.float32, b: np.float32) -> Range:
    return (a, b) if a <= b else (b, a)


def _scalar(node: ir.Node, index: int) -> np.float32 | None:
    array = constant_array(node.inputs[index]) if index < len(node.inputs) else None
    if array is None or array.size != 1 or array.dtype != np.float32:
        return None
    return np.float32(array.reshape(()))


def clip_bounds(node: ir.Node) -> tuple[np.float32, np.float32] | None:
    if "min" in node.attributes or "max" in node.attributes:  # opset < 11
        low = node.attributes.get("min")
        high = node.attributes.get("max")
        return (np.float32(low.as_float() if low is not None else -np.inf),
                np.float32(high.as_float() if high is not None else np.inf))
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        if index < len(node.inputs) and node.inputs[index] is not None:
            value = _scalar(node, index)
            if value is None:
                return None
            bounds.append(value)
        else:
            bounds.append(np.float32(default))
    return bounds[0], bounds[1]


def range_function(node: ir.Node) -> tuple[ir.Value, RangeFn] | None:
    """(data input, f) when the output range of `node` is f(input range) exactly, else None."""
    data = [v for v in node.inputs if v is not None and v.const_value is None]
    if len(data) != 1 or len(node.outputs) != 1 or data[0].dtype != ir.DataType.FLOAT:
        return None
    source, op = data[0], node.op_type
    if op in DATA_MOVEMENT:
        return (source, lambda r: r) if node.inputs[0] is source else None
    if op == "Relu":
        return source, lambda r: (np.maximum(r[0], np.float32(0)), np.maximum(r[1], np.float32(0)))
    if op == "Clip":
        bounds = clip_bounds(node)
        if bounds is None:
            return None
        low, high = bounds
        return source, lambda r: (np.clip(r[0], low, high), np.clip(r[1], low, high))
    if op in ("Add", "Sub", "Mul", "Div"):
        const_index = 1 if node.inputs[0] is source else 0
        c = _scalar(node, const_index)
        if c is None or (op == "Div" and const_index == 0):  # c / x is not monotonic across 0
            return None
        ufunc = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
        if const_index == 1:
            return source, lambda r: _sorted(ufunc(r[0], c), ufunc(r[1], c))
        return source, lambda r: _sorted(ufunc(c, r[0]), ufunc(c, r[1]))
    return None


def derivations(model: ir.Model, names: Iterable[str]) -> dict[str, tuple[str, RangeFn]]:
    """For each named tensor whose range follows from another named (or derived) tensor's:
    name -> (source name, f). Sources are the tensors that must still be measured. Chains may
    pass through tensors that are not named (hard-swish's x + 3 feeding its Clip): their
    functions compose, so no extra tensor is measured."""
    wanted = set(names)
    derived: dict[str, tuple[str, RangeFn]] = {}
    hidden: dict[str, tuple[str, RangeFn]] = {}  # unnamed tensors reachable from a named one
    for node in model.graph:
        out = node.outputs[0] if node.outputs else None
        found = range_function(node) if out is not None else None
        if found is None:
            continue
        source, fn = found[0].name, found[1]
        if source in wanted:
            link = (source, fn)
        elif source in hidden:
            root, inner = hidden[source]
            link = (root, _compose(fn, inner))
        else:
            continue
        if out.name in wanted:
            derived[out.name] = link
        else:
            hidden[out.name] = link
    return derived


def _compose(outer: RangeFn, inner: RangeFn) -> RangeFn:
    return lambda r: outer(inner(r))


def resolve(ranges: dict[str, Range], derived: dict[str, tuple[str, RangeFn]]) -> None:
    """Fill in derived ranges (in graph order, so chains resolve) where the source is known."""
    for name, (source, fn) in derived.items():
        if source in ranges:
            ranges[name] = fn(ranges[source])
