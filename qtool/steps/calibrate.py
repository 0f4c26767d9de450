"""Calibrate: stream data through the float model and turn observed ranges into encodings.

Activation quantizers observe their tensor batch by batch (intermediate tensors are exposed as
extra outputs of one onnxruntime session), so memory depends on the batch size, never on the
number of samples. Parameter encodings come straight from the initializers. Encodings marked
frozen in `frozen` (e.g. written by AdaRound) are kept exactly as they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qtool.encodings_io import EncodingSet
from qtool.errors import QtoolError
from qtool.graph import constant_array, value_by_name
from qtool.plan import QuantPlan
from qtool.progress import Progress, no_progress
from qtool.quant import compute_encoding
from qtool.quant.observers import encode_param, make_observer
from qtool.runtime import make_session, max_batch, run_batches, with_range_taps, with_taps

# AIMET's names for the range-setting schemes, written into quantizer_args.
AIMET_SCHEME_NAMES = {
    "minmax": "post_training_tf",
    "sqnr": "post_training_tf_enhanced",
    "percentile": "post_training_percentile",
    "mse": "post_training_mse",
}


@dataclass(frozen=True)
class CalibrateOptions:
    scheme: str = "sqnr"  # activations
    param_scheme: str = "minmax"  # weights: seen whole, min-max loses nothing to clipping
    percentile: float = 99.99
    batch_size: int = 16


@dataclass
class CalibrateResult:
    encodings: EncodingSet
    samples: int = 0
    seconds: float = 0.0
    kept_frozen: list[str] = field(default_factory=list)


def calibrate(model: ir.Model, plan: QuantPlan, batches: Iterable[dict[str, np.ndarray]],
              options: CalibrateOptions = CalibrateOptions(), *, frozen: EncodingSet | None = None,
              total: int | None = None, progress: Progress = no_progress) -> CalibrateResult:
    """Compute every planned encoding; `batches` is consumed once."""
    start = time.perf_counter()
    frozen_all = {name: enc for name, enc in (frozen.all().items() if frozen else []) if enc.frozen}
    result = CalibrateResult(EncodingSet(), kept_frozen=sorted(set(frozen_all) & set(plan.all())))

    values = value_by_name(model)
    for name, tensor in plan.params.items():
        if name in frozen_all:
            result.encodings.params[name] = frozen_all[name]
            continue
        array = constant_array(values[name])
        result.encodings.params[name] = encode_param(array, tensor.spec, options.param_scheme,
                                                     percentile=options.percentile)

    observed = {}
    for name, tensor in plan.activations.items():
        if name in frozen_all:
            result.encodings.activations[name] = frozen_all[name]
        elif tensor.fixed_range is not None:
            result.encodings.activations[name] = compute_encoding(*tensor.fixed_range, tensor.spec)
        elif tensor.spec.dtype == "float":
            result.encodings.activations[name] = compute_encoding(0.0, 0.0, tensor.spec)
        else:
            observed[name] = make_observer(options.scheme, percentile=options.percentile)

    if observed:
        result.samples = _observe(model, observed, batches, total, progress, options.scheme == "minmax")
        for name, observer in observed.items():
            if not observer.seen:
                raise QtoolError(f"tensor '{name}' held no finite value on the calibration data",
                                 "check the data for NaN/inf, or give it a fixed range in the config")
            result.encodings.activations[name] = observer.compute(plan.activations[name].spec)
    # keep the plan's order for readable files; the writer sorts for determinism anyway
    result.encodings.activations = {n: result.encodings.activations[n] for n in plan.activations}
    result.encodings.quantizer_args = _quantizer_args(plan, options)
    result.seconds = time.perf_counter() - start
    return result


def _observe(model: ir.Model, observers: dict, batches: Iterable[dict[str, np.ndarray]],
             total: int | None, progress: Progress, ranges_only: bool) -> int:
    """Feed every batch to the observers. With `ranges_only` (min-max), onnxruntime reduces each
    tensor to its min and max itself and only those scalars leave the session; a batch whose
    reduced range is not finite (inf/NaN inside) is rerun with those tensors taken out whole, so
    that non-finite values are skipped as the observers do everywhere else."""
    input_names = {v.name for v in model.graph.inputs}
    inner = [name for name in observers if name not in input_names]
    if ranges_only:
        tapped, reduced = with_range_taps(model, inner)
        fetch = [out for pair in reduced.values() for out in pair]
    else:
        tapped, reduced, fetch = with_taps(model, inner), {}, inner
    session = make_session(tapped)
    full_session = None
    limit = max_batch(model)
    seen = 0
    for feeds, outputs in run_batches(session, batches, fetch or None, limit):
        not_finite = []
        for name, observer in observers.items():
            if name in feeds:
                observer.update(feeds[name])
            elif name in reduced:
                pair = np.stack([outputs[reduced[name][0]], outputs[reduced[name][1]]])
                if np.all(np.isfinite(pair)):
                    observer.update(pair)
                else:
                    not_finite.append(name)
            else:
                observer.update(outputs[name])
        if not_finite:
            full_session = full_session or make_session(with_taps(model, inner))
            whole = next(run_batches(full_session, [feeds], inner, limit))[1]
            for name in not_finite:
                observers[name].update(whole[name])
        seen += len(next(iter(feeds.values())))
        progress(seen, total)
    if seen == 0:
        raise QtoolError("calibration data holds no samples")
    return seen


def _quantizer_args(plan: QuantPlan, options: CalibrateOptions) -> dict:
    def first(table: dict, attr: str, default):
        return next((getattr(t.spec, attr) for t in table.values()), default)

    return {
        "activation_bitwidth": first(plan.activations, "bw", 8),
        "param_bitwidth": first(plan.params, "bw", 8),
        "dtype": "int",
        "is_symmetric": first(plan.params, "symmetric", True),
        "per_channel_quantization": any(t.spec.axis is not None for t in plan.params.values()),
        "quant_scheme": AIMET_SCHEME_NAMES[options.scheme],
    }

