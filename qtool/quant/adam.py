"""Adam, as torch.optim.Adam computes it, on one float32 array in place (AdaRound's optimiser).

Split from adaround.py: the optimiser has nothing AdaRound-specific, and the update runs every
iteration on every weight, so it works in place on preallocated buffers (12 passes, no temporaries).
"""

from __future__ import annotations

import math

import numpy as np

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults, which AIMET uses
ADAM_EPS = 1e-8


class Adam:
    """torch.optim.Adam's update on one float32 array, in place, with preallocated buffers."""

    def __init__(self, param: np.ndarray, lr: float, scratch: np.ndarray | None = None) -> None:
        """``scratch``: a float32 buffer shaped like ``param`` that the caller does not need
        during ``step`` (AdaRound passes its gradient's free buffer: one weight-sized array less)."""
        self.param, self.lr, self.t = param, lr, 0
        self.m = np.zeros_like(param)
        self.v = np.zeros_like(param)
        if scratch is not None and (scratch.shape != param.shape or scratch.dtype != param.dtype):
            raise ValueError(f"scratch must be {param.dtype} {param.shape}, not {scratch.dtype} {scratch.shape}")
        self.tmp = np.empty_like(param) if scratch is None else scratch

    def step(self, grad: np.ndarray) -> None:
        b1, b2 = ADAM_BETAS
        self.t += 1
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        m, v, tmp = self.m, self.v, self.tmp
        np.subtract(grad, m, out=tmp)  # m += (1 - b1) (g - m)
        tmp *= 1 - b1
        m += tmp
        np.multiply(grad, grad, out=tmp)  # v += (1 - b2) (g^2 - v)
        tmp -= v
        tmp *= 1 - b2
        v += tmp
        # param -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), multiplied through by sqrt(bc2)
        root = math.sqrt(bc2)
        np.sqrt(v, out=tmp)
        tmp += ADAM_EPS * root
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr * root / bc1
        self.param -= tmp
