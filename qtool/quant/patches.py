"""Convolutions as matrix products: the rows AdaRound (and any per-layer least squares) works on.

An ONNX ``Conv`` with weight W of shape (out, C/g, k_1, .., k_d) computes, at every output
position p of image n, ``y[n, o, p] = sum_c,k x_pad[n, g(o)*C_g + c, p*stride + k*dilation] W[o, c, k]``
with ``g(o) = o // (out / groups)``. Gathering, for each output position, the input values the
kernel sees gives one *row* per (n, p) and per group::

    patches[row, g, :] = x_pad[n, g*C_g:(g+1)*C_g, p*stride + k*dilation]   flattened (c, k_1, .., k_d)
    y[n, o, p]         = patches[row, g(o), :] @ W.reshape(out, -1)[o]

The flattening order (channel, then kernel dimensions) is that of ``W.reshape(out, -1)``, so the
ONNX weight needs no transposition. Rows are ordered (n, p) with p in row-major order over the
output's spatial dimensions, i.e. ``y.transpose(0, 2, 3, 1).reshape(-1, out)`` for a 2-D conv.

The windows are strided views (``numpy.lib.stride_tricks.sliding_window_view``), so only the
rows asked for are materialised: pass ``rows`` (see ``sample_rows``) to keep memory bounded on
large feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def output_shape(spatial: Sequence[int], kernel, strides, pads, dilations) -> tuple[int, ...]:
    """Spatial output size of a convolution: floor((size + pads - dilation*(k-1) - 1) / stride) + 1."""
    d = len(spatial)
    return tuple(
        (spatial[i] + pads[i] + pads[i + d] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(d)
    )


def conv_patches(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    groups: int = 1,
    *,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """The convolution's input patches, shape (rows, groups, C_g * prod(kernel)).

    ``x`` is channels-first with any number of spatial dimensions (NCW, NCHW, NCDHW); ``kernel``,
    ``strides`` and ``dilations`` have one entry per spatial dimension (default 1) and ``pads`` is
    ONNX's ``[x1_begin, x2_begin, .., x1_end, x2_end]`` (default 0, explicit pads only: resolve
    ``auto_pad`` first). ``rows`` selects output positions (indices into N * prod(output spatial));
    all rows by default. Padding is zeros, as ONNX Conv pads.
    """
    x = np.asarray(x)
    d = x.ndim - 2
    if d < 1:
        raise ValueError(f"conv input must be (N, C, spatial...), got shape {x.shape}")
    kernel = tuple(int(k) for k in kernel)
    strides = tuple(int(s) for s in strides) if strides is not None else (1,) * d
    dilations = tuple(int(s) for s in dilations) if dilations is not None else (1,) * d
    pads = tuple(int(p) for p in pads) if pads is not None else (0,) * (2 * d)
    if not (len(kernel) == len(strides) == len(dilations) == d and len(pads) == 2 * d):
        raise ValueError(
            f"kernel/strides/dilations need {d} entries and pads {2 * d} for input shape {x.shape}; "
            f"got {kernel}, {strides}, {dilations}, {pads}"
        )
    n, channels = x.shape[:2]
    if groups < 1 or channels % groups:
        raise ValueError(f"{channels} input channels cannot be split into {groups} groups")
    out_spatial = output_shape(x.shape[2:], kernel, strides, pads, dilations)
    if min(out_spatial) < 1:
        raise ValueError(f"kernel {kernel} (dilations {dilations}) does not fit input {x.shape} with pads {pads}")

    if any(pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + d]) for i in range(d)])
    extent = tuple(dilations[i] * (kernel[i] - 1) + 1 for i in range(d))
    spatial_axes = tuple(range(2, 2 + d))
    # (N, C, *positions, *window): every window, then keep every stride-th position, dilation-th tap
    view = sliding_window_view(x, extent, axis=spatial_axes)
    view = view[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, None, t) for t in dilations
    )]
    view = view[(slice(None), slice(None)) + tuple(slice(0, o) for o in out_spatial)]
    width = channels // groups * int(np.prod(kernel))
    if rows is None:
        # (N, *positions, C, *kernel): one contiguous copy, rows in (n, position) order
        moved = np.moveaxis(view, 1, 1 + d)
        return np.ascontiguousarray(moved).reshape(-1, groups, width)
    rows = np.asarray(rows, np.int64).ravel()
    index = np.unravel_index(rows, (n,) + out_spatial)
    # advanced indices around a slice: numpy puts the row dimension first -> (R, C, *kernel)
    picked = view[(index[0], slice(None)) + tuple(index[1:])]
    return np.ascontiguousarray(picked).reshape(len(rows), groups, width)


def sample_rows(count: int, rows_total: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct row indices out of ``rows_total``, sorted (all rows if count >= rows_total).

    Sorted so that gathering the rows reads memory in order; uniform without replacement, so each
    row is equally likely and none is used twice.
    """
    if count < 0 or rows_total < 0:
        raise ValueError(f"count and rows_total must be non-negative, got {count} and {rows_total}")
    if count >= rows_total:
        return np.arange(rows_total, dtype=np.int64)
    picked = rng.choice(rows_total, size=count, replace=False, shuffle=False)
    return np.sort(picked).astype(np.int64)
