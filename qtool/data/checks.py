"""Checks of data against the model: shapes and dtypes from headers, values batch by batch.

Shapes and dtypes are checked from each file's headers before anything runs (qtool.data.arrays
reads them without the data), so a folder whose last file does not fit fails at once, not after
an hour of calibration. Values can only be checked as they are read: every slice that goes into
a batch is checked for NaN/Inf (float inputs: one NaN makes every range NaN, and a calibrated
model that says `SQNR nan dB` helps nobody) and for token ids beyond the embedding table they
index (integer inputs that feed a Gather: onnxruntime would fail inside the run). Each problem
is one QtoolError naming the file and the array's key.
"""

from __future__ import annotations

import numpy as np

from qtool.errors import QtoolError


def fmt_shape(dims: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _what(key: str) -> str:
    return f"array '{key}'" if key else "the array"


def check_shape(info, shape: tuple[int, ...], dtype: np.dtype, where: str, key: str) -> None:
    """One array (by its header) against what the model expects on input `info` (an InputInfo)."""
    if len(shape) == 0:
        raise QtoolError(f"{where}: {_what(key)} is a scalar, not samples of input '{info.name}'",
                         "the first axis must index samples: save an array of shape (N, ...)")
    if info.shape is not None:
        if len(shape) != len(info.shape):
            raise QtoolError(
                f"{where}: input '{info.name}' has shape {shape[1:]} per sample, "
                f"the model expects {fmt_shape(info.shape[1:])}",
                "the first axis of the data must index samples",
            )
        for axis, (want, got) in enumerate(zip(info.shape[1:], shape[1:]), start=1):
            if want is not None and want != got:
                raise QtoolError(f"{where}: input '{info.name}' has shape {shape[1:]} per sample, "
                                 f"the model expects {fmt_shape(info.shape[1:])} (axis {axis})")
    if not np.can_cast(dtype, info.dtype, casting="same_kind"):
        raise QtoolError(f"{where}: input '{info.name}' is {dtype}, the model expects {info.dtype}")
    if any(d == 0 for d in shape[1:]):
        raise QtoolError(f"{where}: {_what(key)} is empty: shape {shape} has no values per sample",
                         "every sample needs values")


def check_values(info, array: np.ndarray, where: str, key: str, first: int) -> None:
    """The values of samples first.. of one input: finite floats, ids inside the embedding table."""
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            sample = first + int(np.argmin(finite.reshape(len(array), -1).all(axis=1)))
            kind = "NaN" if np.isnan(array).any() else "Inf"
            what = f"holds only {kind}" if bad == finite.size else f"holds {bad:,} {kind} value(s)"
            raise QtoolError(f"{where}: {_what(key)} {what} (first in sample {sample})",
                             "qtool needs finite data: fix or drop those samples")
    elif info.vocab is not None and np.issubdtype(array.dtype, np.integer) and array.size:
        low, high = int(array.min()), int(array.max())
        if high >= info.vocab or low < -info.vocab:
            bad = high if high >= info.vocab else low
            raise QtoolError(f"{where}: {_what(key)} holds id {bad}, but input '{info.name}' indexes an embedding "
                             f"table of {info.vocab} rows", f"ids must be in 0..{info.vocab - 1}: was the data "
                             "tokenized for another model?")


def check_labels(labels: np.ndarray, path: str, samples: int | None, where: str, outputs: list) -> None:
    """Labels against the data and the model: one per sample of `where` (`samples` of them, None
    when unknown), and a classifier output (N x C, `outputs` as (name, shape) pairs, shapes None
    when unknown) whose classes they index."""
    if len(labels) == 0:
        raise QtoolError(f"{path}: no labels", "give one integer label per sample")
    if samples is not None and len(labels) != samples:
        raise QtoolError(f"{path}: {len(labels)} labels for {samples} samples in {where}",
                         "give one label per sample, in the data's order")
    known = [(name, shape) for name, shape in outputs if shape is not None]
    if not known or len(known) < len(outputs):
        return  # an output of unknown shape may be the classifier
    classifiers = [(name, shape) for name, shape in known if _classes(shape) is not None]
    if not classifiers:
        name, shape = known[0]
        raise QtoolError(f"{path}: labels need a classifier output (N x C scores), but output '{name}' has "
                         f"shape {fmt_shape(shape)}", "drop --labels (and use a metric such as sqnr)")
    name, shape = classifiers[0]
    classes = _classes(shape)
    low, high = int(labels.min()), int(labels.max())
    if classes and (low < 0 or high >= classes):
        raise QtoolError(f"{path}: label {high if high >= classes else low} is outside 0..{classes - 1} "
                         f"(output '{name}' scores {classes} classes)", "labels are class indices")


def _classes(shape: tuple) -> int | None:
    """The class count of an N x C (x 1 x 1) output: 0 when C is dynamic, None when not a classifier."""
    dims = [d for d in shape[1:] if d != 1]
    if len(dims) != 1:
        return None
    return dims[0] if isinstance(dims[0], int) else 0
