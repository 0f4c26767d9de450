"""Quality of a quantized model against its float reference, accumulated batch by batch.

SQNR (dB) = 10 log10(sum(ref^2) / sum((ref - quant)^2)), summed over the whole set, per output.
Top-1 agreement: fraction of samples whose arg-max over the last axis is the same, for outputs
shaped like classifier scores (N x C with C > 1). Accuracy: arg-max against integer labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """Signal-to-quantization-noise ratio; inf when the outputs are identical."""
    if noise_power <= 0:
        return float("inf")
    if signal_power <= 0:
        return float("-inf")
    return float(10.0 * np.log10(signal_power / noise_power))


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


@dataclass
class Comparison:
    """Streaming float-vs-quantized comparison over named outputs."""

    outputs: dict[str, OutputStats] = field(default_factory=dict)
    labels: np.ndarray | None = None
    # output name -> the decisions its values make (e.g. argmax over a softmax axis, per position)
    decisions: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)

    def update(self, name: str, ref: np.ndarray, quant: np.ndarray) -> None:
        stats = self.outputs.setdefault(name, OutputStats())
        ref64 = ref.astype(np.float64)
        diff = ref64 - quant.astype(np.float64)
        stats.signal += float(np.sum(ref64 * ref64))
        stats.noise += float(np.sum(diff * diff))
        stats.max_abs_error = max(stats.max_abs_error, float(np.max(np.abs(diff), initial=0.0)))
        if is_classifier_output(ref.shape):
            stats.classifier = True
            ref_top = ref.reshape(len(ref), -1).argmax(axis=1)
            quant_top = quant.reshape(len(quant), -1).argmax(axis=1)
            stats.agree += int(np.sum(ref_top == quant_top))
            if self.labels is not None:
                truth = self.labels[stats.samples: stats.samples + len(ref)]
                stats.correct_float += int(np.sum(ref_top == truth))
                stats.correct_quant += int(np.sum(quant_top == truth))
        if name in self.decisions:
            agree = self.decisions[name](ref) == self.decisions[name](quant)
            stats.decisions += int(agree.size)
            stats.decisions_agree += int(np.sum(agree))
        stats.samples += len(ref)

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
            out[name] = row
        return out


def describe_metrics(row: dict) -> str:
    """One line of simulate's per-output metrics, for people."""
    parts = [f"SQNR {row['sqnr_db']:.2f} dB"]
    if "top1_agreement" in row:
        parts.append(f"top-1 agreement {100 * row['top1_agreement']:.2f}%")
    if "quant_accuracy" in row:
        parts.append(f"accuracy float {100 * row['float_accuracy']:.2f}% -> quantized {100 * row['quant_accuracy']:.2f}%")
    return ", ".join(parts)
