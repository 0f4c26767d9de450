"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate post-training quantization for generative
pre-trained transformers"): round a layer's weights one input column at a time and spread each
column's rounding error over the columns not rounded yet, weighted by the inverse Hessian of the
layer's reconstruction loss, H = 2 X^T X over its input rows X.

Minimises ||X W^T - X Q^T||^2 column-greedily (Optimal Brain Quantization with a fixed order):
after column i is rounded to q_i, the remaining columns move by -(w_i - q_i) / [H^-1]_ii *
[H^-1]_i,j>i, computed from the upper Cholesky factor of H^-1 (numerically stable, no
per-column inverse updates). Columns are processed in chunks of 128 with the error of a chunk
applied to the rest in one matrix product (the paper's lazy batch updates). The grid is fixed
in advance (per-block / per-channel scales and offsets from the float weights: "static
groups"), so the columns may be taken in order of decreasing Hessian diagonal (``act_order``:
most-used inputs first, while the most freedom is left) without changing the encodings.

Vectorised over the output channels; the loop is over input columns, which is the algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GptqParams:
    damp: float = 0.01  # added to H's diagonal, as a fraction of its mean (the paper's percdamp)
    chunk: int = 128  # columns per lazy batch update
    act_order: bool = True  # columns by decreasing H diagonal


def gptq_round(weights: np.ndarray, scale: np.ndarray, offset: np.ndarray, qmax: int, hessian: np.ndarray,
               params: GptqParams = GptqParams()) -> np.ndarray:
    """GPTQ-rounded weights (on the grid: s * (q + offset)) of `weights` [N, K] (rows: output
    channels, columns: inputs); `scale`/`offset` [N, K] give each weight's grid (AIMET offsets:
    q in 0..qmax), `hessian` [K, K] is X^T X (any positive factor) over the layer's input rows."""
    w = np.array(weights, np.float64)
    scale = np.asarray(scale, np.float64)
    offset = np.asarray(offset, np.float64)
    h = np.array(hessian, np.float64)
    k = w.shape[1]
    dead = np.diag(h) == 0  # inputs that were always zero: any value does, round to nearest
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable") if params.act_order else np.arange(k)
    w, scale, offset, h = w[:, order], scale[:, order], offset[:, order], h[np.ix_(order, order)]
    h[np.diag_indices(k)] += params.damp * float(np.mean(np.diag(h)))
    u = upper_inverse_cholesky(h)
    q = np.empty_like(w)
    for start in range(0, k, params.chunk):
        stop = min(start + params.chunk, k)
        block, errors = w[:, start:stop].copy(), np.empty((w.shape[0], stop - start))
        u_block = u[start:stop, start:stop]
        for i in range(stop - start):
            column = block[:, i]
            s, o = scale[:, start + i], offset[:, start + i]
            rounded = s * (np.clip(np.round(column / s) - o, 0, qmax) + o)
            q[:, start + i] = rounded
            error = (column - rounded) / u_block[i, i]
            block[:, i:] -= np.outer(error, u_block[i, i:])
            errors[:, i] = error
        w[:, stop:] -= errors @ u[start:stop, stop:]
    result = np.empty_like(q)
    result[:, order] = q
    return result


def upper_inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """U with U^T U = H^-1 (upper triangular), adding damping until H is positive definite.

    One factorisation: with J the reversal permutation and J H J = L L^T, U = J L^-1 J (upper, and
    U^T U = J L^-T L^-1 J = J (J H J)^-1 J = H^-1), instead of inverting H and factorising again."""
    eye = np.eye(len(h))
    extra = 0.0
    for _ in range(8):
        try:
            lower = np.linalg.cholesky((h + extra * eye)[::-1, ::-1])
            return np.ascontiguousarray(np.linalg.inv(lower)[::-1, ::-1])
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(np.mean(np.diag(h))) or 1e-6)
    raise np.linalg.LinAlgError("the layer's input Hessian is not positive definite even after damping")
