"""A (grouped) linear layer written as rows of inputs: the two products AdaRound needs.

Split from adaround.py: the loss and optimiser there only need `forward` and `weight_grad`;
the layouts that make depthwise and grouped convolutions fast without loops over groups live here.
"""

from __future__ import annotations

import numpy as np


class LayerRows:
    """A (grouped) linear layer's inputs as rows, with the forward and weight-gradient products.

    ``x`` is (N, K) or (N, groups, K_g); the weight is (out, K_g) with ``out = groups * out_g`` and
    output o reading group o // out_g, as ONNX Conv groups its channels.

    Weights are handled in an *internal layout* (``to_internal`` / ``to_original``) and batches in
    the layout ``gather`` returns, each chosen for fast products without loops over groups:

    * dense (groups = 1): weight (out, K), batch (B, K): two GEMMs.
    * depthwise-like (one output per group): weight (K_g, groups), batch (B, K_g, groups): the
      contraction over the few taps runs along contiguous groups (einsum).
    * other grouped layers: weight (out, K_g), batch (groups, B, K_g): stacked GEMMs (matmul).
    """

    def __init__(self, x: np.ndarray, groups: int, out: int, dtype=np.float32) -> None:
        x = np.asarray(x, dtype)
        if x.ndim == 2:
            x = x[:, None, :]
        if x.ndim != 3 or x.shape[1] != groups:
            raise ValueError(f"inputs must be (N, K) or (N, groups={groups}, K_g), got shape {x.shape}")
        if groups < 1 or out % groups:
            raise ValueError(f"{out} outputs cannot be split into {groups} groups")
        self.groups, self.out, self.out_g, self.k = groups, out, out // groups, x.shape[2]
        self.rows = x.shape[0]
        self.taps_major = groups > 1 and self.out_g == 1
        if self.taps_major:
            self.x = np.ascontiguousarray(x.transpose(0, 2, 1))  # (N, K_g, groups): one copy
        elif groups == 1:
            self.x = x.reshape(self.rows, self.k)
        else:
            self.x = x

    def to_internal(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.T) if self.taps_major else np.ascontiguousarray(w)

    def to_original(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.T) if self.taps_major else w

    def gather(self, rows: np.ndarray | slice | None) -> np.ndarray:
        """The batch of the given rows (all if None) in the layout forward/weight_grad take."""
        xb = self.x if rows is None else self.x[rows]
        if self.groups > 1 and not self.taps_major:
            xb = np.ascontiguousarray(xb.transpose(1, 0, 2))  # (groups, B, K_g)
        return xb

    def forward(self, w: np.ndarray, xb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Outputs (B, out) of the internal-layout weight on a batch (no bias)."""
        if self.groups == 1:
            return np.matmul(xb, w.T, out=out)
        if self.taps_major:
            return np.einsum("bkg,kg->bg", xb, w, out=out)
        wg = w.reshape(self.groups, self.out_g, self.k)
        y = np.matmul(xb, wg.transpose(0, 2, 1))  # (groups, B, out_g)
        y = y.transpose(1, 0, 2).reshape(xb.shape[1], self.out)
        if out is None:
            return y
        out[...] = y
        return out

    def weight_grad(self, grad_out: np.ndarray, xb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """d loss / d W in the internal layout from d loss / d outputs (B, out)."""
        if self.groups == 1:
            return np.matmul(grad_out.T, xb, out=out)
        if self.taps_major:
            return np.einsum("bg,bkg->kg", grad_out, xb, out=out)
        gg = grad_out.reshape(-1, self.groups, self.out_g).transpose(1, 2, 0)  # (groups, out_g, B)
        g = np.matmul(gg, xb).reshape(self.out, self.k)
        if out is None:
            return g
        out[...] = g
        return out

    def outputs(self, w: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Outputs on all rows (internal-layout weight), in chunks of rows to bound temporaries."""
        parts = [self.forward(w, self.gather(slice(i, i + chunk))) for i in range(0, self.rows, chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, self.out), w.dtype)


class LayerMoments:
    """The reconstruction gradient from the rows' second moments: exact over *all* rows.

    mean_n ||W x_n - t_n||^2 has the gradient 2 (W G - D) with G = mean_n x_n x_n^T and
    D = mean_n t_n x_n^T, so once G and D are known an iteration costs out * K_g^2 whatever the
    number of rows, instead of 2 * B * out * K_g for a mini-batch of B rows. That is cheaper for
    depthwise layers (K_g = the few taps) and for dense layers with K <= 2 B, and the gradient
    is the full one, not a mini-batch estimate. Weights are in ``LayerRows``' internal layout.
    """

    def __init__(self, layer: LayerRows, target: np.ndarray, chunk: int = 1024) -> None:
        self.layer = layer
        g = d = 0.0
        for i in range(0, layer.rows, chunk):  # float64 sums, a chunk of rows at a time
            gi, di = self._moments(layer.x[i:i + chunk].astype(np.float64),
                                   np.asarray(target[i:i + chunk], np.float64))
            g, d = g + gi, d + di
        self.g2 = (2 * g / layer.rows).astype(np.float32)
        self.d2 = (2 * d / layer.rows).astype(np.float32)

    def _moments(self, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sums of x x^T and t x^T over the rows of one chunk, in the layout weight_grad uses."""
        layer = self.layer
        if layer.groups == 1:  # x (n, K), weight (out, K)
            return x.T @ x, t.T @ x
        if layer.taps_major:  # x (n, K_g, groups), weight (K_g, groups)
            return np.einsum("nkg,njg->kjg", x, x), np.einsum("ng,nkg->kg", t, x)
        xg = x.transpose(1, 0, 2)  # x (n, groups, K_g), weight (out, K_g) = (groups, out_g, K_g)
        tg = t.reshape(len(t), layer.groups, layer.out_g).transpose(1, 2, 0)  # (groups, out_g, n)
        return np.matmul(xg.transpose(0, 2, 1), xg), np.matmul(tg, xg).reshape(layer.out, layer.k)

    def weight_grad(self, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """d/dW of mean_n ||W x_n - t_n||^2 (internal layout)."""
        layer = self.layer
        if layer.groups == 1:
            out = np.matmul(w, self.g2, out=out)
        elif layer.taps_major:
            out = np.einsum("kjg,jg->kg", self.g2, w, out=out)
        else:
            g = np.matmul(w.reshape(layer.groups, layer.out_g, layer.k), self.g2).reshape(layer.out, layer.k)
            if out is None:
                out = g
            else:
                out[...] = g
        out -= self.d2
        return out

    @staticmethod
    def cheaper(layer: LayerRows, batch: int) -> bool:
        """Whether an iteration costs less from the moments than from a mini-batch of ``batch`` rows."""
        return layer.groups > 1 or layer.k <= 2 * batch
