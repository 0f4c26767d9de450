"""CorrectBias: absorb the expected quantization error of each layer into its bias (section 4.5).

Quantization error is biased: E[W^ x^] != E[W x], most of all in depthwise layers with few
weights per channel. The correction is a per-output-channel vector subtracted from the bias:

* empirical (needs data): eps_c = E[y_q]_c - E[y_fp]_c, where y_fp is the layer output of the
  original float model and y_q the same layer's output in the simulated quantized model (its input
  quantized, its weight quantized, the corrections of earlier layers already in). Means are taken
  per output channel over the calibration set, reduced inside onnxruntime (streaming).
  To measure every layer in one pass rather than one pass per layer, y_fp is the output of a float
  twin of the layer fed the *same quantized input* (so the error is the layer's own, padding
  included, and not what earlier layers passed on, which their own corrections remove). A second
  pass (`iterations`) re-measures with the earlier corrections in place, since they shift the
  inputs of later layers a little.
* analytic (no data): for a layer whose input is ReLU(BN(...)) with the BN's gamma/beta kept by
  `fold`, E[x]_i = beta_i Phi(beta_i/gamma_i) + gamma_i phi(beta_i/gamma_i) (a rectified Gaussian),
  and eps = (W^ - W) E[x] summed over the kernel (Nagel et al. 2019). Only the weight error is seen.

The correction is an estimate from the calibration set, and a model's output is not always better
for it (a mean shift moved into a layer that feeds a sigmoid or an attention softmax can cost more
than it saves). With `validate`, the corrected and the uncorrected pair are both simulated on the
same data against the float model, and the correction is kept only if it raises the output SQNR
(the mean over float outputs of the pooled SQNR, dB); otherwise the input pair is returned as it was.

Layers without a bias get one (a MatMul an Add after it, which takes over its output's name and
encoding). Biases that have param encodings get them recomputed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.graph import add_initializer, clone, constant_array, unique_name
from qtool.ir.layers import bias_array, bias_value, input_channel_axis, output_channels, set_bias
from qtool.ir.qdq import build_qdq_model
from qtool.progress import Progress, no_progress
from qtool.quant import Encoding, QuantSpec, quantize_dequantize
from qtool.quant.observers import encode_param
from qtool.runtime.sessions import keep_source, make_session, max_batch, run_batches, split_batches, with_mean_taps
from qtool.steps.fold import BN_STATS_KEY

CORRECTABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
Batches = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class BiasCorrectionResult:
    model: ir.Model
    encodings: EncodingSet
    empirical: dict[str, float] = field(default_factory=dict)  # layer -> max |correction|
    analytic: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    passes: int = 0
    # with `validate`: output SQNR (dB, mean over outputs) without and with the correction, and
    # whether the correction was kept
    sqnr_before: float | None = None
    sqnr_after: float | None = None
    kept: bool = True


def _layers(model: ir.Model, encodings: EncodingSet) -> tuple[list[ir.Node], list[tuple[str, str]]]:
    """Layers whose weight is quantized, named (unnamed nodes get a name so the QDQ copy finds them)."""
    layers, skipped = [], []
    for index, node in enumerate(model.graph):
        if node.op_type not in CORRECTABLE:
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if weight is None or weight.name not in encodings.params:
            continue
        if not node.name:
            node.name = f"qtool_layer_{index}_{node.op_type}"
        if node.op_type == "MatMul" and len(weight.const_value.shape) != 2:
            skipped.append((node.name, "MatMul weight is not 2-D"))
            continue
        bias = bias_value(node)
        if bias is not None and len(bias.uses()) > 1:
            skipped.append((node.name, "the bias is shared with another layer"))
            continue
        layers.append(node)
    return layers, skipped


def _reduce_axes(layers: list[ir.Node]) -> dict[str, list[int]]:
    """The axes of each layer's output that onnxruntime averages: the spatial ones of Conv (the
    batch axis is summed here: averaging across it too runs several times slower in
    onnxruntime), the batch axis of Gemm, axis 1 of MatMul outputs seen as (B, rows, N) (see
    _channels_last_rows)."""
    axes = {}
    for layer in layers:
        if layer.op_type == "MatMul":
            axes[layer.name] = [1]
            continue
        rank = len(layer.inputs[1].const_value.shape) if layer.op_type in ("Conv", "ConvTranspose") else 2
        axes[layer.name] = list(range(2, rank)) or [0]
    return axes


def _local_errors(model: ir.Model, encodings: EncodingSet, axes: dict[str, list[int]],
                  batches: Iterable[dict[str, np.ndarray]], source: str) -> dict[str, np.ndarray]:
    """Per layer and output channel: E[y_q] - E[W x_q + b], both fed the same quantized input.

    In the simulated model each layer gets a float 'shadow' twin reading the same quantized input;
    the difference of their channel means is the bias the layer's own quantization adds, padding
    and all, measured for every layer in one streamed pass.
    """
    quant = build_qdq_model(model, encodings, source=source)
    float_nodes = {node.name: node for node in model.graph}
    by_name = {node.name: node for node in quant.graph}
    taps = {}
    for name, reduce in axes.items():
        layer = by_name[name]
        weight = add_initializer(quant, f"{name}_float_weight", constant_array(float_nodes[name].inputs[1]))
        inputs = [layer.inputs[0], weight, *layer.inputs[2:]]
        shadow = ir.node(layer.op_type, inputs, dict(layer.attributes), name=unique_name(quant, f"{name}_shadow"))
        shadow.outputs[0].name = unique_name(quant, f"{name}_shadow_out")
        shadow.outputs[0].dtype = ir.DataType.FLOAT
        quant.graph.insert_after(layer, shadow)
        tapped_pair = [layer.outputs[0], shadow.outputs[0]]
        if layer.op_type == "MatMul":
            channels = output_channels(layer, constant_array(float_nodes[name].inputs[1]))
            tapped_pair = [_channels_last_rows(quant, value, channels) for value in tapped_pair]
        taps[name] = (tapped_pair[0].name, reduce)
        taps[f"{name}\0shadow"] = (tapped_pair[1].name, reduce)
    tapped, outputs = with_mean_taps(quant, taps)
    session = make_session(tapped, simulate=True)
    sums: dict[str, np.ndarray] = {}
    count = 0
    # one run per piece of max_batch samples: a mean over the batch axis (Gemm) is per run, so
    # run_batches must not join the pieces of a batch (a model with batch dim 1 runs sample by sample)
    for feeds, result in run_batches(session, split_batches(batches, max_batch(model)), list(outputs.values())):
        n = len(next(iter(feeds.values())))
        for key, out in outputs.items():
            mean = result[out].astype(np.float64)  # (N, C) per sample, or (C,) over the batch
            sums[key] = sums.get(key, 0.0) + (mean.sum(axis=0) if mean.ndim == 2 else mean * n)
        count += n
    return {name: (sums[name] - sums[f"{name}\0shadow"]) / max(count, 1) for name in axes}


def _channels_last_rows(model: ir.Model, value: ir.Value, channels: int) -> ir.Value:
    """A MatMul output (B, ..., N) reshaped to (B, rows, N): its channel means are then over axis 1
    whatever its rank, which shape inference often leaves unknown (PP-OCRv4's attention blocks)."""
    shape = add_initializer(model, f"{value.name}_rows_shape", np.array([0, -1, channels], np.int64))
    rows = ir.Value(name=unique_name(model, f"{value.name}_rows"))
    rows.dtype = ir.DataType.FLOAT
    model.graph.insert_after(value.producer(), ir.node("Reshape", [value, shape], outputs=[rows]))
    return rows


def _rectified_gaussian_mean(beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    gamma = np.maximum(np.abs(gamma), 1e-12)
    z = beta / gamma
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return beta * cdf + gamma * pdf


def _analytic_error(layer: ir.Node, weight_enc: Encoding, stats: dict) -> np.ndarray | None:
    """(W^ - W) E[x] when the layer's input is ReLU(x) of a folded BN's output, else None."""
    relu = layer.inputs[0].producer()
    if relu is None or relu.op_type != "Relu" or relu.inputs[0].name not in stats:
        return None
    entry = stats[relu.inputs[0].name]
    mean_x = _rectified_gaussian_mean(np.asarray(entry["beta"]), np.asarray(entry["gamma"]))
    weight = constant_array(layer.inputs[1]).astype(np.float32)
    error = quantize_dequantize(weight, weight_enc).astype(np.float64) - weight
    axis = input_channel_axis(layer, weight)
    if axis is None or weight.shape[axis] != mean_x.size:
        return None
    if layer.op_type == "Conv" and axis == 0:  # depthwise: channel c sees only input c
        return error.reshape(error.shape[0], -1).sum(axis=1) * mean_x
    if layer.op_type == "Conv":
        return error.reshape(error.shape[0], error.shape[1], -1).sum(axis=2) @ mean_x
    return mean_x @ (error if axis == 0 else error.T)  # Gemm


def correct_bias(model: ir.Model, encodings: EncodingSet, batches: Batches | None = None, *,
                 analytic: bool = False, iterations: int = 2, progress: Progress = no_progress,
                 source: str = "encodings", validate: bool = False) -> BiasCorrectionResult:
    """Empirical correction with `batches` (a callable giving a fresh iterable each pass);
    analytic where BN statistics exist and `analytic` is set or no data is given. `validate`
    (needs `batches`) keeps the correction only where it raises the output SQNR on the data."""
    given, given_encodings = model, encodings
    model = keep_source(clone(model), model)
    encodings = encodings.copy()
    result = BiasCorrectionResult(model, encodings)
    layers, result.skipped = _layers(model, encodings)
    stats = json.loads(model.metadata_props.get(BN_STATS_KEY, "{}"))
    empirical_layers = []
    for layer in layers:
        error = _analytic_error(layer, encodings.params[layer.inputs[1].name], stats) \
            if analytic or batches is None else None
        if error is not None:
            _shift_bias(model, layer, error)
            result.analytic[layer.name] = float(np.max(np.abs(error)))
        elif batches is not None:
            empirical_layers.append(layer)
        else:
            result.skipped.append((layer.name, "no BN statistics before it and no data for empirical correction"))
    if empirical_layers and batches is not None:
        axes = _reduce_axes(empirical_layers)
        original = {layer.name: bias_array(layer, output_channels(layer, constant_array(layer.inputs[1])))
                    for layer in empirical_layers}
        for result.passes in range(1, iterations + 1):
            # the local error does not depend on the layer's own bias, so each pass sets
            # bias = original - error (a fixed point), it does not add to the last correction
            errors = _local_errors(model, encodings, axes, batches(), source)
            for layer in empirical_layers:
                set_bias(model, layer, original[layer.name] - errors[layer.name])
            progress(result.passes, iterations)
        for layer in empirical_layers:
            channels = output_channels(layer, constant_array(layer.inputs[1]))
            result.empirical[layer.name] = float(np.max(np.abs(bias_array(layer, channels) - original[layer.name])))
    _refresh_bias_encodings(model, encodings, layers)
    if validate and batches is not None and (result.empirical or result.analytic):
        _validate(result, given, given_encodings, batches, source)
    return result


def _output_sqnr(model: ir.Model, encodings: EncodingSet, reference: ir.Model, batches: Batches,
                 source: str) -> float:
    """Mean over the float outputs of the pooled output SQNR (dB) of the pair against `reference`."""
    from qtool.steps.simulate import simulate

    report = simulate(model, encodings, batches(), reference=reference, source=source).report
    values = [row["sqnr_db"] for row in report.values() if "sqnr_db" in row]
    return float(np.mean(values)) if values else float("nan")


def _validate(result: BiasCorrectionResult, given: ir.Model, given_encodings: EncodingSet, batches: Batches,
              source: str) -> None:
    """Keep the correction only if the corrected pair's output SQNR beats the uncorrected one's."""
    result.sqnr_before = _output_sqnr(given, given_encodings, given, batches, source)
    result.sqnr_after = _output_sqnr(result.model, result.encodings, given, batches, source)
    result.kept = bool(result.sqnr_after > result.sqnr_before)
    if not result.kept:
        result.model = keep_source(clone(given), given)
        result.encodings = given_encodings.copy()


def _shift_bias(model: ir.Model, layer: ir.Node, error: np.ndarray) -> None:
    channels = output_channels(layer, constant_array(layer.inputs[1]))
    set_bias(model, layer, bias_array(layer, channels) - np.broadcast_to(error, (channels,)))


def _refresh_bias_encodings(model: ir.Model, encodings: EncodingSet, layers: list[ir.Node]) -> None:
    """Biases that are quantized get encodings for their new values (same grid settings)."""
    for layer in layers:
        bias = bias_value(layer)
        if bias is None or bias.name not in encodings.params:
            continue
        old = encodings.params[bias.name]
        if old.frozen or old.is_float:
            continue
        spec = QuantSpec(bw=old.bw, symmetric=old.symmetric, strict_symmetric=old.strict,
                         unsigned_symmetric=bool(np.all(old.offset == 0)), axis=old.axis)
        encodings.params[bias.name] = encode_param(constant_array(bias), spec)

