"""Per-block and LPBQ weight encodings in AIMET's 2.0.0 format (`qtool.quant.blockwise`).

AIMET (aimet_torch ``AffineEncoding.to_qnn_encoding_dict`` / ``GroupedBlockEncoding``, and the
QDQ exporter that reads the files back) writes a per-block entry as an onnx::DequantizeLinear
with blocks: ``{name, output_dtype: int4|uint4|..., y_scale: [[..]], y_zero_point?: [[..]],
axis: <block axis>, block_size}``, the scales nested in the weight's rank with the block axis cut
to the number of blocks; zero points only when some are non-zero (asymmetric, uint). LPBQ entries
replace ``y_scale`` by ``per_block_int_scale`` (integers, the same nesting) and
``per_channel_float_scale`` (the block axis kept as 1), ``output_dtype`` is the compressed
``int<bw>``; the scale is their product and the grid is symmetric.

1.0.0 and 0.6.1: AIMET's 1.0.0 has PER_BLOCK / LPBQ entries with flattened scales whose layout
only AIMET's own module shapes define; qtool writes blocks in 2.0.0 only and refuses the others
with one line saying so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qtool.errors import QtoolError
from qtool.quant.blockwise import BlockEncoding, lpbq_encoding

BLOCK_KEYS = ("block_size", "per_block_int_scale", "per_channel_float_scale")


def refuse_blocks(params: dict[str, Any], version: str) -> None:
    """One line naming the first per-block encoding when `version` cannot hold it."""
    if version == "2.0.0":
        return
    for name, enc in params.items():
        if isinstance(enc, BlockEncoding):
            raise QtoolError(f"{name}: per-block encodings are written in AIMET's 2.0.0 format only, not {version}",
                             "add --encoding-version 2.0.0")


def _floats(values: np.ndarray) -> list:
    """Nested lists of exact float32 values (what AIMET's float32 .tolist() writes)."""
    return np.asarray(values, np.float32).astype(np.float64).tolist()


def block_entry(name: str, enc: BlockEncoding) -> dict[str, Any]:
    """The 2.0.0 entry of a per-block (or LPBQ) encoding."""
    dtype = f"{'' if enc.signed else 'u'}int{enc.bw}"
    entry: dict[str, Any] = {"name": name, "output_dtype": dtype, "axis": enc.axis, "block_size": enc.block_size}
    if enc.lpbq:
        entry["per_block_int_scale"] = np.asarray(enc.int_scale, np.int64).tolist()
        entry["per_channel_float_scale"] = _floats(enc.channel_scale)
    else:
        entry["y_scale"] = _floats(enc.scale)
        zero = np.zeros_like(enc.offset) if enc.signed else -enc.offset
        if np.any(zero != 0):
            entry["y_zero_point"] = zero.tolist()
    return {**entry, "frozen": True} if enc.frozen else entry


def _array(entry: dict, key: str, kind: str, src: str, where: str) -> np.ndarray:
    """A nested list of numbers as an array (rectangular, finite); one-line errors."""
    value = entry.get(key)
    if not isinstance(value, list) or not value:
        raise QtoolError(f"{src}: {where}: field {key!r} must be a non-empty (nested) list of numbers")
    try:
        array = np.asarray(value, np.float64)
    except (ValueError, TypeError):
        raise QtoolError(f"{src}: {where}: field {key!r} must be a rectangular nested list of numbers") from None
    if not np.all(np.isfinite(array)) or (kind == "int" and not np.all(array == np.round(array))):
        raise QtoolError(f"{src}: {where}: field {key!r} must hold finite {'integers' if kind == 'int' else 'numbers'}")
    return array


def read_block_entry(entry: dict, src: str, where: str, signed: bool, bw: int, frozen: bool) -> BlockEncoding:
    """A 2.0.0 per-block or LPBQ entry (``output_dtype`` already parsed into signed / bw)."""
    size, axis = entry.get("block_size"), entry.get("axis")
    for key, value in (("block_size", size), ("axis", axis)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "block_size" else 0):
            raise QtoolError(f"{src}: {where}: field {key!r} must be a{' positive' if key == 'block_size' else ''} "
                             f"integer{' (the block axis, >= 0)' if key == 'axis' else ''} in a per-block encoding")
    if "per_block_int_scale" in entry:
        if not signed:
            raise QtoolError(f"{src}: {where}: LPBQ encodings are symmetric: output_dtype must be int<N>")
        ints = _array(entry, "per_block_int_scale", "int", src, where)
        channel = _array(entry, "per_channel_float_scale", "float", src, where)
        if ints.ndim <= axis or np.any(ints < 1) or np.any(channel <= 0):
            raise QtoolError(f"{src}: {where}: per_block_int_scale must be >= 1 with the block axis {axis}, "
                             "per_channel_float_scale positive")
        channel = channel.reshape([1 if i == axis else d for i, d in enumerate(ints.shape)]) \
            if channel.size * ints.shape[axis] == ints.size else channel
        try:
            return lpbq_encoding(bw, ints, channel, axis, size, frozen)
        except ValueError as exc:
            raise QtoolError(f"{src}: {where}: {exc}") from None
    scale = _array(entry, "y_scale", "float", src, where).astype(np.float32)
    if scale.ndim <= axis or np.any(scale <= 0):
        raise QtoolError(f"{src}: {where}: y_scale must be positive, nested with the block axis {axis}")
    zero = _array(entry, "y_zero_point", "int", src, where) if "y_zero_point" in entry else np.zeros(scale.shape)
    if zero.shape != scale.shape:
        raise QtoolError(f"{src}: {where}: y_zero_point has shape {zero.shape}, y_scale {scale.shape}")
    lo, hi = (-(2 ** (bw - 1)), 2 ** (bw - 1) - 1) if signed else (0, 2**bw - 1)
    if np.any(zero < lo) or np.any(zero > hi):
        raise QtoolError(f"{src}: {where}: y_zero_point does not fit {'' if signed else 'u'}int{bw}")
    if signed and np.any(zero != 0):
        raise QtoolError(f"{src}: {where}: per-block int<N> encodings are symmetric (zero points 0)",
                         "write asymmetric blocks as uint<N>")
    offset = -(2 ** (bw - 1)) * np.ones(scale.shape) if signed else -zero
    return BlockEncoding(bw, scale, offset.astype(np.int64), signed, axis, size, frozen)
