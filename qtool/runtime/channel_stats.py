"""Per-channel statistics of intermediate tensors (max, min, mean square), streamed.

Noise-aware equalization needs, for each tensor that joins two layers, how wide and how strong
each channel is. Three reductions per tensor run inside onnxruntime (ReduceMax, ReduceMin,
ReduceSumSquare over every axis but the channel axis), so only channel-sized vectors leave the
session and memory does not grow with the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.progress import Progress, no_progress
from qtool.runtime.sessions import make_session, max_batch, run_batches, with_reduce_taps


@dataclass(frozen=True)
class ChannelStats:
    high: np.ndarray  # per-channel max
    low: np.ndarray  # per-channel min
    power: np.ndarray  # per-channel mean of x^2

    def scaled(self, s: np.ndarray) -> ChannelStats:
        """The statistics of x / s (channel c divided by s_c, s > 0): exact, no new pass needed."""
        return ChannelStats(self.high / s, self.low / s, self.power / (s * s))


@dataclass(frozen=True)
class ChannelTap:
    tensor: str
    axis: int  # the channel axis
    rank: int


def _inner_axes(tap: ChannelTap) -> list[int]:
    """The axes onnxruntime reduces: those after the channel axis (contiguous, reduced in
    parallel per sample and channel; reducing across the batch axis as well runs several times
    slower), or, for a channel-last tensor, those before it."""
    axis = tap.axis % tap.rank
    return list(range(axis + 1, tap.rank)) or list(range(axis))


def channel_statistics(model: ir.Model, taps: list[ChannelTap], batches: Iterable[dict[str, np.ndarray]],
                       *, total: int | None = None, progress: Progress = no_progress) -> dict[str, ChannelStats]:
    """tensor name -> ChannelStats over every sample of `batches` (one float pass)."""
    inputs = {value.name: value for value in model.graph.inputs}
    reduce = {}
    for tap in taps:
        if tap.tensor in inputs:
            continue  # graph inputs come with the feeds; reduced here in numpy
        axes = _inner_axes(tap)
        for op in ("ReduceMax", "ReduceMin", "ReduceSumSquare", "Shape"):
            reduce[f"{tap.tensor}\0{op}"] = (tap.tensor, op, axes)
    tapped, outputs = with_reduce_taps(model, reduce)
    session = make_session(tapped)
    high: dict[str, np.ndarray] = {}
    low: dict[str, np.ndarray] = {}
    energy: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    seen = 0
    for feeds, result in run_batches(session, batches, list(outputs.values()) or None, max_batch(model)):
        for tap in taps:
            if tap.tensor in inputs:
                x = np.moveaxis(feeds[tap.tensor].astype(np.float64), tap.axis, 0).reshape(
                    feeds[tap.tensor].shape[tap.axis], -1)
                hi, lo, sq, count = x.max(axis=1), x.min(axis=1), (x * x).sum(axis=1), x.shape[1]
            else:
                hi, lo, sq = (result[outputs[f"{tap.tensor}\0{op}"]].astype(np.float64)
                              for op in ("ReduceMax", "ReduceMin", "ReduceSumSquare"))
                shape = result[outputs[f"{tap.tensor}\0Shape"]]
                channels = int(shape[tap.axis])
                # what onnxruntime left (the axes before the channel) is finished here
                hi, lo = hi.reshape(-1, channels).max(axis=0), lo.reshape(-1, channels).min(axis=0)
                sq = sq.reshape(-1, channels).sum(axis=0)
                count = int(np.prod(shape)) // max(channels, 1)
            high[tap.tensor] = np.maximum(high[tap.tensor], hi) if tap.tensor in high else hi
            low[tap.tensor] = np.minimum(low[tap.tensor], lo) if tap.tensor in low else lo
            energy[tap.tensor] = energy.get(tap.tensor, 0.0) + sq
            counts[tap.tensor] = counts.get(tap.tensor, 0) + count
        seen += len(next(iter(feeds.values())))
        progress(seen, total)
    if seen == 0:
        raise QtoolError("the data holds no samples")
    return {name: ChannelStats(high[name], low[name], energy[name] / max(counts[name], 1)) for name in high}
