"""ONNX layer ops in torch: convolutions, pooling, normalisation, Gemm/MatMul, Pad, Resize. One
function per op, the spec's attribute defaults in it, `OPS` the explicit table.

ONNX pads are [begin..., end...] and may differ per side; torch pads both sides alike, so
asymmetric pads (and auto_pad SAME_*) become an explicit F.pad before the op. Resize in nearest
mode computes ONNX's source index per coordinate transformation and rounding mode itself (torch
has only some of them); linear and cubic map onto torch's half_pixel / align_corners modes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qtool.train.attrs import Attrs

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pads(at: Attrs, x, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX [begin..., end...] pads, auto_pad resolved against the input's spatial shape."""
    rank = len(kernel)
    auto = at.str("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return at.ints("pads", [0] * 2 * rank)
    if auto == "VALID":
        return [0] * 2 * rank
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def _split_pads(x, pads: list[int], value: float = 0.0):
    """(x padded where the sides differ, the symmetric padding left for torch)."""
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if begins == ends:
        return x, begins
    torch_pads = []
    for b, e in zip(reversed(begins), reversed(ends)):
        torch_pads += [b, e]
    return F.pad(x, torch_pads, value=value), [0] * rank


def conv(at: Attrs, x, w, b=None):
    rank = w.dim() - 2
    strides, dilations = at.ints("strides", [1] * rank), at.ints("dilations", [1] * rank)
    pads = _pads(at, x, list(w.shape[2:]), strides, dilations)
    x, padding = _split_pads(x, pads)
    return _CONV[rank](x, w, b, strides, padding, dilations, at.int("group", 1))


def conv_transpose(at: Attrs, x, w, b=None):
    rank = w.dim() - 2
    if at.get("output_shape") is not None or at.str("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise at.unsupported("output_shape / auto_pad")
    strides, dilations = at.ints("strides", [1] * rank), at.ints("dilations", [1] * rank)
    pads = at.ints("pads", [0] * 2 * rank)
    out_pad = at.ints("output_padding", [0] * rank)
    begins, ends = pads[:rank], pads[rank:]
    if begins == ends:
        return _CONV_T[rank](x, w, b, strides, begins, out_pad, at.int("group", 1), dilations)
    y = _CONV_T[rank](x, w, b, strides, 0, out_pad, at.int("group", 1), dilations)
    index = tuple(slice(bb, y.shape[2 + i] - ee) for i, (bb, ee) in enumerate(zip(begins, ends)))
    return y[(slice(None), slice(None)) + index]


def _pool_setup(at: Attrs, x, value: float):
    kernel = at.ints("kernel_shape")
    rank = len(kernel)
    strides, dilations = at.ints("strides", [1] * rank), at.ints("dilations", [1] * rank)
    pads = _pads(at, x, kernel, strides, dilations)
    if any(2 * p > k for p, k in zip(pads, kernel + kernel)):  # torch allows at most half a kernel
        x, padding = F.pad(x, [p for b, e in zip(pads[:rank][::-1], pads[rank:][::-1]) for p in (b, e)],
                           value=value), [0] * rank
    else:
        x, padding = _split_pads(x, pads, value)
    return x, kernel, strides, dilations, padding, bool(at.int("ceil_mode", 0))


def max_pool(at: Attrs, x):
    if at.outputs > 1:
        raise at.unsupported("MaxPool's Indices output")
    x, kernel, strides, dilations, padding, ceil = _pool_setup(at, x, float("-inf"))
    spans = [n + 2 * p - d * (k - 1) - 1 for n, p, d, k in zip(x.shape[2:], padding, dilations, kernel)]
    # onnxruntime sizes floor-mode outputs with C++ division, which truncates towards zero: an
    # input up to a stride shorter than the kernel still gives one window (over what there is)
    sizes = [math.ceil(m / s) + 1 if ceil else int(m / s) + 1 for m, s in zip(spans, strides)]
    if min(sizes) <= 0:  # onnxruntime returns an empty tensor where torch refuses
        return x.new_empty((*x.shape[:2], *[max(n, 0) for n in sizes]))
    short = [max(-m, 0) if not ceil else 0 for m in spans]
    if any(short):
        x = F.pad(x, [p for extra in reversed(short) for p in (0, extra)], value=float("-inf"))
    return _MAX_POOL[len(kernel)](x, kernel, strides, padding, dilations, ceil)


def average_pool(at: Attrs, x):
    include = bool(at.int("count_include_pad", 0))
    pads = at.ints("pads", [])
    rank = len(at.ints("kernel_shape"))
    if not include and pads and pads[:rank] != pads[rank:]:
        raise at.unsupported("asymmetric pads without count_include_pad")
    x, kernel, strides, _, padding, ceil = _pool_setup(at, x, 0.0)
    return _AVG_POOL[len(kernel)](x, kernel, strides, padding, ceil, include)


def global_average_pool(at: Attrs, x):
    return x.mean(dim=list(range(2, x.dim())), keepdim=True)


def global_max_pool(at: Attrs, x):
    return x.amax(dim=list(range(2, x.dim())), keepdim=True)


def batch_norm(at: Attrs, x, scale, bias, mean, var):
    if at.outputs > 1:
        raise at.unsupported("BatchNormalization in training mode")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, at.float("epsilon", 1e-5))


def layer_norm(at: Attrs, x, scale, bias=None):
    if at.outputs > 1:
        raise at.unsupported("LayerNormalization's Mean / InvStdDev outputs")
    axis = at.int("axis", -1) % x.dim()
    shape = tuple(x.shape[axis:])
    scale = scale.expand(shape)
    bias = bias.expand(shape) if bias is not None else None
    return F.layer_norm(x, shape, scale, bias, at.float("epsilon", 1e-5))


def gemm(at: Attrs, a, b, c=None):
    a = a.transpose(0, 1) if at.int("transA", 0) else a
    b = b.transpose(0, 1) if at.int("transB", 0) else b
    y = a @ b
    alpha, beta = at.float("alpha", 1.0), at.float("beta", 1.0)
    y = y * alpha if alpha != 1.0 else y
    if c is None:
        return y
    return y + (c * beta if beta != 1.0 else c)


def matmul(at: Attrs, a, b):
    return torch.matmul(a, b)


def pad(at: Attrs, x, pads=None, value=None, axes=None):
    if at.opset < 11:
        pads, value = at.ints("pads"), at.float("value", 0.0)
    else:
        pads = [int(p) for p in pads.reshape(-1).tolist()]
        value = float(value.reshape(-1)[0]) if value is not None and value.numel() else 0.0
    rank = x.dim()
    axes = [int(a) % rank for a in axes.reshape(-1).tolist()] if axes is not None else list(range(rank))
    full = [0] * 2 * rank
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    torch_pads = []
    for axis in reversed(range(rank)):
        torch_pads += [full[axis], full[rank + axis]]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]  # reflect / replicate pad only trailing dims in torch
    mode = at.str("mode", "constant")
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    if mode not in ("reflect", "edge"):
        raise at.unsupported(f"Pad mode '{mode}'")
    return F.pad(x, torch_pads, mode="reflect" if mode == "reflect" else "replicate")


def _nearest_index(at: Attrs, out_size: int, in_size: int, scale: float, device):
    """ONNX Resize's source index for every output position of one axis (nearest mode)."""
    dst = torch.arange(out_size, dtype=torch.float64, device=device)
    mode = at.str("coordinate_transformation_mode", "half_pixel")
    if mode == "asymmetric":
        src = dst / scale
    elif mode in ("half_pixel", "pytorch_half_pixel"):
        src = (dst + 0.5) / scale - 0.5 if not (mode == "pytorch_half_pixel" and out_size == 1) else dst * 0
    elif mode == "align_corners":
        src = dst * ((in_size - 1) / (out_size - 1)) if out_size > 1 else dst * 0
    elif mode == "tf_half_pixel_for_nn":
        src = (dst + 0.5) / scale
    else:
        raise at.unsupported(f"coordinate_transformation_mode '{mode}'")
    rounding = at.str("nearest_mode", "round_prefer_floor")
    index = {"floor": torch.floor, "ceil": torch.ceil,
             "round_prefer_floor": lambda v: torch.ceil(v - 0.5),
             "round_prefer_ceil": lambda v: torch.floor(v + 0.5)}.get(rounding)
    if index is None:
        raise at.unsupported(f"nearest_mode '{rounding}'")
    return index(src).clamp(0, in_size - 1).long()


def resize(at: Attrs, x, roi=None, scales=None, sizes=None):
    if at.opset < 11:
        scales, sizes = roi, None  # opset 10: (X, scales)
    if sizes is not None and sizes.numel():
        out = [int(s) for s in sizes.tolist()]
        factors = [o / i for o, i in zip(out, x.shape)]
    else:
        factors = [float(s) for s in scales.tolist()]
        out = [int(math.floor(i * f)) for i, f in zip(x.shape, factors)]
    mode = at.str("mode", "nearest")
    if mode == "nearest":
        for axis in range(x.dim()):
            if out[axis] != x.shape[axis] or factors[axis] != 1.0:
                x = x.index_select(axis, _nearest_index(at, out[axis], x.shape[axis], factors[axis], x.device))
        return x
    if out[:2] != list(x.shape[:2]):
        raise at.unsupported(f"{mode} Resize of the batch or channel axis")
    transform = at.str("coordinate_transformation_mode", "half_pixel")
    if transform not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        raise at.unsupported(f"{mode} Resize with coordinate_transformation_mode '{transform}'")
    if mode == "cubic" and (at.float("cubic_coeff_a", -0.75) != -0.75 or at.int("exclude_outside", 0)):
        raise at.unsupported("cubic Resize other than a=-0.75 without exclude_outside")
    rank = x.dim() - 2
    torch_mode = {"linear": {1: "linear", 2: "bilinear", 3: "trilinear"}[rank], "cubic": "bicubic"}.get(mode)
    if torch_mode is None:
        raise at.unsupported(f"Resize mode '{mode}'")
    corners = transform == "align_corners"
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=out[2:], mode=torch_mode, align_corners=corners)
    return F.interpolate(x, scale_factor=factors[2:], mode=torch_mode, align_corners=corners,
                         recompute_scale_factor=False)


OPS = {
    "Conv": conv, "ConvTranspose": conv_transpose, "MaxPool": max_pool, "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool, "GlobalMaxPool": global_max_pool, "BatchNormalization": batch_norm,
    "LayerNormalization": layer_norm, "Gemm": gemm, "MatMul": matmul, "Pad": pad, "Resize": resize,
}
