"""The number the debugging flow and mixed precision optimise: higher is better, always.

Built in: `sqnr` (dB, all float outputs pooled), `channel_sqnr` (dB, the worst channel of any
float output: per channel of each output, on the axis qtool.metrics.channels picks, the lowest
SQNR; outputs without channels count pooled), `top1` (% of samples whose arg-max over the last
axis matches the float model's), `cosine` (mean cosine similarity per sample, x100) and
`accuracy` (% arg-max equal to integer labels). Without labels the default is `channel_sqnr`:
a pooled SQNR is dominated by an output's largest part and cannot see a part quantization
killed (class scores next to box pixels in one detector output). `module:function` (or `path/to/file.py:function`)
loads a function of the user's: f(outputs, reference, labels) -> float, where outputs and
reference map output names to arrays over all evaluation samples, in the order of `labels`. An
output whose shape differs between samples (a sequence's length) comes as a list of per-batch
arrays instead (each batch one shape; see qtool.data.sources's bucketing), never padded or cut.

`accuracy` and `top1` count samples, so on a small evaluation set they move in steps of one
sample (1.56 points on 64 samples) and most quantizer groups cost exactly 0.00. Their scores are
`Score`s that also carry a finer figure from the same outputs: the mean probability (softmax of
the first float output, unless it already holds probabilities) of the labelled class, or of the
float model's top class for `top1`. analyze ranks by it where the count cannot tell groups apart.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtool.errors import QtoolError
from qtool.files.user_code import run_python_file
from qtool.metrics.comparison import channel_powers, channel_sqnr_db, sqnr_db

Outputs = dict[str, np.ndarray]
MAX_DB = 300.0  # identical outputs: a finite number, so reports stay valid JSON


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    score: Callable[[Outputs, Outputs, "np.ndarray | None"], float]
    fine: str | None = None  # what the scores' `.fine` figure is, for metrics that count samples


class Score(float):
    """A metric value (a plain float to every caller) with `.fine`: a finer figure on the same
    samples and scale (%), for ranking when the value moves in steps of whole samples."""

    fine: float | None

    def __new__(cls, value: float, fine: float | None = None) -> Score:
        score = super().__new__(cls, value)
        score.fine = fine
        return score

    def __reduce__(self):  # scores come back from analyze's worker processes pickled
        return (Score, (float(self), self.fine))


def fine_of(score: float) -> float | None:
    """The finer figure behind a score, None when the metric has none."""
    return getattr(score, "fine", None)


def _probabilities(rows: np.ndarray) -> np.ndarray:
    """Per row, class probabilities: the rows themselves when they already are (>= 0, sum 1),
    else their softmax (logits)."""
    rows = rows.astype(np.float64)
    if rows.size and rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return rows
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _mean_probability(rows: list[np.ndarray], classes: np.ndarray) -> float | None:
    """Mean probability (%) that `rows` (score rows, per batch) give to `classes` (one per row);
    None when the classes do not index the rows."""
    if not rows or len(classes) != sum(len(r) for r in rows) or any(r.shape[1] != rows[0].shape[1] for r in rows):
        return None
    if len(classes) and (classes.min() < 0 or classes.max() >= rows[0].shape[1]):
        return None
    probabilities = np.concatenate([_probabilities(r) for r in rows])
    return float(100.0 * np.mean(probabilities[np.arange(len(classes)), classes]))


def _float_names(reference: Outputs) -> list[str]:
    return [name for name, value in reference.items() if np.issubdtype(pieces(value)[0].dtype, np.floating)]


def _sqnr(outputs: Outputs, reference: Outputs, labels) -> float:
    signal = noise = 0.0
    for name in _float_names(reference):
        for ref, out in zip(pieces(reference[name]), pieces(outputs[name])):
            ref = ref.astype(np.float64)
            signal += float(np.sum(ref * ref))
            noise += float(np.sum((ref - out) ** 2))
    return float(min(sqnr_db(signal, noise), MAX_DB))


def pieces(value) -> list[np.ndarray]:
    """Outputs are one array over all samples, or a list of arrays (batches of unequal shapes)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _output_channel_sqnr(output, reference, axis: int | None) -> float:
    """The worst channel's SQNR of one output, capped at MAX_DB; pooled when it has no channel
    axis, when the channel count differs between pieces, or when no channel has signal."""
    pairs = list(zip(pieces(reference), pieces(output)))
    signal = noise = None
    for ref, out in pairs:
        if axis is None or ref.ndim < 2 or not -ref.ndim <= axis < ref.ndim:
            break
        s, n = channel_powers(ref, out, axis % ref.ndim)
        if signal is not None and len(s) != len(signal):
            break
        signal, noise = (s, n) if signal is None else (signal + s, noise + n)
    else:
        db = channel_sqnr_db(signal, noise) if signal is not None else np.array([np.nan])
        if not np.all(np.isnan(db)):
            return float(np.nanmin(db))
    pooled_signal = sum(float(np.sum(ref.astype(np.float64) ** 2)) for ref, _ in pairs)
    pooled_noise = sum(float(np.sum((ref.astype(np.float64) - out) ** 2)) for ref, out in pairs)
    return float(min(sqnr_db(pooled_signal, pooled_noise), MAX_DB))


def _channel_sqnr_for(axes: dict[str, int | None]):
    """The channel_sqnr score with `axes` (output name -> channel axis; unnamed outputs: axis 1)."""
    def score(outputs: Outputs, reference: Outputs, labels) -> float:
        return min([_output_channel_sqnr(outputs[name], reference[name], axes.get(name, 1))
                    for name in _float_names(reference)], default=MAX_DB)
    return score


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(1, -1)


def _top1(outputs: Outputs, reference: Outputs, labels) -> Score:
    name = _float_names(reference)[0]
    same = [_rows(out).argmax(1) == _rows(ref).argmax(1)
            for out, ref in zip(pieces(outputs[name]), pieces(reference[name]))]
    top = np.concatenate([_rows(ref).argmax(1) for ref in pieces(reference[name])])
    fine = _mean_probability([_rows(out) for out in pieces(outputs[name])], top)
    return Score(100.0 * np.mean(np.concatenate(same)), fine)


def _cosine(outputs: Outputs, reference: Outputs, labels) -> float:
    name = _float_names(reference)[0]
    cosines = []
    for out, ref in zip(pieces(outputs[name]), pieces(reference[name])):
        a = out.reshape(len(out), -1).astype(np.float64)
        b = ref.reshape(len(ref), -1).astype(np.float64)
        denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines.append(np.sum(a * b, axis=1) / np.maximum(denominator, 1e-30))
    return float(100.0 * np.mean(np.concatenate(cosines)))


def _accuracy(outputs: Outputs, reference: Outputs, labels) -> float:
    if labels is None:
        raise QtoolError("--metric accuracy needs --labels")
    name = _float_names(reference)[0]
    predicted = np.concatenate([out.reshape(len(out), -1).argmax(1) for out in pieces(outputs[name])])
    if len(labels) < len(predicted):
        raise QtoolError(f"{len(labels)} labels for {len(predicted)} evaluation samples")
    truth = np.asarray(labels[: len(predicted)]).astype(np.int64)
    rows = [out.reshape(len(out), -1) for out in pieces(outputs[name])]
    return Score(100.0 * np.mean(predicted == truth), _mean_probability(rows, truth))


BUILTIN_METRICS = {
    "sqnr": Metric("sqnr", "dB", _sqnr),
    "channel_sqnr": Metric("channel_sqnr", "dB", _channel_sqnr_for({})),
    "top1": Metric("top1", "%", _top1, fine="mean probability of the float model's top class"),
    "cosine": Metric("cosine", "x100", _cosine),
    "accuracy": Metric("accuracy", "%", _accuracy, fine="mean probability of the correct class"),
}


def metric_for(spec: str | None, labels: np.ndarray | None, model=None) -> Metric:
    """The --metric the user asked for (default: accuracy with labels, else channel_sqnr),
    checked against the labels before any long work starts. `model` (an ir.Model) gives
    channel_sqnr each output's channel axis (qtool.metrics.channels); without it, axis 1."""
    metric = load_metric(spec or ("accuracy" if labels is not None else "channel_sqnr"))
    if metric.name == "accuracy" and labels is None:
        raise QtoolError("--metric accuracy needs --labels")
    if metric.name == "channel_sqnr" and model is not None:
        from qtool.metrics.channels import output_channel_axes  # imports onnx_ir: only when used

        metric = Metric(metric.name, metric.unit, _channel_sqnr_for(output_channel_axes(model)))
    return metric


def load_metric(spec: str) -> Metric:
    """A built-in name or `module:function` / `file.py:function`. Whatever the user's code does
    wrong (fails to import, raises, returns something that is not a finite number) is a
    QtoolError naming the metric; it runs only because the user typed it (or allowed a recipe
    to name it with `qtool run --allow-code`)."""
    if spec in BUILTIN_METRICS:
        return BUILTIN_METRICS[spec]
    module_name, function_name = _split(spec)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if path.is_dir() or not path.exists():
                raise QtoolError(f"--metric {spec}: no such file {path}")
            module = run_python_file(path, path.stem)  # writes no __pycache__ beside it
        else:
            module = importlib.import_module(module_name)
    except QtoolError:
        raise
    except Exception as exc:  # the user's module: any error in it is theirs to fix
        raise QtoolError(f"--metric {spec}: cannot load {module_name} ({type(exc).__name__}: {exc})") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise QtoolError(f"--metric {spec}: {module_name} has no function {function_name!r}")
    return Metric(spec, "", _guarded(spec, function))


def _split(spec: str) -> tuple[str, str]:
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise QtoolError(f"--metric {spec}: expected one of {', '.join(BUILTIN_METRICS)} or module:function")
    return module_name, function_name


def _guarded(spec: str, function: Callable) -> Callable[[Outputs, Outputs, "np.ndarray | None"], float]:
    """The user's function with its failures turned into one line naming it."""
    def score(outputs: Outputs, reference: Outputs, labels) -> float:
        try:
            value = float(function(outputs, reference, labels))
        except QtoolError:
            raise
        except Exception as exc:
            raise QtoolError(f"--metric {spec}: the function raised {type(exc).__name__}: {exc}",
                             "it must return a number, higher is better") from exc
        if not np.isfinite(value):
            raise QtoolError(f"--metric {spec}: the function returned {value}", "it must return a finite number")
        return value
    return score


def metric_source(spec: str) -> Path | None:
    """The file a code metric's function lives in (hashed into a recipe step's key, so editing
    it reruns the step); None for built-ins and modules that cannot be found."""
    if spec in BUILTIN_METRICS or ":" not in spec:
        return None
    module_name, _ = _split(spec)
    if module_name.endswith(".py"):
        return Path(module_name) if Path(module_name).is_file() else None
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and Path(origin).is_file() else None
