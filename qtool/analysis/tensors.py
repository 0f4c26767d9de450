"""Per-tensor views of the debugging flow: per-layer SQNR and statistics of the worst tensors.

Both stream over the cached evaluation batches with taps on the intermediate tensors, a few
samples at a time, so memory is bounded by one small batch of activations.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from qtool.analysis.switchable import SwitchableModel
from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.graph import value_by_name
from qtool.metrics.comparison import sqnr_db
from qtool.plan.build import param_axis
from qtool.runtime.sessions import make_session, with_taps

TAP_BATCH = 4
BINS = 64


def _small_batches(batches: Iterable[dict[str, np.ndarray]]) -> Iterable[dict[str, np.ndarray]]:
    for batch in batches:
        count = len(next(iter(batch.values())))
        for start in range(0, count, TAP_BATCH):
            yield {k: v[start:start + TAP_BATCH] for k, v in batch.items()}


def _channel_axis(ndim: int) -> int | None:
    return 1 if ndim == 4 else (ndim - 1 if ndim >= 2 else None)


def activation_views(float_model: ir.Model, switchable: SwitchableModel, batches: list[dict[str, np.ndarray]],
                     names: list[str], histogram_ranges: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """Per activation: SQNR of the fully quantized model's tensor (after its quantizer) against the
    float model's, min/max and, for the tensors of `histogram_ranges` (name -> encoding range), a
    histogram, per-channel ranges and the fraction of values the encoding clips."""
    float_session = make_session(with_taps(float_model, names), optimize=False)
    quant_names = [switchable.quantized_values[n] for n in names]
    quant_session = make_session(with_taps(switchable.model, quant_names), optimize=False)
    feeds_on = switchable.feeds(default=1)
    stats = {n: {"signal": 0.0, "noise": 0.0, "min": np.inf, "max": -np.inf} for n in names}
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names if n in histogram_ranges}
    for batch in _small_batches(batches):
        ref = dict(zip(names, float_session.run(names, batch)))
        quant = dict(zip(names, quant_session.run(quant_names, {**batch, **feeds_on})))
        for name in names:
            r = ref[name].astype(np.float64)
            s = stats[name]
            s["signal"] += float(np.sum(r * r))
            s["noise"] += float(np.sum((r - quant[name]) ** 2))
            if r.size:
                s["min"], s["max"] = min(s["min"], float(r.min())), max(s["max"], float(r.max()))
            if name in kept:
                kept[name].append(ref[name])
    views = {}
    for name in names:
        s = stats[name]
        views[name] = {"sqnr_db": float(min(sqnr_db(s["signal"], s["noise"]), 300.0)),
                       "min": s["min"], "max": s["max"]}
        if name in kept and kept[name]:
            values, axis = _channels_first(kept[name])
            views[name].update(_distribution(values, axis))
            views[name]["outlier_ratio"] = outlier_ratio(values, *histogram_ranges[name])
    return views


def _channels_first(parts: list[np.ndarray]) -> tuple[np.ndarray, int | None]:
    """The kept batches of one tensor as one array: (channels, values) with its channel axis
    first, or flat without one. Batches may differ in their other dims (a sequence's length),
    so they are never concatenated as they are."""
    axis = _channel_axis(parts[0].ndim)
    if axis is None or any(p.ndim != parts[0].ndim or p.shape[axis] != parts[0].shape[axis] for p in parts):
        return np.concatenate([p.ravel() for p in parts]), None
    return np.concatenate([np.moveaxis(p, axis, 0).reshape(p.shape[axis], -1) for p in parts], axis=1), 0


def _distribution(values: np.ndarray, axis: int | None) -> dict:
    """Histogram over the observed range and per-channel min/max (channel axis `axis`). In float64:
    a float32 range such as an attention mask's [-3.4e38, 10] has no 64 distinct float32 edges."""
    finite = values[np.isfinite(values)].astype(np.float64)
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if high <= low:  # one value: a bin around it (low + 1.0 is low itself at 3.4e38)
        high = low + max(1.0, abs(low) * 1e-3)
    counts, edges = np.histogram(finite, bins=BINS, range=(low, high))
    view = {"histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}
    if axis is not None and values.ndim > axis:
        moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        view["channel_min"] = [float(v) for v in moved.min(axis=1)]
        view["channel_max"] = [float(v) for v in moved.max(axis=1)]
    return view


def outlier_ratio(values: np.ndarray, low: float, high: float) -> float:
    """Fraction of values outside [low, high] (clip_bounds: clipped by more than half a step)."""
    return float(np.mean((values < low) | (values > high))) if values.size else 0.0


def param_view(model: ir.Model, name: str, bounds: tuple[float, float] | None) -> dict:
    """Min/max, histogram, per-output-channel ranges and clipped fraction of a weight tensor."""
    value = value_by_name(model)[name]
    weights = value.const_value.numpy().astype(np.float32)
    view = {"min": float(weights.min(initial=0.0)), "max": float(weights.max(initial=0.0))}
    axis = param_axis(value, default=None)
    view.update(_distribution(weights, axis if weights.ndim >= 2 else None))
    if bounds is not None:
        view["outlier_ratio"] = outlier_ratio(weights, *bounds)
    return view


def encoding_range(encodings: EncodingSet, name: str) -> tuple[float, float] | None:
    """The widest range the tensor's encoding represents (over channels); None for float ones."""
    enc = encodings.params.get(name) or encodings.activations.get(name)
    if enc is None or enc.is_float:
        return None
    return float(enc.min.min()), float(enc.max.max())


def clip_bounds(encodings: EncodingSet, name: str) -> tuple[float, float] | None:
    """The range widened by half a step: a value beyond it is clipped by more than rounding
    would move it (values at the very edge, e.g. hard-swish's -0.375 against a grid point at
    -0.3735, are not outliers)."""
    bounds = encoding_range(encodings, name)
    if bounds is None:
        return None
    enc = encodings.params.get(name) or encodings.activations.get(name)
    half_step = float(enc.scale.max()) / 2.0
    return bounds[0] - half_step, bounds[1] + half_step


def statistic(encodings: EncodingSet, name: str, kind: str, node: str, view: dict) -> dict:
    """One row of the report's statistics: observed range, encoding range, outliers, distribution."""
    enc = (encodings.params if kind == "param" else encodings.activations)[name]
    row = {"tensor": name, "kind": kind, "node": node, "bitwidth": enc.bw,
           "min": view.get("min"), "max": view.get("max")}
    bounds = encoding_range(encodings, name)
    if bounds is not None:
        row["encoding_min"], row["encoding_max"] = bounds
    for key in ("outlier_ratio", "histogram", "channel_min", "channel_max"):
        if key in view:
            row[key] = view[key]
    return row
