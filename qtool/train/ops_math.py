"""ONNX elementwise ops, activations, reductions and Softmax in torch: one function per op, the
spec's attribute defaults in the function (`at.float("alpha", 0.2)`), and `OPS` the explicit table.

Integer tensors (shape arithmetic: Shape -> Gather -> Div -> Concat -> Reshape) follow ONNX:
integer Div truncates, as onnxruntime's does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qtool.train.attrs import Attrs

# ONNX TensorProto data types -> torch (the ones Cast and ConstantOfShape meet in practice).
DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
          9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def add(at: Attrs, a, b):
    return a + b


def sub(at: Attrs, a, b):
    return a - b


def mul(at: Attrs, a, b):
    return a * b


def div(at: Attrs, a, b):
    if not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def pow_(at: Attrs, a, b):
    return torch.pow(a, b)


def sqrt(at: Attrs, x):
    return torch.sqrt(x)


def erf(at: Attrs, x):
    return torch.erf(x)


def tanh(at: Attrs, x):
    return torch.tanh(x)


def sigmoid(at: Attrs, x):
    return torch.sigmoid(x)


def exp(at: Attrs, x):
    return torch.exp(x)


def neg(at: Attrs, x):
    return -x


def abs_(at: Attrs, x):
    return torch.abs(x)


def relu(at: Attrs, x):
    return torch.relu(x)


def leaky_relu(at: Attrs, x):
    return F.leaky_relu(x, at.float("alpha", 0.01))


def prelu(at: Attrs, x, slope):
    return torch.where(x < 0, x * slope, x)


def hard_sigmoid(at: Attrs, x):
    return torch.clamp(x * at.float("alpha", 0.2) + at.float("beta", 0.5), 0.0, 1.0)


def hard_swish(at: Attrs, x):
    return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


def clip(at: Attrs, x, low=None, high=None):
    if at.opset < 11:  # bounds were attributes before opset 11
        low, high = at.float("min"), at.float("max")
    low = low if low is None or not torch.is_tensor(low) else low.reshape(())
    high = high if high is None or not torch.is_tensor(high) else high.reshape(())
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


def minimum(at: Attrs, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(out, x)
    return out


def maximum(at: Attrs, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x)
    return out


def identity(at: Attrs, x):
    return x


def cast(at: Attrs, x):
    to = at.int("to")
    if to not in DTYPES:
        raise at.unsupported(f"Cast to data type {to}")
    return x.to(DTYPES[to])


def equal(at: Attrs, a, b):
    return torch.eq(a, b)


def where(at: Attrs, condition, a, b):
    return torch.where(condition, a, b)


def softmax(at: Attrs, x):
    if at.opset >= 13:
        return torch.softmax(x, at.int("axis", -1))
    axis = at.int("axis", 1) % x.dim()  # before opset 13: softmax over the flattened dims from axis on
    flat = x.reshape(*x.shape[:axis], -1)
    return torch.softmax(flat, -1).reshape(x.shape)


def _reduce_axes(at: Attrs, x, axes, attr_until: int) -> list[int] | None:
    """The axes to reduce: an attribute before opset `attr_until`, an input from it on."""
    if at.opset < attr_until:
        axes = at.ints("axes")
    elif axes is not None:
        axes = [int(a) for a in axes.reshape(-1).tolist()]
    if not axes:
        return None if at.int("noop_with_empty_axes", 0) else list(range(x.dim()))
    return axes


def reduce_mean(at: Attrs, x, axes=None):
    dims = _reduce_axes(at, x, axes, 18)
    return x if dims is None else torch.mean(x, dim=dims, keepdim=bool(at.int("keepdims", 1)))


def reduce_sum(at: Attrs, x, axes=None):
    dims = _reduce_axes(at, x, axes, 13)
    return x if dims is None else torch.sum(x, dim=dims, keepdim=bool(at.int("keepdims", 1)))


def reduce_max(at: Attrs, x, axes=None):
    dims = _reduce_axes(at, x, axes, 18)
    return x if dims is None else torch.amax(x, dim=dims, keepdim=bool(at.int("keepdims", 1)))


OPS = {
    "Add": add, "Sub": sub, "Mul": mul, "Div": div, "Pow": pow_, "Sqrt": sqrt, "Erf": erf, "Exp": exp,
    "Neg": neg, "Abs": abs_, "Tanh": tanh, "Sigmoid": sigmoid, "Relu": relu, "LeakyRelu": leaky_relu,
    "PRelu": prelu, "HardSigmoid": hard_sigmoid, "HardSwish": hard_swish, "Clip": clip, "Min": minimum,
    "Max": maximum, "Identity": identity, "Cast": cast, "Equal": equal, "Where": where, "Softmax": softmax,
    "ReduceMean": reduce_mean, "ReduceSum": reduce_sum, "ReduceMax": reduce_max,
}
