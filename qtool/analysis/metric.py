"""The number the debugging flow and mixed precision optimise: higher is better, always.

Built in: `sqnr` (dB, all float outputs pooled), `top1` (% of samples whose arg-max over the
last axis matches the float model's), `cosine` (mean cosine similarity per sample, x100) and
`accuracy` (% arg-max equal to integer labels). `module:function` (or `path/to/file.py:function`)
loads a function of the user's: f(outputs, reference, labels) -> float, where outputs and
reference map output names to arrays over all evaluation samples.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError
from qtool.metrics import sqnr_db

Outputs = dict[str, np.ndarray]
MAX_DB = 300.0  # identical outputs: a finite number, so reports stay valid JSON


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    score: Callable[[Outputs, Outputs, "np.ndarray | None"], float]


def _float_names(reference: Outputs) -> list[str]:
    return [name for name, array in reference.items() if np.issubdtype(array.dtype, np.floating)]


def _sqnr(outputs: Outputs, reference: Outputs, labels) -> float:
    signal = noise = 0.0
    for name in _float_names(reference):
        ref = reference[name].astype(np.float64)
        signal += float(np.sum(ref * ref))
        noise += float(np.sum((ref - outputs[name]) ** 2))
    return float(min(sqnr_db(signal, noise), MAX_DB))


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(1, -1)


def _top1(outputs: Outputs, reference: Outputs, labels) -> float:
    name = _float_names(reference)[0]
    return float(100.0 * np.mean(_rows(outputs[name]).argmax(1) == _rows(reference[name]).argmax(1)))


def _cosine(outputs: Outputs, reference: Outputs, labels) -> float:
    name = _float_names(reference)[0]
    a = outputs[name].reshape(len(outputs[name]), -1).astype(np.float64)
    b = reference[name].reshape(len(reference[name]), -1).astype(np.float64)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(100.0 * np.mean(np.sum(a * b, axis=1) / np.maximum(denominator, 1e-30)))


def _accuracy(outputs: Outputs, reference: Outputs, labels) -> float:
    if labels is None:
        raise QtoolError("--metric accuracy needs --labels")
    name = _float_names(reference)[0]
    predicted = outputs[name].reshape(len(outputs[name]), -1).argmax(1)
    if len(labels) < len(predicted):
        raise QtoolError(f"{len(labels)} labels for {len(predicted)} evaluation samples")
    return float(100.0 * np.mean(predicted == labels[: len(predicted)]))


BUILTIN_METRICS = {
    "sqnr": Metric("sqnr", "dB", _sqnr),
    "top1": Metric("top1", "%", _top1),
    "cosine": Metric("cosine", "x100", _cosine),
    "accuracy": Metric("accuracy", "%", _accuracy),
}


def metric_for(spec: str | None, labels: np.ndarray | None) -> Metric:
    """The --metric the user asked for (default: accuracy with labels, else sqnr), checked
    against the labels before any long work starts."""
    metric = load_metric(spec or ("accuracy" if labels is not None else "sqnr"))
    if metric.name == "accuracy" and labels is None:
        raise QtoolError("--metric accuracy needs --labels")
    return metric


def load_metric(spec: str) -> Metric:
    """A built-in name or `module:function` / `file.py:function`."""
    if spec in BUILTIN_METRICS:
        return BUILTIN_METRICS[spec]
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise QtoolError(f"--metric {spec}: expected one of {', '.join(BUILTIN_METRICS)} or module:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or not path.exists():
                raise QtoolError(f"--metric {spec}: no such file {path}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise QtoolError(f"--metric {spec}: cannot import {module_name} ({exc})") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise QtoolError(f"--metric {spec}: {module_name} has no function {function_name!r}")
    return Metric(spec, "", lambda outputs, reference, labels: float(function(outputs, reference, labels)))
