"""ONNX ops that move, select or make tensors (no arithmetic) in torch: one function per op with
the spec's defaults, `OPS` the explicit table.

Shapes travel as int64 tensors, as in ONNX, and become Python ints where torch needs sizes, so
the shape subgraphs of exported models (Shape -> Gather -> Concat -> Reshape) run unchanged on
any batch size. Inputs that became attributes or the reverse across opsets (Squeeze/Unsqueeze/
Split axes at 13, Slice at 10) are read in the form the model's opset uses.
"""

from __future__ import annotations

import numpy as np
import torch

from qtool.train.attrs import Attrs


def _ints(tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def shape(at: Attrs, x):
    dims = list(x.shape)[at.int("start", 0):at.int("end", None)]
    return torch.tensor(dims, dtype=torch.int64)


def reshape(at: Attrs, x, target):
    dims = _ints(target)
    if not at.int("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def flatten(at: Attrs, x):
    axis = at.int("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def transpose(at: Attrs, x):
    perm = at.ints("perm") or list(range(x.dim()))[::-1]
    return x.permute(perm)


def concat(at: Attrs, *xs):
    return torch.cat([x for x in xs if x is not None], dim=at.int("axis"))


def split(at: Attrs, x, sizes=None):
    axis = at.int("axis", 0)
    if at.opset < 13:
        sizes = at.ints("split")
    elif sizes is not None:
        sizes = _ints(sizes)
    if not sizes:
        parts = at.int("num_outputs", at.outputs)
        length = x.shape[axis]
        chunk = -(-length // parts)  # the last part is smaller when the length does not divide
        sizes = [min(chunk, length - i * chunk) for i in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


def _slice_axis(x, axis: int, start: int, end: int, step: int):
    """One axis sliced by ONNX's rules (clamping, negative indices and steps)."""
    dim = x.shape[axis]
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return x.narrow(axis, start, max(end - start, 0))[(slice(None),) * axis + (slice(None, None, step),)]
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    index = torch.arange(start, end, step, device=x.device)
    return x.index_select(axis, index)


def slice_(at: Attrs, x, starts=None, ends=None, axes=None, steps=None):
    if at.opset < 10:
        starts, ends, axes, steps = at.ints("starts"), at.ints("ends"), at.ints("axes"), None
    else:
        starts, ends = _ints(starts), _ints(ends)
        axes, steps = (_ints(axes) if axes is not None else None), (_ints(steps) if steps is not None else None)
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        x = _slice_axis(x, axis % x.dim(), start, end, step)
    return x


def squeeze(at: Attrs, x, axes=None):
    axes = at.ints("axes") if at.opset < 13 else (_ints(axes) if axes is not None else None)
    if not axes:
        return x.reshape([d for d in x.shape if d != 1])
    axes = {a % x.dim() for a in axes}
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


def unsqueeze(at: Attrs, x, axes=None):
    axes = at.ints("axes") if at.opset < 13 else _ints(axes)
    rank = x.dim() + len(axes)
    dims = list(x.shape)
    for axis in sorted(a % rank for a in axes):
        dims.insert(axis, 1)
    return x.reshape(dims)


def gather(at: Attrs, x, indices):
    axis = at.int("axis", 0) % x.dim()
    flat = indices.reshape(-1).long() % x.shape[axis]
    picked = x.index_select(axis, flat)
    return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1:]))


def expand(at: Attrs, x, target):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(target))))


def constant_of_shape(at: Attrs, target):
    value = at.tensor("value")
    value = np.zeros(1, np.float32) if value is None else np.array(value).reshape(-1)
    return torch.full(_ints(target), value[0].item(), dtype=torch.from_numpy(value).dtype)


def constant(at: Attrs):
    for name in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if name in at.values:
            return torch.from_numpy(np.array(at.values[name]))
    raise at.unsupported("a Constant without a value attribute")


OPS = {
    "Shape": shape, "Reshape": reshape, "Flatten": flatten, "Transpose": transpose, "Concat": concat, "Split": split,
    "Slice": slice_, "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Gather": gather, "Expand": expand,
    "ConstantOfShape": constant_of_shape, "Constant": constant,
}
