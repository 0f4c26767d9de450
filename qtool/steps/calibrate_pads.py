"""Constant Pad outputs in calibration: observed from their input, not tapped.

The values of `Pad(x, mode="constant", value=c)` are x's values and, per sample, a fixed number
of copies of c (the output's size less the input's). So its histogram is x's histogram plus that
many counts at c, and its range x's range widened to c: exact, with nothing taken out of the
session. Taking the Pad output out of onnxruntime costs far more than its size suggests: the
CPU provider fuses a constant Pad into the next Conv (NCHWc), and a Pad output that is a graph
output has to be computed on its own, in plain NCHW, and reordered back (EfficientNet-Lite0:
its 17 Pads took 1.1-1.4 s of single-thread kernel time on 64 samples against 1.8 s for the
whole float network). Pads with reflect/edge modes, pads on the batch axis, negative pads, an
`axes` input or shapes not known statically are tapped as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.ir.graph import constant_array


@dataclass(frozen=True)
class PadDerivation:
    """`source` padded with `per_sample` copies of `value` per sample."""

    source: str
    value: np.float32
    per_sample: int


def _static(shape: ir.Shape | None) -> list[int] | None:
    """The dims after the first, when all are known integers."""
    if shape is None or len(shape) < 1:
        return None
    dims = list(shape)[1:]
    return [int(d) for d in dims] if all(isinstance(d, int) for d in dims) else None


def _pad_value(node: ir.Node) -> np.float32 | None:
    if "value" in node.attributes:  # opset < 11
        return np.float32(node.attributes["value"].as_float())
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        value = constant_array(node.inputs[2])
        return None if value is None or value.size != 1 else np.float32(value.reshape(()))
    return np.float32(0.0)


def _pads(node: ir.Node) -> np.ndarray | None:
    if "pads" in node.attributes:  # opset < 11
        return np.asarray(node.attributes["pads"].as_ints(), np.int64)
    if len(node.inputs) > 3 and node.inputs[3] is not None:  # an `axes` input (opset 18)
        return None
    pads = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if pads is None else np.asarray(pads, np.int64).ravel()


def pad_derivations(model: ir.Model, names) -> dict[str, PadDerivation]:
    """name -> how it derives from its Pad's input, for the names that are constant-Pad outputs
    with float data, static shapes (but the batch axis), no batch padding and no cropping."""
    wanted, found = set(names), {}
    for node in model.graph:
        if node.op_type != "Pad" or not node.outputs or node.outputs[0].name not in wanted:
            continue
        mode = node.attributes["mode"].as_string() if "mode" in node.attributes else "constant"
        x, out = node.inputs[0], node.outputs[0]
        if mode != "constant" or x is None or x.dtype not in (ir.DataType.FLOAT, None):
            continue
        dims, value, pads = _static(x.shape), _pad_value(node), _pads(node)
        if dims is None or value is None or pads is None or pads.size != 2 * (len(dims) + 1) \
                or (pads < 0).any() or pads[0] or pads[len(dims) + 1] or not np.isfinite(value):
            continue
        rank = len(dims) + 1
        padded = [d + int(pads[i + 1]) + int(pads[rank + i + 1]) for i, d in enumerate(dims)]
        found[out.name] = PadDerivation(x.name, value, math.prod(padded) - math.prod(dims))
    return found


def finish_pads(observers: dict, pads: dict[str, PadDerivation], samples: int) -> None:
    """Fill each Pad output's observer from its input's (graph order: a Pad of a Pad's output
    finds its source already filled). Histograms merge exactly and gain the pad values' count;
    min-max observers see the input's range and the pad value."""
    for name, pad in pads.items():
        target, source = observers[name], observers[pad.source]
        if target is source or not source.seen:
            continue
        if hasattr(target, "merge"):
            target.merge(source)
            if pad.per_sample:
                target.update(np.array([pad.value], np.float32), weight=pad.per_sample * samples)
        else:
            extra = [pad.value] if pad.per_sample else []
            target.update(np.array([source._min, source._max, *extra], np.float32))
