"""Block-wise (per-block) weight encodings: one scale per `block_size` inputs of each output channel.

A 4-bit per-channel grid has to cover a whole row of a transformer's weight, whose few outliers
then leave the bulk on 2-3 levels; a scale per block of 32-128 inputs follows the row's local
range (what GPTQ/AWQ checkpoints, onnxruntime's MatMulNBits and AIMET's per-block encodings use).

Layout, as ONNX ``DequantizeLinear`` (opset 21) reads it: ``scale`` and ``offset`` have the
weight's shape with dimension ``axis`` (the reduction axis: 0 for a MatMul weight [K, N]) cut to
``n_blocks = ceil(K / block_size)``; block j covers inputs j*block_size .. (j+1)*block_size - 1, the
last one possibly shorter (the spec's padding). Offsets follow AIMET's convention as everywhere in
qtool (`qtool.quant.encoding`): the unsigned grid 0..2^b-1, symmetric ones at -2^(b-1) (signed
int4 storage, zero point 0), asymmetric ones at round(min/scale) (uint4, zero point -offset).

LPBQ (AIMET's low-power blockwise quantization): the block scales are themselves integers
1..2^(2b-b) times one float scale per output channel, so a target stores b-bit weights with
b-bit integer scales and dequantizes in 2b-bit integer arithmetic (AIMET: compressed_bw b,
decompressed_bw 2b). ``scale`` then holds the products (float32), which is what
DequantizeLinear is given; ``channel_scale`` (``scale``'s shape with the block axis cut to 1)
and ``int_scale`` (``scale``'s shape) are what the 2.0.0 file stores.

Everything is vectorised over the whole tensor; rounding is half-to-even after a float32
division, as onnxruntime's QuantizeLinear does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qtool.quant.encoding import QuantSpec, compute_encoding


@dataclass(frozen=True, eq=False)
class BlockEncoding:
    """A per-block weight quantizer (see the module docstring for the layout)."""

    bw: int
    scale: np.ndarray
    offset: np.ndarray
    symmetric: bool
    axis: int
    block_size: int
    frozen: bool = False
    channel_scale: np.ndarray | None = None  # LPBQ: float scale per output channel
    int_scale: np.ndarray | None = None  # LPBQ: integer scale per block, 1..2^bw
    dtype: str = field(default="int", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", np.asarray(self.scale, np.float32))
        object.__setattr__(self, "offset", np.asarray(self.offset, np.int64))
        if self.scale.shape != self.offset.shape or self.scale.ndim < 1:
            raise ValueError("block scale and offset must have the same shape (the weight's, blocks on the axis)")
        if not 0 <= self.axis < self.scale.ndim or self.block_size < 1:
            raise ValueError(f"block axis {self.axis} / block size {self.block_size} do not fit scale {self.scale.shape}")

    is_float = False
    per_channel = False  # not per channel: code that handles only Encoding must not take it for one

    @property
    def lpbq(self) -> bool:
        return self.int_scale is not None

    @property
    def decompressed_bw(self) -> int:
        """LPBQ: the bit-width of the integer arithmetic a block dequantizes in (AIMET: 2 x bw)."""
        return 2 * self.bw

    @property
    def qmax(self) -> int:
        return 2**self.bw - 1

    @property
    def signed(self) -> bool:
        """Stored as intN (zero point 0) rather than uintN: symmetric grids."""
        return self.symmetric and bool(np.all(self.offset == -(2 ** (self.bw - 1))))

    @property
    def n_blocks(self) -> int:
        return int(self.scale.shape[self.axis])

    def with_frozen(self, frozen: bool = True) -> BlockEncoding:
        return BlockEncoding(self.bw, self.scale, self.offset, self.symmetric, self.axis, self.block_size, frozen,
                             self.channel_scale, self.int_scale)

    def same_as(self, other: object) -> bool:
        return (isinstance(other, BlockEncoding) and (self.bw, self.symmetric, self.axis, self.block_size, self.frozen)
                == (other.bw, other.symmetric, other.axis, other.block_size, other.frozen)
                and np.array_equal(self.scale, other.scale) and np.array_equal(self.offset, other.offset)
                and _same(self.int_scale, other.int_scale) and _same(self.channel_scale, other.channel_scale))

    def fits(self, shape: tuple[int, ...]) -> str | None:
        """None when this encoding fits a weight of `shape`, else what does not."""
        if len(shape) != self.scale.ndim:
            return f"the scales have rank {self.scale.ndim}, the tensor {len(shape)}"
        want = tuple(-(-d // self.block_size) if i == self.axis else d for i, d in enumerate(shape))
        if self.scale.shape != want:
            return (f"blocks of {self.block_size} along axis {self.axis} of shape {tuple(shape)} need "
                    f"{want} scales, not {self.scale.shape}")
        return None


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def blocked_shape(shape: tuple[int, ...], axis: int, block_size: int) -> tuple[int, ...]:
    """The scales' shape: `shape` with dimension `axis` cut to ceil(shape[axis] / block_size)."""
    return tuple(-(-d // block_size) if i == axis else d for i, d in enumerate(shape))


def _blocks(values: np.ndarray, axis: int, block_size: int, fill: float = 0.0) -> np.ndarray:
    """`values` with `axis` moved first, padded with `fill` to whole blocks and split as
    (n_blocks, block_size, rest...)."""
    moved = np.moveaxis(values, axis, 0)
    k = moved.shape[0]
    n_blocks = -(-k // block_size)
    pad = n_blocks * block_size - k
    if pad:
        moved = np.concatenate([moved, np.full((pad, *moved.shape[1:]), fill, moved.dtype)])
    return moved.reshape(n_blocks, block_size, *moved.shape[1:])


def expand(values: np.ndarray, axis: int, block_size: int, length: int) -> np.ndarray:
    """Per-block values repeated over their block's elements: the tensor's shape (last block cut)."""
    return np.take(np.repeat(values, block_size, axis=axis), np.arange(length), axis=axis)


def block_ranges(weights: np.ndarray, axis: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of every block, in the scales' shape (zero padding widens no range that
    AIMET's grids would not widen to contain zero anyway)."""
    blocks = _blocks(np.asarray(weights, np.float32), axis, block_size)
    return (np.moveaxis(blocks.min(axis=1), 0, axis), np.moveaxis(blocks.max(axis=1), 0, axis))


def encode_blocks(weights: np.ndarray, axis: int, block_size: int, bw: int, symmetric: bool = True,
                  lpbq: bool = False, search: bool = False) -> BlockEncoding:
    """Block encodings of `weights` (symmetric: signed grid at offset -2^(b-1), one grid type for
    every block so that the tensor has one storage type): min-max, or with `search` the range
    shrunk per block by the factor of CLIP_RATIOS that minimises the block's squared weight error
    (the `mse` weight scheme; at 4 bits a block's one extreme weight costs the others resolution).
    `lpbq` (symmetric only): block scales rounded to integers 1..2^bw times a per-channel float
    scale (the largest block scale / 2^bw), as AIMET's grouped block quantizer computes them."""
    if block_size < 1:
        raise ValueError(f"block size must be positive, not {block_size}")
    lo, hi = block_ranges(weights, axis, block_size)
    spec = QuantSpec(bw=bw, symmetric=symmetric, unsigned_symmetric=False)
    if search:
        ratio = _best_ratio(np.asarray(weights, np.float32), axis, block_size, lo, hi, spec)
        lo, hi = lo * ratio, hi * ratio
    enc = compute_encoding(lo, hi, spec)
    scale, offset = enc.scale.reshape(lo.shape), enc.offset.reshape(lo.shape)
    if not lpbq:
        return BlockEncoding(bw, scale, offset, symmetric, axis, block_size)
    if not symmetric:
        raise ValueError("LPBQ encodings are symmetric (AIMET: non-zero y_zero_point is refused)")
    levels = 2 ** (2 * bw - bw)
    channel_scale = (scale.max(axis=axis, keepdims=True) / np.float32(levels)).astype(np.float32)
    int_scale = np.clip(np.round(scale / channel_scale), 1, levels).astype(np.int64)
    return lpbq_encoding(bw, int_scale, channel_scale, axis, block_size)


CLIP_RATIOS = np.linspace(1.0, 0.5, 26)  # range shrink factors `search` tries per block


def _best_ratio(weights: np.ndarray, axis: int, block_size: int, lo: np.ndarray, hi: np.ndarray,
                spec: QuantSpec) -> np.ndarray:
    """Per block, the factor of CLIP_RATIOS whose grid gives the least squared error (ties: the widest)."""
    blocks = _blocks(weights, axis, block_size)  # (n_blocks, block_size, rest...), zero padding: exact on any grid
    errors = []
    for ratio in CLIP_RATIOS:
        enc = compute_encoding(lo * ratio, hi * ratio, spec)
        scale = np.moveaxis(enc.scale.reshape(lo.shape), axis, 0)[:, None]
        offset = np.moveaxis(enc.offset.reshape(lo.shape), axis, 0)[:, None].astype(np.float32)
        grid = np.clip(np.round(blocks / scale) - offset, 0, 2**spec.bw - 1)
        errors.append(np.sum(((grid + offset) * scale - blocks) ** 2, axis=1))
    best = np.argmin(np.stack(errors), axis=0)  # (n_blocks, rest...)
    return np.moveaxis(CLIP_RATIOS[best], 0, axis)


def lpbq_encoding(bw: int, int_scale: np.ndarray, channel_scale: np.ndarray, axis: int, block_size: int,
                  frozen: bool = False) -> BlockEncoding:
    """The LPBQ encoding of integer block scales and per-channel float scales (broadcastable)."""
    int_scale = np.asarray(int_scale, np.int64)
    channel_scale = np.asarray(channel_scale, np.float32)
    scale = (int_scale.astype(np.float32) * channel_scale).astype(np.float32)
    offset = np.full(scale.shape, -(2 ** (bw - 1)), np.int64)
    return BlockEncoding(bw, scale, offset, True, axis, block_size, frozen, channel_scale, int_scale)


def _full(enc: BlockEncoding, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    length = shape[enc.axis]
    return (expand(enc.scale, enc.axis, enc.block_size, length),
            expand(enc.offset.astype(np.float32), enc.axis, enc.block_size, length))


def quantize_blocks(weights: np.ndarray, enc: BlockEncoding) -> np.ndarray:
    """The unsigned grid integers (float32): clip(round(w / s) - offset, 0, 2^b - 1)."""
    weights = np.asarray(weights, np.float32)
    problem = enc.fits(weights.shape)
    if problem:
        raise ValueError(problem)
    scale, offset = _full(enc, weights.shape)
    return np.clip(np.round(weights / scale) - offset, 0, enc.qmax).astype(np.float32)


def dequantize_blocks(grid: np.ndarray, enc: BlockEncoding) -> np.ndarray:
    """s * (q + offset), per block."""
    grid = np.asarray(grid, np.float32)
    scale, offset = _full(enc, grid.shape)
    return ((grid + offset) * scale).astype(np.float32)


def quantize_dequantize_blocks(weights: np.ndarray, enc: BlockEncoding) -> np.ndarray:
    return dequantize_blocks(quantize_blocks(weights, enc), enc)


def stored_integers(weights: np.ndarray, enc: BlockEncoding) -> np.ndarray:
    """What DequantizeLinear stores (int8 array holding the values): grid + offset for signed
    (intN) grids, the grid itself for unsigned (uintN) ones."""
    grid = quantize_blocks(weights, enc)
    if enc.signed:
        grid = grid - 2 ** (enc.bw - 1)
    return grid.astype(np.int16 if enc.bw > 8 else np.int8)


def zero_points(enc: BlockEncoding) -> np.ndarray:
    """ONNX zero points in the scales' shape: 0 for signed storage, -offset for unsigned."""
    return np.zeros_like(enc.offset) if enc.signed else -enc.offset


def pack_low_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes (< 2^bits) along the last axis into bytes, the first code in the low
    bits (ONNX's int4/uint4 and MatMulNBits order); the last axis is padded with zeros to whole bytes."""
    codes = np.asarray(codes, np.uint8)
    per_byte = 8 // bits
    pad = -codes.shape[-1] % per_byte
    if pad:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], pad), np.uint8)], axis=-1)
    grouped = codes.reshape(*codes.shape[:-1], -1, per_byte).astype(np.uint16)
    shifts = (np.arange(per_byte) * bits).astype(np.uint16)
    return np.bitwise_or.reduce(grouped << shifts, axis=-1).astype(np.uint8)


def matmulnbits_arrays(weights: np.ndarray, enc: BlockEncoding) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """onnxruntime's MatMulNBits inputs for a MatMul weight [K, N] blocked along K (axis 0):
    B (uint8 [N, n_blocks, block_size * bits / 8]: unsigned codes low-first), scales
    (float32 [N * n_blocks]) and zero points (uint8 [N * ceil(n_blocks * bits / 8)], packed the
    same way; None for signed grids, whose codes are stored +2^(b-1), MatMulNBits' default zero point)."""
    if enc.axis != 0 or np.ndim(weights) != 2:
        raise ValueError("MatMulNBits takes a 2-D weight [K, N] blocked along axis 0")
    grid = quantize_blocks(weights, enc).astype(np.uint8)  # unsigned grid: signed ones shifted by 2^(b-1)
    blocks = _blocks(grid, 0, enc.block_size)  # (n_blocks, block_size, N), padding codes 0
    codes = np.ascontiguousarray(blocks.transpose(2, 0, 1))  # (N, n_blocks, block_size)
    b = pack_low_first(codes, enc.bw)
    scales = np.ascontiguousarray(enc.scale.T).reshape(-1)
    zps = None if enc.signed else pack_low_first(np.ascontiguousarray((-enc.offset).T).astype(np.uint8), enc.bw)
    return b, scales, None if zps is None else zps.reshape(-1)
