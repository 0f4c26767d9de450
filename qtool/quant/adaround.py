"""AdaRound: learn, per weight, whether to round down or up (white paper 4.6; Nagel et al. 2020).

One layer at a time, written as a matrix product over *rows* (a Gemm's input vectors, a Conv's
input patches, see ``qtool.quant.patches``). With s, o (``offset``) and q_max the weight
encoding's scale, offset and largest grid integer, every weight W gets a continuous V and

    h(V)  = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)        rectified sigmoid, zeta=1.1, gamma=-0.1
    W~    = s * (clamp(floor(W / s) + h(V) - o, 0, q_max) + o)      soft-quantized weight, on AIMET's grid
    loss  = mean_rows || W x_fp - W~ x_q ||^2                         reconstruction (sum over outputs)
          + lambda * sum_weights (1 - |2 h(V) - 1|^beta)              regulariser, pushes h to 0 or 1

x_fp are the float layer's inputs, x_q the inputs the quantized model feeds it (the bias is the
same on both sides and cancels: targets are the float outputs *without* bias). V starts where
h(V) is the fractional part W/s - floor(W/s), i.e. at the float weight. For the first
``warm_start`` fraction of iterations lambda = 0; then beta anneals from ``beta_range[0]`` to
``beta_range[1]`` with AIMET's cosine schedule (``compute_beta``; ``beta_decay='linear'`` for a
linear decay). Adam on V (AIMET's optimiser and learning rate), one random mini-batch of rows per
iteration, analytic gradients. Finally ``W_final = s * (clamp(floor(W/s) + [h(V) >= 0.5] - o,
0, q_max) + o)``: every weight lies exactly on the encoding's grid (computed with ``dequantize``,
so it is bit for bit what the quantization simulation produces).

The reconstruction loss is AIMET's ``compute_recon_loss``: squared error summed over a row's
outputs, averaged over rows; the regulariser is summed over weights (``compute_round_loss``), so
``reg_param`` means what it means in AIMET.

Implementation notes. Only weights whose floor lies in [0, q_max - 1] on the integer grid can
move (rounding up keeps them on the grid); the others are clamped either way, so the soft weight
is ``W~ = low + step * h`` with ``low`` the weight at h = 0 and ``step`` = s or 0. That is the same
function as the clamp formula (tested), and gives the gradient in one product. Everything in
the loop is float32 with preallocated buffers: memory is what bounds AdaRound on large layers
(a 4096 x 4096 weight is 64 MiB), so the loop holds nine weight-sized float32 arrays and a
mask, no more: the grid's low and step (``qtool.quant.adaround_grid``), V, Adam's two moments
and the gradient's four buffers, one of them Adam's temporary too; the grid's integers are made
again from the weight after the loop's buffers are released (tested: at most 9.5 x the weight's
bytes allocated, with the same bits as before). Grouped convolutions are batched over groups:
depthwise-like layers (one output per group) as one contraction over a (rows, taps, groups)
copy of the inputs, other grouped layers as one stacked matmul (groups, rows, K_g).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qtool.quant.encoding import Encoding, dequantize, quantize, quantize_dequantize
from qtool.quant.adam import Adam
from qtool.quant.adaround_grid import RoundingGrid, _soft_weight
from qtool.quant.layer_rows import LayerMoments, LayerRows
from qtool.quant.patches import sample_rows

logger = logging.getLogger(__name__)

ZETA = 1.1  # stretch of the rectified sigmoid (AIMET AdaroundConstants.ZETA)
GAMMA = -0.1  # (AIMET AdaroundConstants.GAMMA)
BETA_DECAYS = ("cosine", "linear")


@dataclass(frozen=True)
class AdaRoundParams:
    """AdaRound's hyper-parameters, with AIMET's defaults."""

    iterations: int = 10000
    reg_param: float = 0.01  # lambda: weight of the rounding regulariser against the reconstruction
    beta_range: tuple[float, float] = (20.0, 2.0)  # regulariser exponent, annealed from [0] to [1]
    warm_start: float = 0.2  # fraction of iterations with lambda = 0 (reconstruction only)
    batch_size: int = 256  # rows (output positions) per iteration
    learning_rate: float = 1e-3  # Adam's
    seed: int = 0  # mini-batch sampling
    beta_decay: str = "cosine"  # AIMET's cosine annealing of beta, or "linear"

    def __post_init__(self) -> None:
        problems = []
        if self.iterations < 1:
            problems.append(f"iterations must be >= 1, not {self.iterations}")
        if self.reg_param < 0:
            problems.append(f"reg_param must be >= 0, not {self.reg_param}")
        if len(self.beta_range) != 2 or min(self.beta_range) <= 0:
            problems.append(f"beta_range must be two positive numbers, not {self.beta_range}")
        if not 0 <= self.warm_start < 1:
            problems.append(f"warm_start must be in [0, 1), not {self.warm_start}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, not {self.batch_size}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, not {self.learning_rate}")
        if self.beta_decay not in BETA_DECAYS:
            problems.append(f"beta_decay must be one of {', '.join(BETA_DECAYS)}, not {self.beta_decay!r}")
        if problems:
            raise ValueError("; ".join(problems))


# ---------------------------------------------------------------------------------------------
# The terms of the loss, one function each


def rectified_sigmoid(v: np.ndarray) -> np.ndarray:
    """h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), in V's dtype."""
    v = np.asarray(v)
    # sigmoid(v) = (1 + tanh(v / 2)) / 2 is overflow-free; so h = 0.5 + (zeta-gamma)/2 * tanh(v / 2)
    half = (ZETA - GAMMA) / 2
    return np.clip((ZETA + GAMMA) / 2 + half * np.tanh(v * 0.5), 0, 1).astype(v.dtype, copy=False)


def rectified_sigmoid_grad(v: np.ndarray) -> np.ndarray:
    """dh/dV: (zeta - gamma) * sigmoid'(V) where h is not clipped, 0 where it is."""
    v = np.asarray(v)
    t = np.tanh(v * 0.5)
    half = (ZETA - GAMMA) / 2
    raw = (ZETA + GAMMA) / 2 + half * t
    grad = half * 0.5 * (1 - t * t)  # (zeta - gamma) * s(1-s), s = (1+t)/2
    return np.where((raw > 0) & (raw < 1), grad, 0).astype(v.dtype, copy=False)


def inverse_rectified_sigmoid(h: np.ndarray) -> np.ndarray:
    """The V with h(V) = h for h in [0, 1] (the unclipped branch): -log((zeta-gamma)/(h-gamma) - 1)."""
    h = np.asarray(h)
    return (-np.log((ZETA - GAMMA) / (h - GAMMA) - 1)).astype(h.dtype, copy=False)


def reconstruction_loss(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """AIMET's reconstruction loss mean_rows sum_outputs (pred - target)^2 and its gradient in pred.

    ``pred`` and ``target`` are (rows, outputs); the gradient is 2 (pred - target) / rows.
    """
    diff = pred - target
    loss = float(np.einsum("ij,ij->", diff, diff)) / len(diff)
    diff *= 2 / len(diff)
    return loss, diff


def rounding_regularizer(h: np.ndarray, beta: float, reg_param: float) -> tuple[float, np.ndarray]:
    """lambda * sum(1 - |2h - 1|^beta) and its gradient in h: -2 lambda beta |2h-1|^(beta-1) sign(2h-1)."""
    u = 2 * h - 1
    mag = np.abs(u)
    powered = np.power(mag, beta - 1, dtype=h.dtype)  # |u|^(beta-1)
    loss = reg_param * float(u.size - np.einsum("i,i->", powered.ravel(), mag.ravel()))
    grad = np.copysign(powered, u, out=powered)
    grad *= -2 * reg_param * beta
    return loss, grad


def annealed_beta(iteration: int, params: AdaRoundParams) -> float | None:
    """beta at ``iteration`` (0-based), or None during the warm start (no regulariser).

    As AIMET: warm while iteration < warm_start * iterations, then beta decays from beta_range[0]
    at the end of the warm start towards beta_range[1] at the last iteration.
    """
    warm_end = params.warm_start * params.iterations
    if iteration < warm_end:
        return None
    start, end = params.beta_range
    rel = (iteration - warm_end) / (params.iterations - warm_end)
    if params.beta_decay == "linear":
        return float(end + (start - end) * max(0.0, 1.0 - rel))
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(rel * math.pi)))


# ---------------------------------------------------------------------------------------------
# The loss on the grid (qtool.quant.adaround_grid) and the layer as matrix products


def adaround_loss(
    v: np.ndarray,
    grid: RoundingGrid,
    layer: LayerRows,
    xb: np.ndarray,
    target: np.ndarray,
    beta: float | None,
    reg_param: float,
) -> tuple[float, float, np.ndarray]:
    """The whole loss at V on one batch: (reconstruction, regulariser, d loss / d V).

    The reference composition of the terms above (``v`` and ``grid`` in the layer's internal
    layout, ``xb`` from ``layer.gather``); ``beta=None`` is the warm start (reconstruction only).
    Follows the dtype of ``v``. The optimisation loop computes the same gradient fused in place.
    """
    h = rectified_sigmoid(v)
    recon, grad_pred = reconstruction_loss(layer.forward(grid.soft(h), xb), target)
    grad_h = layer.weight_grad(grad_pred, xb) * grid.step
    reg = 0.0
    if beta is not None:
        reg, grad_reg = rounding_regularizer(h, beta, reg_param)
        grad_h += grad_reg
    return recon, reg, grad_h * rectified_sigmoid_grad(v)


# ---------------------------------------------------------------------------------------------
# The optimisation


class _FusedGradient:
    """``adaround_loss``'s gradient in V, fused and in place in float32 (the loop's hot path).

    One tanh serves h and dh/dV; the regulariser's |u|^(beta-1) sign(u) is computed as
    u * exp((beta-2) log|u|) (no pow, no copysign) when beta >= 2; loss values are not computed.
    Four weight-sized float32 buffers (t, h, a, grad) and a mask: the regulariser works in h and
    a once the soft weight in a has been used, and ``a`` is free between calls (``scratch``),
    so Adam can use it as its temporary.
    """

    _HALF = (ZETA - GAMMA) / 2  # h = 0.5 + _HALF * tanh(v/2) before clipping (zeta + gamma = 1)
    _EDGE = (1 - (ZETA + GAMMA) / 2) / _HALF  # |tanh(v/2)| beyond which h is clipped

    def __init__(self, grid: RoundingGrid, layer: LayerRows, batch: int,
                 moments: LayerMoments | None = None) -> None:
        # only the soft weight's two arrays: the grid's integers (floor, rest) are not needed in
        # the loop, so the caller can let them go
        self.low, self.step, self.layer, self.moments = grid.low, grid.step, layer, moments
        shape = grid.step.shape
        self.t, self.h, self.a, self.grad = (np.empty(shape, np.float32) for _ in range(4))
        self.mask = np.empty(shape, bool)
        self.pred = np.empty((batch, layer.out), np.float32) if moments is None else None

    def __call__(self, v: np.ndarray, xb: np.ndarray, tb: np.ndarray, beta: float | None, reg_param: float):
        t, h, a, grad, mask = self.t, self.h, self.a, self.grad, self.mask
        np.multiply(v, 0.5, out=t)
        np.tanh(t, out=t)
        np.multiply(t, self._HALF, out=h)
        h += (ZETA + GAMMA) / 2
        np.clip(h, 0, 1, out=h)
        # reconstruction: d/dW~ = X^T 2 (W~ X - T) / B (or from the moments), and dW~/dh = step
        _soft_weight(self.low, self.step, h, out=a)  # W~ (RoundingGrid.soft)
        if self.moments is not None:
            self.moments.weight_grad(a, out=grad)
        else:
            pred = self.pred[: len(tb)]
            self.layer.forward(a, xb, out=pred)
            pred -= tb
            pred *= 2 / len(tb)
            self.layer.weight_grad(pred, xb, out=grad)
        grad *= self.step
        if beta is not None and reg_param:
            self._add_regularizer(h, beta, reg_param)
        # dh/dV = (zeta - gamma) sigmoid (1 - sigmoid) = _HALF / 2 * (1 - tanh^2), 0 where clipped
        np.multiply(t, t, out=a)
        np.subtract(1, a, out=a)
        a *= self._HALF / 2
        np.abs(t, out=t)
        np.less(t, self._EDGE, out=mask)
        np.multiply(a, mask, out=a)  # (boolean-index assignment is ~10x slower)
        grad *= a
        return grad

    @property
    def scratch(self) -> np.ndarray:
        """A weight-sized float32 buffer free between calls (Adam's temporary)."""
        return self.a

    def _add_regularizer(self, h: np.ndarray, beta: float, reg_param: float) -> None:
        """grad += d/dh of lambda sum(1 - |2h - 1|^beta); h is overwritten (u = 2h - 1 in its
        buffer: the rest of the gradient needs only t) and a is used as the second buffer."""
        u, b, grad = h, self.a, self.grad
        if beta < 2:
            _, b[...] = rounding_regularizer(h, beta, 1.0)
            b /= -2 * beta
        else:
            np.multiply(h, 2, out=u)
            u -= 1  # u = 2h - 1
            np.abs(u, out=b)
            with np.errstate(divide="ignore", invalid="ignore"):
                np.log(b, out=b)
                b *= beta - 2
                np.exp(b, out=b)  # |u|^(beta-2): 0 at u = 0 for beta > 2
            if beta == 2:
                b.fill(1)
            b *= u  # |u|^(beta-1) sign(u)
        b *= -2 * reg_param * beta
        grad += b


def adaround_matrix(
    weight: np.ndarray,
    enc: Encoding,
    x_q: np.ndarray,
    target: np.ndarray,
    params: AdaRoundParams,
    *,
    groups: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """AdaRound one layer given as a matrix; returns (rounded weight on the grid, stats).

    weight: (out, K), or (out, K_g) for a grouped layer (out = groups * out_g, output o reading
        input group o // out_g as ONNX Conv does), e.g. a Conv weight reshaped to (out, -1).
    enc: the weight's integer encoding, per tensor or per output channel (axis 0).
    x_q: the layer's inputs in the quantized model, (N, K) or (N, groups, K_g) rows
        (``conv_patches`` of the quantized input for a Conv).
    target: (N, out) the float layer's outputs on the *float* inputs, *without* the bias
        (the bias is the same on both sides of the reconstruction error, so it cancels).
    progress: called as progress(iterations done, iterations) about a hundred times.

    The result is float32, shaped like ``weight``, and every entry is exactly
    ``dequantize(q, enc)`` for an integer q in [0, q_max]. Stats: ``loss_nearest`` and
    ``loss_adaround`` (the reconstruction loss on all N rows, mean over rows of the squared
    error summed over outputs, for round-to-nearest and for the result), ``flipped`` (fraction of
    weights rounded differently from nearest), ``kept_nearest`` (the learnt rounding ended worse
    than nearest on these rows, so nearest was kept), ``iterations`` and ``seconds``.
    """
    start = time.perf_counter()
    weight = np.asarray(weight, np.float32)
    target = np.asarray(target, np.float32)
    layer = LayerRows(x_q, groups, weight.shape[0])
    if weight.shape[1] != layer.k:
        raise ValueError(f"weight has {weight.shape[1]} inputs per output, the rows {layer.k}")
    if target.shape != (layer.rows, layer.out):
        raise ValueError(f"target must be (N={layer.rows}, out={layer.out}), got shape {target.shape}")
    if layer.rows == 0:
        raise ValueError("AdaRound needs at least one row of inputs")
    grid = RoundingGrid.from_weight(weight, enc).relayout(layer.to_internal)

    rng = np.random.default_rng(params.seed)
    v = inverse_rectified_sigmoid(grid.rest)  # h(V) = fractional part: starts at the float weight
    batch = min(params.batch_size, layer.rows)
    moments = LayerMoments(layer, target) if LayerMoments.cheaper(layer, batch) else None
    gradient = _FusedGradient(grid, layer, batch, moments)
    del grid  # the loop needs only the soft weight's low and step (held by gradient)
    adam = Adam(v, params.learning_rate, scratch=gradient.scratch)
    # all rows at once when they fit in one batch; with the moments no rows are needed at all
    xb, tb = (layer.gather(None), target) if batch == layer.rows and moments is None else (None, None)
    sampled = moments is None and batch < layer.rows
    every = max(1, params.iterations // 100)
    for it in range(params.iterations):
        if sampled:
            rows = sample_rows(batch, layer.rows, rng)
            xb, tb = layer.gather(rows), target[rows]
        adam.step(gradient(v, xb, tb, annealed_beta(it, params), params.reg_param))
        if progress is not None and ((it + 1) % every == 0 or it + 1 == params.iterations):
            progress(it + 1, params.iterations)
    # the optimiser's state and the gradient's buffers go before the final weights are made
    del adam, gradient, moments, xb, tb

    up = layer.to_original(rectified_sigmoid(v) >= 0.5)
    del v
    q_final = RoundingGrid.integers(weight, enc, up)
    del up
    final = dequantize(q_final, enc)
    nearest = quantize_dequantize(weight, enc)
    loss_nearest = reconstruction_loss(layer.outputs(layer.to_internal(nearest)), target)[0]
    loss_adaround = reconstruction_loss(layer.outputs(layer.to_internal(final)), target)[0]
    # a short schedule can end with h(V) undecided and the hard rounding worse than nearest on
    # the very rows it was fitted to: then round to nearest, never worse than the baseline
    kept_nearest = loss_adaround > loss_nearest
    if kept_nearest:
        final, q_final, loss_adaround = nearest, quantize(weight, enc), loss_nearest
    stats = {
        "loss_nearest": loss_nearest,
        "loss_adaround": loss_adaround,
        "flipped": float(np.mean(q_final != quantize(weight, enc))) if weight.size else 0.0,
        "kept_nearest": kept_nearest,
        "iterations": params.iterations,
        "seconds": time.perf_counter() - start,
    }
    logger.debug("adaround %s: %s", weight.shape, stats)
    return final, stats
