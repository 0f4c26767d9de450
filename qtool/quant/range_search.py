"""Choosing a quantization range from a histogram: the math behind the histogram observers.

`_Hist` is a set of per-channel histograms with edges clipped to the exact data range. The
percentile range interpolates inside a bin; the noise ranges (sqnr, mse) evaluate, for every
candidate (min, max), the expected rounding noise plus gamma times the clipping noise exactly,
assuming values spread evenly within each bin, on the grid compute_encoding would produce.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from qtool.quant.encoding import QuantSpec, compute_encoding

_CHUNK = 1 << 17  # elements of one (channels x candidates x edges) block of the noise evaluation: its four
# 1 MB buffers stay in cache (MiniLM's 16-bit searches: 0.58 s at 1 << 20 with fresh temporaries, 0.17 s)
_CELL_CHUNK = 1 << 16  # ... and of one (channels x candidates x cells) block: its temporaries stay in cache

def _initial_range(mn: np.ndarray, mx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A histogram range covering [mn, mx]; constant data gets a small width around its value."""
    span = np.maximum(mx - mn, np.maximum(1e-7 * np.maximum(np.abs(mn), np.abs(mx)), 1e-12))
    lo = np.where(span > mx - mn, (mn + mx) / 2 - span / 2, mn)
    return lo, lo + span


def _bin(values: np.ndarray, lo: np.ndarray, width: np.ndarray, bins: int, weights=None) -> np.ndarray:
    """Histogram of each row of ``values`` (channels x n) with its own range: one bincount call."""
    channels = values.shape[0]
    idx = np.clip(np.floor((values - lo[:, None]) / width[:, None]), 0, bins - 1).astype(np.int64)
    idx += (np.arange(channels, dtype=np.int64) * bins)[:, None]
    w = None if weights is None else np.ravel(weights)
    counts = np.bincount(idx.ravel(), weights=w, minlength=channels * bins)
    return counts.reshape(channels, bins).astype(np.float64)


def _rebin(counts: np.ndarray, lo: float, width: float, mn: float, mx: float, bins: int
           ) -> tuple[np.ndarray, float, float]:
    """(counts, lo, width) of `bins` bins over _initial_range(mn, mx), from a finer histogram
    (lo, width) that covers [mn, mx] (one histogram of `_rebin_many`)."""
    one = lambda v: np.array([v], np.float64)  # noqa: E731
    new, new_lo, new_width = _rebin_many(np.asarray(counts, np.float64)[None], *map(one, (lo, width, mn, mx)), bins)
    return new[0], float(new_lo[0]), float(new_width[0])


def _rebin_many(counts: np.ndarray, lo: np.ndarray, width: np.ndarray, mn: np.ndarray, mx: np.ndarray,
                bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row of `counts` (C, B), a fine histogram (lo, width) covering [mn, mx], re-binned
    onto `bins` bins over _initial_range(mn, mx): its cumulative counts, linear inside each fine
    bin (edges clipped to the data range, where its mass lies), read at the new edges. All rows
    at once (the histograms of a model's tensors: one call instead of one np.interp each)."""
    channels, fine = counts.shape
    new_lo, new_hi = _initial_range(mn, mx)
    new_width = (new_hi - new_lo) / bins
    cum = np.concatenate([np.zeros((channels, 1)), np.cumsum(counts, axis=1)], axis=1)
    at_x = new_lo[:, None] + new_width[:, None] * np.arange(bins + 1)  # the new edges
    j = np.clip(np.floor((at_x - lo[:, None]) / width[:, None]), 0, fine - 1).astype(np.intp)  # fine bin of each
    a = np.clip(lo[:, None] + width[:, None] * j, mn[:, None], mx[:, None])  # its clipped edges
    b = np.clip(lo[:, None] + width[:, None] * (j + 1), mn[:, None], mx[:, None])
    length = b - a
    frac = np.clip(np.divide(at_x - a, length, out=(at_x >= b).astype(np.float64), where=length > 0), 0.0, 1.0)
    at = np.take_along_axis(cum, j, axis=1) + np.take_along_axis(counts, j, axis=1) * frac
    at[:, -1] = cum[:, -1]  # every count lands in a bin, whatever float rounding did at the top edge
    return np.maximum(np.diff(at, axis=1), 0.0), new_lo, new_width


class _Hist(NamedTuple):
    """Histograms of C channels over E-1 bins: edges clipped to the exact data range."""

    counts: np.ndarray  # (C, E-1)
    edges: np.ndarray  # (C, E)
    density: np.ndarray  # (C, E-1): counts per unit length
    mn: np.ndarray  # (C,) exact data minimum
    mx: np.ndarray  # (C,)
    width: np.ndarray  # (C,) nominal bin width
    lo: np.ndarray | None = None  # (C,) left edge of bin 0: edge i is lo + width * grid[i], clipped
    grid: np.ndarray | None = None  # (E,) which edges of the uniform histogram were kept


def _make_hist(counts, lo, width, mn, mx) -> _Hist:
    """Keep only the edges of non-empty bins (a run of empty bins becomes one empty 'bin'):
    outliers leave most of a histogram empty, and the noise search costs per edge."""
    nonzero = counts.any(axis=0)
    keep = np.zeros(counts.shape[1] + 1, bool)
    keep[:-1] |= nonzero
    keep[1:] |= nonzero
    idx = np.flatnonzero(keep) if nonzero.any() else np.arange(2)
    is_bin = np.diff(idx) == 1
    counts = np.where(is_bin, counts[:, idx[:-1]], 0.0)
    edges = np.clip(lo[:, None] + width[:, None] * idx, mn[:, None], mx[:, None])
    lengths = np.diff(edges, axis=1)
    density = np.divide(counts, lengths, out=np.zeros_like(counts), where=lengths > 0)
    return _Hist(counts, edges, density, mn, mx, width, lo, idx)


def _check_percentile(percentile: float) -> float:
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], not {percentile}")
    return float(percentile)


def _percentile_range(hist: _Hist, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (100-p)-th and p-th percentiles of the histogram, vectorised over channels."""
    counts, edges = hist.counts, hist.edges
    cum = np.cumsum(counts, axis=1)
    rows = np.arange(counts.shape[0])

    def at(p: float) -> np.ndarray:
        target = p / 100.0 * cum[:, -1]
        j = np.argmax(cum >= target[:, None], axis=1)  # first bin whose cumulative count reaches it
        before = np.where(j > 0, cum[rows, j - 1], 0.0)
        n = counts[rows, j]
        frac = np.clip(np.divide(target - before, n, out=np.zeros_like(n), where=n > 0), 0.0, 1.0)
        return edges[rows, j] + frac * (edges[rows, j + 1] - edges[rows, j])

    return at(100.0 - percentile), at(percentile)


def _noise_antiderivative(x, scale, gmin, span, gamma: float, work: list[np.ndarray] | None = None) -> np.ndarray:
    """G(x) = integral of the squared quantization error from the grid minimum ``gmin`` to x.

    Inside the grid [gmin, gmin + span] the error e = v - scale*round(v/scale) (v = x - gmin) is a
    sawtooth; its squared integral is scale^3/12 per full step, so G = r*scale^3/12 + e^3/3 with
    r = round(v/scale), continuous at the half steps. Beyond the grid the clipping error c adds
    gamma*c^3/3 (negative below gmin, so G is increasing).

    The arithmetic runs in place in four buffers (`work`: four flat float64 arrays at least as
    large as the result, reused between calls; fresh ones without it): the same operations in the
    same order as the plain expression (`_noise_antiderivative_reference`, the test's oracle),
    so the same bits, without a dozen fresh temporaries (page faults: most of the search's time).
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(gmin), np.shape(scale))
    size = int(np.prod(shape))
    work = work or [np.empty(size) for _ in range(4)]
    v, inside, r, tmp = (w[:size].reshape(shape) for w in work)
    np.subtract(x, gmin, out=v)
    np.maximum(v, 0.0, out=inside)
    np.minimum(inside, span, out=inside)
    c = np.subtract(v, inside, out=v)
    np.divide(inside, scale, out=r)
    np.rint(r, out=r)
    np.multiply(r, scale, out=tmp)
    e = np.subtract(inside, tmp, out=inside)
    np.multiply(r, scale**3 / 12.0, out=r)
    np.multiply(e, e, out=tmp)
    tmp *= e  # e^3
    c3 = np.multiply(c, c, out=e)
    c3 *= c
    c3 *= gamma
    tmp += c3
    tmp /= 3.0
    r += tmp
    return r


def _noise_antiderivative_reference(x, scale, gmin, span, gamma: float) -> np.ndarray:
    """`_noise_antiderivative` as one plain expression (what the in-place form must equal bit for bit)."""
    v = x - gmin
    inside = np.minimum(np.maximum(v, 0.0), span)
    c = v - inside
    r = np.rint(inside / scale)
    e = inside - r * scale
    return r * (scale**3 / 12.0) + (e * e * e + gamma * (c * c * c)) / 3.0


def _noise(hist: _Hist, tmin: np.ndarray, tmax: np.ndarray, spec: QuantSpec, gamma: float) -> np.ndarray:
    """Expected total noise (C, K) of the K candidate ranges per channel under the histogram.

    sum_j density_j * (G(edge_j+1) - G(edge_j)) is summed by parts as sum_i G(edge_i) * weight_i,
    one matrix product per block; blocks of ~1M elements keep the temporaries in cache.
    """
    channels, k = tmin.shape
    enc = compute_encoding(tmin.ravel(), tmax.ravel(), dataclasses.replace(spec, axis=None))
    scale = enc.scale.astype(np.float64).reshape(channels, k, 1)
    gmin = scale * enc.offset.reshape(channels, k, 1)
    span = scale * enc.qmax
    dens = np.pad(hist.density, ((0, 0), (1, 1)))
    weight = (dens[:, :-1] - dens[:, 1:])[:, :, None]  # (C, E, 1)
    edges = hist.edges[:, None, :]
    out = np.empty((channels, k))
    kb = max(1, min(k, _CHUNK // edges.shape[2]))
    cb = max(1, _CHUNK // (kb * edges.shape[2]))
    work = [np.empty(min(cb, channels) * kb * edges.shape[2]) for _ in range(4)]  # one block's temporaries
    for c in range(0, channels, cb):
        for j in range(0, k, kb):
            cs, ks = slice(c, c + cb), slice(j, j + kb)
            g = _noise_antiderivative(edges[cs], scale[cs, ks], gmin[cs, ks], span[cs, ks], gamma, work)
            out[cs, ks] = np.matmul(g, weight[cs])[..., 0]
    return out


def _noise_cells(hist: _Hist, tmin: np.ndarray, tmax: np.ndarray, spec: QuantSpec, gamma: float) -> np.ndarray:
    """`_noise` computed per grid cell instead of per histogram edge: for grids with fewer cells
    than the histogram has edges (8 bits: 256 against up to 2049), several times faster.

    With prefix moments M_k(y) = integral of density * x^k up to y (k = 0, 1, 2; exact, the
    density being constant inside each bin), a cell [a, b] around grid point g costs
    M2 - 2g M1 + g^2 M0 over [a, b], and summed by parts over the cells only M1 and M0 at the
    cell boundaries b_r = gmin + (r + 1/2) scale remain. The prefix sums cancel in the result
    (relative error ~ 1e-16 * 12 * qmax^2 * cells: 2e-8 at 8 bits), so _noise_best keeps this
    form to bit-widths up to 10."""
    channels, k = tmin.shape
    enc = compute_encoding(tmin.ravel(), tmax.ravel(), dataclasses.replace(spec, axis=None))
    scale = enc.scale.astype(np.float64).reshape(channels, k, 1)
    gmin = scale * enc.offset.reshape(channels, k, 1)
    gmax = gmin + scale * enc.qmax
    lo, width, mn, mx = (v[:, None, None] for v in (hist.lo, hist.width, hist.mn, hist.mx))
    bins = int(hist.grid[-1])
    # the uniform histogram again (kept bins; a run of empty bins has density 0), as flat tables
    real = np.diff(hist.grid) == 1
    density = np.zeros((channels, bins))
    density[:, hist.grid[:-1][real]] = hist.density[:, real]
    left = np.clip(hist.lo[:, None] + hist.width[:, None] * np.arange(bins + 1), hist.mn[:, None], hist.mx[:, None])
    a, b = left[:, :-1], left[:, 1:]
    mass = density * (b - a)
    prefix = [np.concatenate([np.zeros((channels, 1)), np.cumsum(p, axis=1)], axis=1)
              for p in (mass, mass * (a + b) / 2, mass * (a * a + a * b + b * b) / 3)]
    # inside bin u (clipped edges a..b), M0(y) = A0 + d y and M1(y) = A1 + d/2 y^2: one lookup each
    tables = [(prefix[0][:, :-1] - density * a).ravel(), density.ravel(),
              (prefix[1][:, :-1] - density * a * a / 2).ravel(), (density / 2).ravel()]
    flat_prefix = [p[:, :-1].ravel() for p in prefix]
    flat_density = density.ravel()
    base = (np.arange(channels) * bins)[:, None, None]

    def index_of(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        yc = np.clip(y, mn, mx)
        u = np.floor((yc - lo) / width)
        np.clip(u, 0, bins - 1, out=u)
        return yc, (u.astype(np.intp) + base).ravel()

    def boundary_moments(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """M0 and M1 at the cell boundaries y (C, kb, qmax): the hot path."""
        yc, index = index_of(y)
        a0, d0, a1, d1 = (np.take(t, index).reshape(y.shape) for t in tables)
        return a0 + d0 * yc, a1 + d1 * (yc * yc)

    def moments(y: np.ndarray) -> list[np.ndarray]:
        """M0, M1, M2 at the grid ends y (C, kb, 1), from the bin's left edge (no cancellation)."""
        yc, index = index_of(y)
        edge = np.maximum(lo + width * np.floor((yc - lo) / width).clip(0, bins - 1), mn)
        span = np.take(flat_density, index).reshape(y.shape) * (yc - edge)
        terms = (span, span * (yc + edge) / 2, span * (yc * yc + yc * edge + edge * edge) / 3)
        return [np.take(flat_prefix[o], index).reshape(y.shape) + terms[o] for o in range(3)]

    total = [p[:, -1:, None] for p in prefix]
    out = np.empty((channels, k))
    kb = max(1, min(k, _CELL_CHUNK // max(1, enc.qmax * channels)))
    for j in range(0, k, kb):
        ks = slice(j, j + kb)
        s, g0, g1 = scale[:, ks], gmin[:, ks], gmax[:, ks]
        b_r = g0 + (np.arange(enc.qmax) + 0.5) * s  # (C, kb, qmax) cell boundaries
        m0b, m1b = boundary_moments(b_r)
        m0l, m1l, m2l = moments(g0)
        m0h, m1h, m2h = moments(g1)
        inside = (m2h - m2l - 2 * (g1 * m1h - g0 * m1l - s * m1b.sum(-1, keepdims=True))
                  + g1 * g1 * m0h - g0 * g0 * m0l - 2 * s * (b_r * m0b).sum(-1, keepdims=True))
        below = m2l - 2 * g0 * m1l + g0 * g0 * m0l
        above = (total[2] - m2h) - 2 * g1 * (total[1] - m1h) + g1 * g1 * (total[0] - m0h)
        out[:, ks] = (inside + gamma * (below + above))[..., 0]
    return out


def _noise_best(hist: _Hist, tmin: np.ndarray, tmax: np.ndarray, spec: QuantSpec, gamma: float) -> np.ndarray:
    """`_noise` by whichever form costs less: per cell (at most 10 bits, fewer cells than edges)
    or per histogram edge."""
    cells = (1 << spec.bw) - 1
    if hist.grid is not None and spec.bw <= 10 and cells < hist.edges.shape[1]:
        return _noise_cells(hist, tmin, tmax, spec, gamma)
    return _noise(hist, tmin, tmax, spec, gamma)


def _search_range(hist: _Hist, spec: QuantSpec, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Coarse-to-fine search of the range minimising ``_noise``, vectorised over channels.

    Candidates shrink each end of the (zero-widened) data range by a fraction f = f_lo^t,
    t in [0, 1]: geometric spacing resolves ranges far below the extremes (which outliers call
    for) as well as those near them. f_lo is two histogram bins: narrower ranges cannot be judged
    from the histogram. Symmetric specs search one abs-max (64 steps), asymmetric ones a 16 x 16
    grid of (min, max) pairs; four zoom levels around the best then refine t 8- (17-point) or
    3-fold (7 x 7) each. The widest range comes first and only a strictly lower noise replaces
    it, so ties (e.g. constant data) keep the min-max range.
    """
    channels = hist.mn.shape[0]
    mn0, mx0 = np.minimum(hist.mn, 0.0), np.maximum(hist.mx, 0.0)
    if spec.symmetric:
        unsigned = spec.unsigned_symmetric and bool(np.all(mn0 >= 0))
        amax = mx0 if unsigned else np.maximum(-mn0, mx0)
        extents, coarse, fine = amax[:, None], 64, 17

        def to_range(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            hi = amax[:, None] * f[..., 0]
            return (np.zeros_like(hi) if unsigned else -hi), hi

    else:
        extents, coarse, fine = np.stack([-mn0, mx0], axis=1), 16, 7

        def to_range(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return mn0[:, None] * f[..., 0], mx0[:, None] * f[..., 1]

    ratio = 2.0 * hist.width[:, None] / np.maximum(extents, 1e-300)
    log_floor = np.log(np.clip(ratio, 1e-300, 1.0))  # (C, D), <= 0
    active = np.any(log_floor < 0, axis=0)
    rows = np.arange(channels)

    def grid(axes: list[np.ndarray]) -> np.ndarray:
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))

    def evaluate(t: np.ndarray) -> np.ndarray:
        return _noise_best(hist, *to_range(np.exp(t * log_floor[:, None, :])), spec, gamma)

    t = grid([np.linspace(0, 1, coarse) if a else np.zeros(1) for a in active])[None]
    t = np.broadcast_to(t, (channels,) + t.shape[1:])
    noise = evaluate(t)
    k = np.argmin(noise, axis=1)
    best_t, best = t[rows, k], noise[rows, k]
    half = np.where(active, 1.0 / (coarse - 1), 0.0)
    for _ in range(4):
        offsets = grid([np.linspace(-h, h, fine) if a else np.zeros(1) for h, a in zip(half, active)])
        t = np.clip(best_t[:, None, :] + offsets[None], 0.0, 1.0)
        noise = evaluate(t)
        k = np.argmin(noise, axis=1)
        better = noise[rows, k] < best
        best_t = np.where(better[:, None], t[rows, k], best_t)
        best = np.where(better, noise[rows, k], best)
        half = half * 2.0 / (fine - 1)
    tmin, tmax = to_range(np.exp(best_t * log_floor)[:, None, :])
    return tmin[:, 0], tmax[:, 0]
