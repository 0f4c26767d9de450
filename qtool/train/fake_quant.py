"""Fake quantization in torch, value for value what onnxruntime's QuantizeLinear/DequantizeLinear
(and qtool's float fake-quant subgraph) compute for an encoding (white paper eq. 2.7):

    y = s * (clamp(round(x / s) - o, 0, q_max) + o)        o = AIMET's offset = -zero point

The division is in float32 and torch.round rounds half to even, as QuantizeLinear does, and
every later step is exact on integers held in float32, so the forward is bit-identical to the
QDQ model's quantizer. Gradients pass straight through the rounding (STE, section 5.1); with
range learning the scale (and the offset of asymmetric grids) are parameters and get LSQ's
gradients (Esser et al. 2020: d y / d s = round(x/s) - x/s inside the grid, the clamped end
outside), scaled by 1/sqrt(N q_max); LSQ+ (Bhalgat et al. 2020) learns the offset the same way,
rounded in the forward pass (STE) so the written encoding is exactly what was trained.

A learned scale is trained as its logarithm relative to the calibrated one, s = s0 * exp(theta),
theta starting at 0 (so the first forward is the PTQ pair's, exactly). Adam, which section 5.2
recommends for quantizer parameters, moves a parameter by about its learning rate per step
whatever the gradient's size, so on s itself one rate is a different relative step for every
tensor, and the calibrated scales of one model span orders of magnitude: on the PP-OCRv4
recogniser (per-tensor W8A8, rate 1e-4) the first step took the weight scale 9.2e-5 of
'whswish_b_11.w_0' to -7.7e-6. On theta the step is a relative change of about the rate for
every scale, and a scale cannot reach zero or change sign. The offset stays in grid units.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qtool.quant.encoding import Encoding


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times `factor` backward (LSQ's step-size gradient scale)."""

    @staticmethod
    def forward(ctx, x, factor: float):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward (half to even), identity backward. x + (round(x) - x) is exactly round(x):
    the difference is exact (Sterbenz) and the sum is the representable round(x)."""
    return x + (torch.round(x) - x).detach()


class FakeQuant(torch.nn.Module):
    """One quantizer. `learn`: scale (and an asymmetric grid's offset) are trained parameters."""

    def __init__(self, enc: Encoding, name: str, learn: bool = False) -> None:
        super().__init__()
        self.tensor_name = name
        self.bw, self.symmetric, self.axis, self.dtype = enc.bw, enc.symmetric, enc.axis, enc.dtype
        self.frozen = enc.frozen
        self.learn = learn and not enc.is_float
        self.qmax = float(enc.qmax) if not enc.is_float else 0.0
        self.oscillation = None  # a qtool.train.oscillation.Tracker of the integers, for low-bit weights
        scale = torch.from_numpy(np.array(enc.scale, np.float32))
        offset = torch.from_numpy(np.array(enc.offset, np.float32))
        if self.learn:
            self.register_buffer("scale0", scale)
            self.log_scale = torch.nn.Parameter(torch.zeros_like(scale))  # s = scale0 * exp(log_scale)
            if self.symmetric:
                self.register_buffer("offset", offset)
            else:
                self.offset = torch.nn.Parameter(offset)
        else:
            self.register_buffer("scale", scale)
            self.register_buffer("offset", offset)

    def _shaped(self, value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None or x.dim() == 0:
            return value.reshape(())
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return value.reshape(shape)

    def current_scale(self) -> torch.Tensor:
        """The scale the forward uses now (a function of the trained log-ratio when learned)."""
        return self.scale0 * torch.exp(self.log_scale) if self.learn else self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == "float":
            return x.to(torch.float16).to(x.dtype) if self.bw == 16 else x
        scale, offset = self.current_scale(), self.offset
        if self.learn:
            per_channel = x.numel() // max(scale.numel(), 1)
            factor = 1.0 / math.sqrt(max(per_channel, 1) * self.qmax)
            scale = _ScaleGrad.apply(scale, factor)
            offset = round_ste(_ScaleGrad.apply(offset, factor)) if isinstance(offset, torch.nn.Parameter) else offset
        scale, offset = self._shaped(scale, x), self._shaped(offset, x)
        grid = torch.clamp(round_ste(x / scale) - offset, 0.0, self.qmax)
        if self.oscillation is not None:
            grid = self.oscillation(grid)
        return (grid + offset) * scale

    def grid_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) as the forward uses them on `x` (shaped to broadcast), without gradient."""
        offset = torch.round(self.offset) if isinstance(self.offset, torch.nn.Parameter) else self.offset
        return self._shaped(self.current_scale().detach(), x), self._shaped(offset.detach(), x)

    def encoding(self) -> Encoding:
        """The encoding this quantizer computes now (offset rounded, as the forward uses it)."""
        if self.dtype == "float":
            return Encoding(bw=self.bw, dtype="float")
        scale = self.current_scale().detach().cpu().numpy().astype(np.float32)
        offset = np.round(self.offset.detach().cpu().numpy()).astype(np.int64)
        return Encoding(self.bw, scale, offset, self.symmetric, self.dtype, self.axis, self.frozen)
