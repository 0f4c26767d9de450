"""Quality of a quantized model against its float reference, accumulated batch by batch.

SQNR (dB) = 10 log10(sum(ref^2) / sum((ref - quant)^2)), summed over the whole set, per output.
Top-1 agreement: fraction of samples whose arg-max over the last axis is the same, for outputs
shaped like classifier scores (N x C with C > 1). Accuracy: arg-max against integer labels.

Worst-channel SQNR: the same ratio per channel (signal and noise power summed over every axis
but the channel axis, qtool.metrics.channels says which), and the lowest over the channels. A
pooled figure is dominated by the output's largest part; a part that quantization killed (class
probabilities sharing one grid with box pixels) shows only per channel. Conventions:
* a channel whose float values are all zero has no SQNR: left out of the minimum; if its
  quantized values are not all zero it is counted in `silent_noisy_channels`;
* an exact channel (no noise) counts as SQNR_CAP_DB, so reports stay strict JSON;
* the accumulators are per channel, so they add across batches whose other dims differ; when
  the channel count itself differs between batches the output is reported pooled only, with
  `channel_note` saying why (and `worst_channel_sqnr_db` null).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qtool.errors import QtoolError

SQNR_CAP_DB = 300.0  # an exact channel's SQNR in reports: finite, so JSON stays strict
NEAR_WORST_DB = 3.0  # channels within this of the worst are named with it


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """Signal-to-quantization-noise ratio; inf when the outputs are identical."""
    if noise_power <= 0:
        return float("inf")
    if signal_power <= 0:
        return float("-inf")
    return float(10.0 * np.log10(signal_power / noise_power))


def channel_powers(ref: np.ndarray, quant: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel along `axis`: (sum of ref^2, sum of (ref - quant)^2) over every other axis."""
    ref64 = ref.astype(np.float64)
    diff = ref64 - quant.astype(np.float64)
    others = tuple(i for i in range(ref.ndim) if i != axis)
    return np.sum(ref64 * ref64, axis=others), np.sum(diff * diff, axis=others)


def channel_sqnr_db(signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Per-channel SQNR in dB, capped at SQNR_CAP_DB; NaN where the float signal is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10.0 * np.log10(signal / noise)
    return np.where(signal > 0, np.minimum(np.where(noise > 0, db, SQNR_CAP_DB), SQNR_CAP_DB), np.nan)


def worst_channels(signal: np.ndarray, noise: np.ndarray, axis: int) -> dict:
    """The worst channel's SQNR and the contiguous run of channels within NEAR_WORST_DB of it.

    Keys: worst_channel_sqnr_db (None when no channel has float signal), worst_channels
    {axis, channels, worst, first, last, within_3db}, and silent_noisy_channels when some channel
    is zero in float but not quantized (no SQNR, left out of the minimum)."""
    db = channel_sqnr_db(signal, noise)
    row: dict = {}
    silent_noisy = int(np.sum((signal <= 0) & (noise > 0)))
    if silent_noisy:
        row["silent_noisy_channels"] = silent_noisy
    measured = ~np.isnan(db)
    if not measured.any():
        return {"worst_channel_sqnr_db": None, "channel_note": "no channel has float signal", **row}
    ranked = np.where(measured, db, np.inf)
    worst = int(np.argmin(ranked))
    near = ranked <= ranked[worst] + NEAR_WORST_DB
    breaks = np.flatnonzero(~near)
    first = int(breaks[breaks < worst].max(initial=-1)) + 1
    last = int(breaks[breaks > worst].min(initial=len(near))) - 1
    row["worst_channel_sqnr_db"] = round(float(ranked[worst]), 3)
    row["worst_channels"] = {"axis": axis, "channels": len(near), "worst": worst, "first": first, "last": last,
                             "within_3db": int(near.sum())}
    return row


def is_classifier_output(shape: tuple[int, ...]) -> bool:
    """N x C scores (C > 1), possibly with singleton dims (N x C x 1 x 1)."""
    dims = [d for d in shape[1:] if d != 1]
    return len(dims) == 1 and dims[0] > 1


@dataclass
class OutputStats:
    signal: float = 0.0
    noise: float = 0.0
    max_abs_error: float = 0.0
    agree: int = 0
    correct_float: int = 0
    correct_quant: int = 0
    classifier: bool = False
    samples: int = 0
    decisions: int = 0  # positions compared by `Comparison.decisions`
    decisions_agree: int = 0
    channel_axis: int | None = None  # non-negative; None: no channels (rank < 2, or axis none)
    channel_signal: np.ndarray | None = None
    channel_noise: np.ndarray | None = None
    channel_note: str | None = None  # why the output is reported pooled only


@dataclass
class Comparison:
    """Streaming float-vs-quantized comparison over named outputs."""

    outputs: dict[str, OutputStats] = field(default_factory=dict)
    labels: np.ndarray | None = None
    # output name -> the decisions its values make (e.g. argmax over a softmax axis, per position)
    decisions: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    # output name -> its channel axis (qtool.metrics.channels; None: pooled only); outputs not
    # named here use axis 1 when they have one
    channel_axes: dict[str, int | None] = field(default_factory=dict)

    def update(self, name: str, ref: np.ndarray, quant: np.ndarray, indices: np.ndarray | None = None) -> None:
        """Add one batch; `indices` are its samples' positions in the data (labels are looked up
        by them: batching by shape reorders samples), by default the ones after the last batch."""
        stats = self.outputs.setdefault(name, OutputStats())
        ref64 = ref.astype(np.float64)
        diff = ref64 - quant.astype(np.float64)
        stats.signal += float(np.sum(ref64 * ref64))
        stats.noise += float(np.sum(diff * diff))
        self._update_channels(name, stats, ref, quant)
        stats.max_abs_error = max(stats.max_abs_error, float(np.max(np.abs(diff), initial=0.0)))
        if is_classifier_output(ref.shape):
            stats.classifier = True
            ref_top = ref.reshape(len(ref), -1).argmax(axis=1)
            quant_top = quant.reshape(len(quant), -1).argmax(axis=1)
            stats.agree += int(np.sum(ref_top == quant_top))
            if self.labels is not None:
                truth = _labels_at(self.labels, np.arange(stats.samples, stats.samples + len(ref))
                                   if indices is None else indices)
                stats.correct_float += int(np.sum(ref_top == truth))
                stats.correct_quant += int(np.sum(quant_top == truth))
        if name in self.decisions:
            agree = self.decisions[name](ref) == self.decisions[name](quant)
            stats.decisions += int(agree.size)
            stats.decisions_agree += int(np.sum(agree))
        stats.samples += len(ref)

    def _update_channels(self, name: str, stats: OutputStats, ref: np.ndarray, quant: np.ndarray) -> None:
        """Add this batch's per-channel powers; on a channel count that changes, pooled only."""
        if stats.channel_note is not None:
            return
        axis = self.channel_axes.get(name, 1)
        if axis is None or ref.ndim < 2:
            return
        if not -ref.ndim <= axis < ref.ndim or axis % ref.ndim == 0:
            stats.channel_note = f"pooled only: axis {axis} is not a channel axis of a rank-{ref.ndim} output"
            stats.channel_signal = stats.channel_noise = None
            return
        axis %= ref.ndim
        signal, noise = channel_powers(ref, quant, axis)
        if stats.channel_signal is None and stats.channel_axis is None:
            stats.channel_axis, stats.channel_signal, stats.channel_noise = axis, signal, noise
        elif axis != stats.channel_axis or len(signal) != len(stats.channel_signal):
            stats.channel_note = (f"pooled only: {len(stats.channel_signal)} channels on axis {stats.channel_axis} "
                                  f"in one batch, {len(signal)} on axis {axis} in another")
            stats.channel_signal = stats.channel_noise = None
        else:
            stats.channel_signal += signal
            stats.channel_noise += noise

    def report(self) -> dict[str, dict[str, float]]:
        """Per output: sqnr_db, max_abs_error, and top1_agreement / accuracy where they apply."""
        out = {}
        for name, s in self.outputs.items():
            row: dict[str, float] = {"sqnr_db": round(sqnr_db(s.signal, s.noise), 3),
                                     "max_abs_error": float(f"{s.max_abs_error:.6g}"), "samples": s.samples}
            if s.classifier and s.samples:
                row["top1_agreement"] = round(s.agree / s.samples, 6)
                if self.labels is not None:
                    row["float_accuracy"] = round(s.correct_float / s.samples, 6)
                    row["quant_accuracy"] = round(s.correct_quant / s.samples, 6)
            if s.decisions:
                row["decision_agreement"] = round(s.decisions_agree / s.decisions, 6)
            if s.channel_note is not None:
                row.update(worst_channel_sqnr_db=None, channel_note=s.channel_note)
            elif s.channel_signal is not None:
                row.update(worst_channels(s.channel_signal, s.channel_noise, s.channel_axis))
            out[name] = row
        return out


def _labels_at(labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    if len(indices) and int(indices.max()) >= len(labels):
        raise QtoolError(f"{len(labels)} labels for more samples than that (sample {int(indices.max()) + 1})",
                         "give one label per sample, in the data's order")
    return labels[indices]


def describe_metrics(row: dict) -> str:
    """One line of simulate's per-output metrics, for people."""
    parts = [f"SQNR {row['sqnr_db']:.2f} dB"]
    if row.get("worst_channel_sqnr_db") is not None:
        parts.append(f"worst channel {row['worst_channel_sqnr_db']:.2f} dB: {describe_channels(row['worst_channels'])}")
    elif row.get("channel_note"):
        parts.append(f"worst channel not measured ({row['channel_note']})")
    if row.get("silent_noisy_channels"):
        parts.append(f"{row['silent_noisy_channels']} channels zero in float but not quantized")
    if "top1_agreement" in row:
        parts.append(f"top-1 agreement {100 * row['top1_agreement']:.2f}%")
    if "quant_accuracy" in row:
        parts.append(f"accuracy float {100 * row['float_accuracy']:.2f}% -> quantized {100 * row['quant_accuracy']:.2f}%")
    return ", ".join(parts)


def describe_channels(where: dict) -> str:
    """'channel 17 of 84 on axis 1; channels 4-83 within 3 dB of it (80 in all)'."""
    run = "" if where["first"] == where["last"] else \
        f"; channels {where['first']}-{where['last']} within {NEAR_WORST_DB:g} dB of it"
    return f"channel {where['worst']} of {where['channels']} on axis {where['axis']}{run} ({where['within_3db']} in all)"


HIDDEN_GAP_DB = 20.0  # a worst channel this far under the pooled SQNR gets its own warning line


def hidden_channels(row: dict) -> str | None:
    """A warning when the pooled SQNR hides a much worse part of the output, else None."""
    worst = row.get("worst_channel_sqnr_db")
    pooled = min(row["sqnr_db"], SQNR_CAP_DB)  # inf when the output is exact
    if worst is None or pooled - worst < HIDDEN_GAP_DB:
        return None
    where = row["worst_channels"]
    span = f"channel {where['first']}" if where["first"] == where["last"] else \
        f"channels {where['first']}-{where['last']}"
    return (f"warning: the pooled SQNR hides {span} (axis {where['axis']}) at {worst:.2f} dB, "
            f"{pooled - worst:.1f} dB below it; judge this output by its worst channel "
            f"(recipes: expect min_channel_sqnr_db)")
