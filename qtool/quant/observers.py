"""Range setting (AIMET white paper section 4.4): turn observed values into encodings.

Schemes (AIMET names in brackets):

* ``minmax`` (``tf``): the running min and max; never clips, so outliers cost rounding precision.
* ``sqnr`` (``tf_enhanced``): search the (min, max) range that minimises the expected quantization
  noise plus the clipping noise, the latter weighted by ``SQNR_GAMMA`` (AIMET: 3, qtool: 30), because
  clipping an outlier usually hurts a network more than the same squared error spread as rounding.
* ``mse``: the same search with both errors weighted equally (plain mean squared error).
* ``percentile``: the (100-p)-th and p-th percentiles (default p = 99.99).

Activations are calibrated batch by batch, so the histogram schemes keep a fixed-size streaming
histogram (memory does not grow with the number of batches). Its range starts as the first
batch's range; when later data falls outside, it grows by a power-of-two factor 2^m with the old
range placed at an integer multiple of its own width, so every old bin lies inside exactly one new
bin and merging is exact (no re-binning error). The price is bins at most ~4x wider than those of
a histogram of all data at once. The exact running min/max clip the outermost bins.

A candidate range's noise is the expectation under the histogram (values uniform inside each
bin) of the squared error of the *actual* grid ``compute_encoding`` would make (rounded offset,
float32 scale, strict/unsigned variants), integrated in closed form: unlike errors at bin centres
this stays exact when bins are wider than the quantization step (16 bit) or the data lies within
one step (4 bit, where rounding everything to zero costs x^2, not step^2/12).

Non-finite values (NaN, +-inf) are ignored: they carry no range information and one inf would
make every encoding useless. Inputs are cast to float32 first, as the model computes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qtool.quant.dyadic import DyadicHistogram
from qtool.quant.encoding import Encoding, QuantSpec, compute_encoding, encode_tensor, float_encoding
from qtool.quant.range_search import (  # noqa: F401  (_bin and _Hist: the tests use them)
    _bin, _check_percentile, _Hist, _initial_range, _make_hist, _percentile_range, _rebin, _rebin_many, _search_range)

SCHEMES = ("minmax", "sqnr", "percentile", "mse")
# Activations may also use "auto": calibrate computes all four from one histogram pass and keeps the
# one whose simulated model is closest to float (no scheme is best everywhere: see steps.scheme_choice).
ACTIVATION_SCHEMES = (*SCHEMES, "auto")
# Weight of the clipping noise against the rounding noise in the sqnr scheme. AIMET's tf_enhanced
# uses 3; on our real models a larger weight is never worse and often better (measured with
# histograms laid over each tensor's final range: PP-OCRv4 per-channel W8A8, 200 calibration
# lines: 91.9% characters at 3, 95.6% at 30, float 95.7%; PP-OCR cls per-tensor: 19.7 dB at 3,
# 21.2 dB at 30; EfficientNet-Lite0 per-channel: 13.9 dB at 3, 13.7 dB at 30), so 30 is the
# default and --sqnr-gamma 3 gives AIMET's behaviour.
SQNR_GAMMA = 30.0
_PARAM_MAX_BINS = 512  # per-channel parameter histograms (AIMET uses 512 bins)


class Observer:
    """Collects statistics of one tensor over calibration batches, then yields its encoding."""

    def update(self, x: np.ndarray) -> None:  # one batch, any shape
        raise NotImplementedError

    def compute(self, spec: QuantSpec) -> Encoding:  # per-tensor encoding from all seen so far
        raise NotImplementedError

    @property
    def seen(self) -> bool:  # whether any finite value has been observed
        raise NotImplementedError

    def _check(self, spec: QuantSpec) -> None:
        if not self.seen:
            raise ValueError(f"{type(self).__name__} has seen no finite data; cannot compute an encoding")
        if spec.axis is not None:
            raise ValueError("observers give per-tensor encodings; use encode_param for per-channel ones")


def _finite(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The finite values of x (float32, flat) with their min and max.

    The common all-finite case costs one min and one max pass; only when either is not finite
    (NaN propagates through min/max) are the non-finite values filtered out.
    """
    x = np.asarray(x, np.float32).ravel()
    if x.size == 0:
        return x, math.inf, -math.inf
    lo, hi = float(x.min()), float(x.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return x, lo, hi
    x = x[np.isfinite(x)]
    if x.size == 0:
        return x, math.inf, -math.inf
    return x, float(x.min()), float(x.max())


def _bin_flat(values: np.ndarray, lo: float, width: float, bins: int) -> np.ndarray:
    """Histogram of a flat float32 array: the per-batch hot path, kept in float32 and intp.

    float32 resolves a bin only when the bin is much wider than float32's spacing at the data's
    magnitude; narrow histograms far from zero (e.g. values near 100 spanning 0.01) use float64.
    """
    magnitude = max(abs(lo), abs(lo + bins * width))
    if width < magnitude * 1e-4:
        return _bin(values.astype(np.float64)[None], np.array([lo]), np.array([width]), bins)[0]
    scaled = (values - np.float32(lo)) * np.float32(1.0 / width)
    np.clip(scaled, 0, bins - 1, out=scaled)
    return np.bincount(scaled.astype(np.intp), minlength=bins)[:bins].astype(np.float64)


class MinMaxObserver(Observer):
    """Running min/max (AIMET ``tf``); identical to ``encode_tensor`` on the concatenated batches."""

    def __init__(self) -> None:
        self._min: float | None = None
        self._max: float | None = None

    @property
    def seen(self) -> bool:
        return self._min is not None

    def update(self, x: np.ndarray) -> None:
        x, lo, hi = _finite(x)
        if x.size == 0:
            return
        self._min = lo if self._min is None else min(self._min, lo)
        self._max = hi if self._max is None else max(self._max, hi)

    def compute(self, spec: QuantSpec) -> Encoding:
        self._check(spec)
        return compute_encoding(self._min, self._max, spec)


class HistogramObserver(Observer):
    """Fixed-size streaming histogram; subclasses choose the range from it (see module docstring)."""

    def __init__(self, num_bins: int = 2048, oversample: int = 1) -> None:
        if num_bins < 8:
            raise ValueError(f"num_bins must be at least 8, not {num_bins}")
        self.num_bins = int(num_bins)
        self._counts = np.zeros(self.num_bins, np.float64)
        # oversample > 1: stream an order-free dyadic histogram of num_bins * oversample bins
        # (qtool.quant.dyadic), re-binned onto num_bins bins over the exact range at the end
        self._dyadic = DyadicHistogram(self.num_bins * oversample) if oversample > 1 else None
        self._lo = 0.0  # left edge of bin 0
        self._width = 0.0  # bin width
        self._min = math.inf  # exact running min / max of the finite data
        self._max = -math.inf
        self._preset = False

    def preset_range(self, low: float, high: float) -> None:
        """Lay the bins over a range known in advance (a min-max pass before this one), so that
        the histogram never grows: its resolution then does not depend on which batch came first."""
        lo, hi = _initial_range(np.array([float(low)]), np.array([float(high)]))
        self._lo, self._width = float(lo[0]), float(hi[0] - lo[0]) / self.num_bins
        self._preset = True

    @property
    def seen(self) -> bool:
        return self._min <= self._max

    @property
    def bin_width(self) -> float:
        """Current bin width: the resolution of the histogram-based ranges."""
        return self._width

    def update(self, x: np.ndarray, weight: int = 1) -> None:
        """Add the values of `x`, each counted `weight` times (a sample standing for more)."""
        x, bmin, bmax = _finite(x)
        if x.size == 0:
            return
        if self._dyadic is not None:
            self._dyadic.fit(min(self._min, bmin), max(self._max, bmax))
            self._dyadic.add(x, weight)
        elif not self.seen and not self._preset:
            lo, hi = _initial_range(np.array([bmin]), np.array([bmax]))
            self._lo, self._width = float(lo[0]), float(hi[0] - lo[0]) / self.num_bins
        else:
            self._grow(bmin, bmax)
        if self._dyadic is None:
            counts = _bin_flat(x, self._lo, self._width, self.num_bins)
            self._counts += counts if weight == 1 else counts * float(weight)
        self._min, self._max = min(self._min, bmin), max(self._max, bmax)

    def _grow(self, xmin: float, xmax: float) -> None:
        """Widen the range 2^m-fold so that it covers [xmin, xmax]; old bins merge exactly."""
        bins, lo = self.num_bins, self._lo
        span = bins * self._width
        if xmin >= lo and xmax <= lo + span:
            return
        need = max(xmax, lo + span) - min(xmin, lo)
        m = max(1, math.ceil(math.log2(need / span)))
        while True:  # new lo = lo - k * span, 0 <= k < 2^m, must reach xmin; new hi must reach xmax
            k_min = max(0, math.ceil((lo - xmin) / span))
            k_max = min(2**m - 1, math.floor(2**m - (xmax - lo) / span))
            if k_min <= k_max:
                break
            m += 1
        k, factor = (k_min + k_max) // 2, 1 << m
        i = np.arange(bins, dtype=np.int64)
        if factor <= bins:
            target = (k * bins + i) // factor
        else:  # at most one carry: avoids int64 overflow for huge growth factors
            q0, r = divmod(k * bins, factor)
            target = q0 + (i >= min(factor - r, bins)).astype(np.int64)
        self._counts = np.bincount(target, weights=self._counts, minlength=bins).astype(np.float64)
        self._lo = lo - k * span
        self._width *= float(factor)

    def merge(self, other: HistogramObserver) -> None:
        """Add the data `other` saw. Exact when both were preset to the same range (calibrate
        does that); a grid that grew past it is re-binned by bin centres, which is exact as well
        when it grew from the same preset grid (its bins are aligned unions of the preset ones)."""
        if not other.seen:
            return
        if self._dyadic is not None and other._dyadic is not None:  # exact, whatever the grids
            self._dyadic.merge(other._dyadic, min(self._min, other._min), max(self._max, other._max))
            self._min, self._max = min(self._min, other._min), max(self._max, other._max)
            return
        bins = self.num_bins
        if not self.seen and not self._preset:
            self._lo, self._width = other._lo, other._width
        counts = other._counts
        if (other._lo, other._width) != (self._lo, self._width):
            if other._width > self._width or other._lo < self._lo or \
                    other._lo + bins * other._width > self._lo + bins * self._width:
                self._grow(other._lo, other._lo + bins * other._width)
            centres = other._lo + (np.arange(bins) + 0.5) * other._width
            target = np.clip(np.floor((centres - self._lo) / self._width), 0, bins - 1).astype(np.int64)
            counts = np.bincount(target, weights=counts, minlength=bins)
        self._counts = self._counts + counts
        self._min, self._max = min(self._min, other._min), max(self._max, other._max)

    def _hist(self) -> _Hist:
        """The histogram the ranges are chosen from: a streamed dyadic one is re-binned onto
        `num_bins` bins laid over the exact data range, as a histogram preset to that range would
        have them (values spread evenly inside each streamed bin)."""
        one = lambda v: np.array([v], np.float64)  # noqa: E731
        counts, lo, width = self._binned()
        return _make_hist(counts[None], one(lo), one(width), one(self._min), one(self._max))

    def _binned(self) -> tuple[np.ndarray, float, float]:
        """(counts, lo, width) of the num_bins bins the ranges are chosen from."""
        if self._dyadic is None:
            return self._counts, self._lo, self._width
        d = self._dyadic
        d.flush()
        return _rebin(d.counts, d.lo, d.width, self._min, self._max, self.num_bins)

    def _range(self, hist: _Hist, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def compute(self, spec: QuantSpec) -> Encoding:
        self._check(spec)
        if spec.dtype == "float":
            return float_encoding(spec.bw)
        tmin, tmax = self._range(self._hist(), spec)
        return compute_encoding(tmin[0], tmax[0], spec)

    def compute_as(self, scheme: str, spec: QuantSpec, *, percentile: float = 99.99,
                   sqnr_gamma: float = SQNR_GAMMA) -> Encoding:
        """The encoding `scheme` gives on the data seen: one histogram serves every scheme
        (minmax from the exact running min/max), which is what lets calibrate try them all."""
        _check_scheme(scheme)
        self._check(spec)
        if spec.dtype == "float":
            return float_encoding(spec.bw)
        if scheme == "minmax":
            return compute_encoding(self._min, self._max, spec)
        hist = self._hist()
        if scheme == "percentile":
            tmin, tmax = _percentile_range(hist, _check_percentile(percentile))
        else:
            tmin, tmax = _search_range(hist, spec, sqnr_gamma if scheme == "sqnr" else 1.0)
        return compute_encoding(tmin[0], tmax[0], spec)


class PercentileObserver(HistogramObserver):
    """Range = the (100-p)-th .. p-th percentile, interpolated linearly inside the histogram bin."""

    def __init__(self, percentile: float = 99.99, num_bins: int = 2048, oversample: int = 1) -> None:
        super().__init__(num_bins, oversample)
        self.percentile = _check_percentile(percentile)

    def _range(self, hist: _Hist, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
        return _percentile_range(hist, self.percentile)


class NoiseObserver(HistogramObserver):
    """Range minimising rounding noise + gamma * clipping noise: ``sqnr`` (gamma 3) or ``mse`` (1)."""

    def __init__(self, gamma: float = SQNR_GAMMA, num_bins: int = 2048, oversample: int = 1) -> None:
        super().__init__(num_bins, oversample)
        self.gamma = float(gamma)

    def _range(self, hist: _Hist, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
        return _search_range(hist, spec, self.gamma)


def compute_all(observers: dict[str, Observer], specs: dict[str, QuantSpec], scheme: str | None = None, *,
                percentile: float = 99.99, sqnr_gamma: float = SQNR_GAMMA) -> dict[str, Encoding]:
    """Each observer's encoding for its spec: its own scheme (`scheme` None), or `scheme` as
    compute_as gives it. The histograms of one spec and scheme are searched in one vectorized
    call (channel c = observer c), the same numbers as one call each without the per-call cost
    (PP-OCRv4: ~100 tensors, 5 search levels of ~20 numpy calls each); an observer shared by
    several names is searched once."""
    found: dict[str, Encoding] = {}
    groups: dict[tuple, list[str]] = {}
    for name, observer in observers.items():
        spec = specs[name]
        if isinstance(observer, HistogramObserver) and observer.seen and spec.dtype != "float" \
                and spec.axis is None and (scheme or "") != "minmax":
            kind = scheme or ("percentile" if isinstance(observer, PercentileObserver) else "noise")
            value = (observer.percentile if scheme is None else percentile) if kind == "percentile" else \
                (observer.gamma if scheme is None and isinstance(observer, NoiseObserver)
                 else sqnr_gamma if kind == "sqnr" else 1.0)
            kind = "percentile" if kind == "percentile" else "noise"
            alone = kind == "noise" and spec.bw > 10  # searched per edge: each keeps its own empty runs out
            groups.setdefault((kind, value, spec, id(observer) if alone else 0), []).append(name)
        else:
            found[name] = observer.compute(spec) if scheme is None else observer.compute_as(
                scheme, spec, percentile=percentile, sqnr_gamma=sqnr_gamma)
    for (kind, value, spec, _), names in groups.items():
        unique = list({id(observers[n]): observers[n] for n in names}.values())
        counts, lo, width = _binned_all(unique)
        hist = _make_hist(counts, lo, width, *(np.array(v, np.float64) for v in (
            [o._min for o in unique], [o._max for o in unique])))
        tmin, tmax = (_percentile_range(hist, _check_percentile(value)) if kind == "percentile"
                      else _search_range(hist, spec, value))
        row = {id(o): i for i, o in enumerate(unique)}
        for name in names:
            i = row[id(observers[name])]
            found[name] = compute_encoding(tmin[i], tmax[i], spec)
    return {name: found[name] for name in observers}


def _binned_all(observers: list[HistogramObserver]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts (C, bins), lo, width) of each observer's `_binned`: streamed dyadic histograms of
    one size are re-binned in one vectorized call."""
    if any(o._dyadic is None for o in observers) or len({(o._dyadic.bins, o.num_bins) for o in observers}) > 1:
        binned = [o._binned() for o in observers]
        return np.stack([b[0] for b in binned]), *(np.array([b[i] for b in binned], np.float64) for i in (1, 2))
    for o in observers:
        o._dyadic.flush()
    return _rebin_many(np.stack([o._dyadic.counts for o in observers]), *(np.array(v, np.float64) for v in zip(
        *((o._dyadic.lo, o._dyadic.width, o._min, o._max) for o in observers))), observers[0].num_bins)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown range-setting scheme {scheme!r}; expected one of {SCHEMES}")


def make_observer(scheme: str, *, percentile: float = 99.99, num_bins: int = 2048,
                  sqnr_gamma: float = SQNR_GAMMA, oversample: int = 1) -> Observer:
    """A fresh observer for one of ``SCHEMES``; `oversample` > 1 streams a finer histogram that
    grows as data comes (no range known in advance) and is re-binned at the end."""
    _check_scheme(scheme)
    if scheme == "minmax":
        return MinMaxObserver()
    if scheme == "percentile":
        return PercentileObserver(percentile, num_bins, oversample)
    return NoiseObserver(sqnr_gamma if scheme == "sqnr" else 1.0, num_bins, oversample)


def encode_param(
    values: np.ndarray, spec: QuantSpec, scheme: str = "minmax", *, percentile: float = 99.99
) -> Encoding:
    """Encoding of a parameter tensor straight from its values, per tensor or per ``spec.axis``.

    ``minmax`` is ``encode_tensor`` (non-finite values replaced by zero, which the zero-widened
    range contains anyway). The histogram schemes build one histogram per channel over that
    channel's own range (a single bincount with per-channel offsets), n // 4 bins for n values
    per channel (16 to 512, bounding the search cost), and search all channels at once.
    """
    _check_scheme(scheme)
    percentile = _check_percentile(percentile)
    values = np.asarray(values, np.float32)
    finite = np.isfinite(values)
    if scheme == "minmax" or spec.dtype == "float":
        return encode_tensor(values if finite.all() else np.where(finite, values, np.float32(0)), spec)
    if spec.axis is None or values.ndim == 0:
        rows = values.reshape(1, -1)
    else:
        axis = spec.axis % values.ndim
        spec = dataclasses.replace(spec, axis=axis)
        rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    rows = rows.astype(np.float64)
    finite = np.isfinite(rows)
    has = finite.any(axis=1)
    mn = np.where(has, np.where(finite, rows, np.inf).min(axis=1, initial=np.inf), 0.0)
    mx = np.where(has, np.where(finite, rows, -np.inf).max(axis=1, initial=-np.inf), 0.0)
    bins = int(np.clip(rows.shape[1] // 4, 16, _PARAM_MAX_BINS))
    lo, hi = _initial_range(mn, mx)
    width = (hi - lo) / bins
    counts = _bin(np.where(finite, rows, lo[:, None]), lo, width, bins, weights=finite.astype(np.float64))
    hist = _make_hist(counts, lo, width, mn, mx)
    if scheme == "percentile":
        tmin, tmax = _percentile_range(hist, percentile)
    else:
        tmin, tmax = _search_range(hist, spec, SQNR_GAMMA if scheme == "sqnr" else 1.0)
    return compute_encoding(tmin, tmax, spec)
