"""AdaRound's weight grid: a weight matrix on its encoding's grid as ``low + step * h``.

Split from adaround.py (the loss and the loop). The grid is made with the same float32
operations as ``quantize`` (so nearest rounding matches onnxruntime's), in place where a
temporary was: at most four weight-sized arrays, which matters for the 4096 x 4096 layers of
large models (docs/large_models.md). The loop needs only ``low`` and ``step``; the integers
(``floor``) are made again from the weight once the loop's buffers are gone (``integers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qtool.quant.encoding import Encoding


@dataclass(frozen=True)
class RoundingGrid:
    """A weight matrix placed on its encoding's grid: soft weight ``low + step * h``.

    ``floor`` is floor(W/s) - offset (the grid integer below W), ``rest`` the fractional part
    W/s - floor(W/s) in [0, 1), ``low`` the soft weight at h = 0 (clamped onto the grid), ``step``
    s where floor is in [0, q_max - 1] and 0 elsewhere (such weights are clamped whatever h is).
    """

    floor: np.ndarray
    rest: np.ndarray
    low: np.ndarray
    step: np.ndarray
    enc: Encoding

    @classmethod
    def from_weight(cls, weight: np.ndarray, enc: Encoding, dtype=np.float32) -> RoundingGrid:
        if enc.is_float:
            raise ValueError("AdaRound needs an integer encoding; this one is a float cast")
        if enc.axis not in (None, 0):
            raise ValueError(f"the encoding must be per tensor or per output channel (axis 0), not axis {enc.axis}")
        weight = np.asarray(weight)
        if weight.ndim != 2:
            raise ValueError(f"weight must be a matrix (out, K), got shape {weight.shape}")
        if enc.axis == 0 and len(enc.scale) != weight.shape[0]:
            raise ValueError(f"per-channel encoding has {len(enc.scale)} channels, the weight {weight.shape[0]} rows")
        scaled, floor = cls._scaled_floor(weight, enc)
        scale, offset = cls._scale_offset(weight, enc)
        # in place where a temporary was: the same float32 operations, 4 weight-sized arrays at most
        rest = np.subtract(scaled, np.floor(scaled, out=floor), out=scaled)  # W/s - floor(W/s) in [0, 1)
        floor -= offset
        low = np.clip(floor, 0, enc.qmax)
        low += offset
        low *= scale  # s * (clamp(floor, 0, q_max) + o)
        movable = (floor >= 0) & (floor <= enc.qmax - 1)
        step = np.where(movable, scale, np.float32(0))
        return cls(floor, rest.astype(dtype, copy=False), low.astype(dtype, copy=False),
                   step.astype(dtype, copy=False), enc)

    @staticmethod
    def _scale_offset(weight: np.ndarray, enc: Encoding) -> tuple[np.ndarray, np.ndarray]:
        per_row = enc.axis == 0 and weight.shape[0] > 0
        scale = enc.scale.reshape(-1, 1) if per_row else enc.scale.reshape(())
        offset = (enc.offset.reshape(-1, 1) if per_row else enc.offset.reshape(())).astype(np.float32)
        return scale, offset

    @classmethod
    def _scaled_floor(cls, weight: np.ndarray, enc: Encoding) -> tuple[np.ndarray, np.ndarray]:
        """W/s (the division in float32 as quantize() and onnxruntime do, so nearest rounding
        matches) and a buffer for floor(W/s) (uninitialised)."""
        scale, _ = cls._scale_offset(weight, enc)
        scaled = np.asarray(weight, np.float32) / scale
        return scaled, np.empty_like(scaled)

    @classmethod
    def integers(cls, weight: np.ndarray, enc: Encoding, up: np.ndarray) -> np.ndarray:
        """``from_weight(weight, enc).quantized(up)`` without the rest of the grid (AdaRound's
        final weights, made after the loop's buffers are gone)."""
        scaled, floor = cls._scaled_floor(weight, enc)
        np.floor(scaled, out=floor)
        del scaled
        floor -= cls._scale_offset(weight, enc)[1]
        return _grid_integers(floor, up, enc.qmax)

    def soft(self, h: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """W~ = low + step * h (equal to s * (clamp(floor + h, 0, q_max) + o) for h in [0, 1])."""
        return _soft_weight(self.low, self.step, h, out)

    def quantized(self, up: np.ndarray) -> np.ndarray:
        """Grid integers clamp(floor + up, 0, q_max) for a 0/1 rounding decision ``up``."""
        return _grid_integers(self.floor, up, self.enc.qmax)

    def relayout(self, fn: Callable[[np.ndarray], np.ndarray]) -> RoundingGrid:
        """The same grid with every per-weight array passed through ``fn`` (a transposition)."""
        return RoundingGrid(fn(self.floor), fn(self.rest), fn(self.low), fn(self.step), self.enc)


def _soft_weight(low: np.ndarray, step: np.ndarray, h: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """low + step * h, into ``out`` if given."""
    out = np.multiply(step, h, out=out)
    out += low
    return out


def _grid_integers(floor: np.ndarray, up: np.ndarray, qmax: int) -> np.ndarray:
    """clamp(floor + up, 0, q_max) in float32."""
    return np.clip(floor + up, 0, qmax).astype(np.float32)
