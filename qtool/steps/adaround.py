"""AdaRound: learn, per layer, whether each weight rounds up or down (white paper 4.6).

For every Conv / Gemm / MatMul with a constant weight and an integer weight encoding, in graph
order: the layer is written as a matrix product (convolutions through im2col patches), its
inputs are sampled at the same output positions in the float model (x_fp) and in the simulated
quantized model (x_q), and `qtool.quant.adaround.adaround_matrix` optimises the rounding so that
W~ x_q reproduces W x_fp. The rounded weights go into the model (they lie exactly on the grid) and
their encodings are marked frozen, so that `calibrate` recomputes activation encodings only.

Inputs are streamed: per batch only the sampled rows of each layer are kept (`rows` in all per
layer, spread evenly over the batches), so memory does not grow with the number of samples.
The targets W x_fp come from one pass of the float model for all layers (only the outputs are
kept, computed batch by batch); x_q for each layer from the model adarounded so far, as AIMET
does, but without AIMET's pass per layer: `qtool.runtime.segmented` runs
only the nodes between the previous layer and this one, from the activations cached at their
boundary, so all layers together cost one simulated pass.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.ir.graph import clone, set_initializer
from qtool.ir.layers import attr_int
from qtool.ir.qdq import build_qdq_model, requantize_param
from qtool.progress import Progress, no_progress
from qtool.quant import Encoding
from qtool.quant.adaround import AdaRoundParams, adaround_matrix
from qtool.quant.layer_rows import LayerRows
from qtool.quant.patches import conv_patches, output_shape, sample_rows
from qtool.runtime.segmented import SegmentedRunner
from qtool.runtime.sessions import keep_source, make_session, max_batch, run_batches, split_batches, with_taps

Batches = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class AdaRoundOptions:
    params: AdaRoundParams = AdaRoundParams()
    rows: int = 4096  # sampled output positions per layer
    layers: tuple[str, ...] | None = None  # only these (node or output names)
    exclude: tuple[str, ...] = ()
    cache_bytes: int = 2 << 30  # activations kept in RAM between layers; beyond, memory-mapped files


@dataclass
class LayerReport:
    layer: str
    seconds: float
    loss_nearest: float
    loss_adaround: float
    flipped: float
    kept_nearest: bool = False


@dataclass
class AdaRoundResult:
    model: ir.Model
    encodings: EncodingSet
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _matrix(layer: ir.Node, weight: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(W as (out, K) with output channels on axis 0, groups), or None when not supported."""
    if layer.op_type == "Conv" and weight.ndim == 4:
        return weight.reshape(weight.shape[0], -1), attr_int(layer, "group", 1)
    if layer.op_type == "Gemm" and not attr_int(layer, "transA", 0):
        return (weight if attr_int(layer, "transB", 0) else weight.T), 1
    if layer.op_type == "MatMul" and weight.ndim == 2 and layer.inputs[1] is not None:
        return weight.T, 1
    if layer.op_type == "ConvTranspose" and weight.ndim >= 3:
        return _transposed_columns(weight, attr_int(layer, "group", 1)), attr_int(layer, "group", 1)
    return None


def _transposed_columns(weight: np.ndarray, groups: int) -> np.ndarray:
    """A ConvTranspose weight (C_in, C_out/g, *kernel) as (out, K_g) with one row per (output
    channel, kernel tap), grouped as LayerRows expects.

    Each input pixel x (C_in values) makes a column of C_out * taps values, W^T x, that the layer
    then adds into its output at strided places (col2im). AdaRound reconstructs these columns:
    exact when the kernel does not overlap itself (kernel <= stride, e.g. the 2x2 stride-2
    upsampling of detection and segmentation heads), a close proxy when it does; pads, strides and
    dilations only move columns and do not enter.
    """
    c_in, c_out_g, taps = weight.shape[0], weight.shape[1], int(np.prod(weight.shape[2:]))
    k_g = c_in // groups
    per_group = weight.reshape(groups, k_g, c_out_g * taps)  # (g, K_g, C_out/g * taps)
    return np.ascontiguousarray(per_group.transpose(0, 2, 1).reshape(groups * c_out_g * taps, k_g))


def _from_matrix(layer: ir.Node, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if layer.op_type == "Conv" or (layer.op_type == "Gemm" and attr_int(layer, "transB", 0)):
        return matrix.reshape(shape)
    if layer.op_type == "ConvTranspose":
        groups, k_g = attr_int(layer, "group", 1), matrix.shape[1]
        per_group = matrix.reshape(groups, -1, k_g).transpose(0, 2, 1)  # (g, K_g, C_out/g * taps)
        return per_group.reshape(shape)
    return matrix.T.reshape(shape)


def _matrix_encoding(layer: ir.Node, enc: Encoding) -> Encoding:
    """The weight encoding re-expressed for the (out, K) matrix: per channel means axis 0 there
    (ConvTranspose: weight axis 1 holds C_out/g channels, shared by the groups; each one's scale
    is repeated over its kernel taps' rows, in every group)."""
    scale, offset = enc.scale, enc.offset
    if layer.op_type == "ConvTranspose" and enc.per_channel:
        taps = int(np.prod(layer.inputs[1].const_value.shape[2:]))
        groups = attr_int(layer, "group", 1)
        scale, offset = (np.tile(np.repeat(v, taps), groups) for v in (scale, offset))
    return Encoding(enc.bw, scale, offset, enc.symmetric, enc.dtype, 0 if enc.per_channel else None)


def _conv_geometry(layer: ir.Node, x: np.ndarray) -> tuple[tuple[int, ...], list, list, list]:
    kernel = tuple(int(k) for k in layer.inputs[1].const_value.shape[2:])
    spatial = x.ndim - 2
    attr = layer.attributes
    strides = list(attr["strides"].as_ints()) if "strides" in attr else [1] * spatial
    dilations = list(attr["dilations"].as_ints()) if "dilations" in attr else [1] * spatial
    pads = list(attr["pads"].as_ints()) if "pads" in attr else [0] * 2 * spatial
    return kernel, strides, pads, dilations


def _sampled_rows(layer: ir.Node, x: np.ndarray, groups: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` sampled rows (positions, groups, K_g) of the layer's input; convolutions build only
    the sampled patches, so memory stays bounded on large feature maps."""
    if layer.op_type == "Conv":
        kernel, strides, pads, dilations = _conv_geometry(layer, x)
        out_spatial = output_shape(x.shape[2:], kernel, strides, pads, dilations)
        picked = sample_rows(count, x.shape[0] * int(np.prod(out_spatial)), rng)
        return conv_patches(x, kernel, strides, pads, dilations, groups, rows=picked)
    if layer.op_type == "ConvTranspose":  # a row per input pixel (see _transposed_columns)
        pixels = np.moveaxis(x, 1, -1).reshape(-1, groups, x.shape[1] // groups)
        return pixels[sample_rows(count, len(pixels), rng)]
    flat = x.reshape(-1, 1, x.shape[-1])
    return flat[sample_rows(count, len(flat), rng)]


def _targets(rows_fp: np.ndarray, matrix: np.ndarray, groups: int) -> np.ndarray:
    """W x_fp for every sampled row: (rows, out)."""
    layer = LayerRows(rows_fp[:, 0, :] if groups == 1 else rows_fp, groups, matrix.shape[0], dtype=np.float64)
    return layer.outputs(layer.to_internal(matrix.astype(np.float64)))


def _candidates(model: ir.Model, encodings: EncodingSet, options: AdaRoundOptions
                ) -> tuple[list[ir.Node], list[tuple[str, str]]]:
    chosen, skipped = [], []
    wanted = set(options.layers) if options.layers else None
    for index, node in enumerate(model.graph):
        if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose") or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None or weight.name not in encodings.params:
            continue
        if not node.name:
            node.name = f"qtool_layer_{index}_{node.op_type}"
        names = {node.name, node.outputs[0].name}
        if (wanted is not None and not names & wanted) or names & set(options.exclude):
            continue
        enc = encodings.params[weight.name]
        if enc.is_float or enc.frozen:
            skipped.append((node.name, "weight encoding is float or frozen already"))
        elif _matrix(node, weight.const_value.numpy()) is None:
            skipped.append((node.name, f"{node.op_type} with this layout is not supported"))
        else:
            chosen.append(node)
    if wanted is not None:
        known = {n for node in model.graph for n in (node.name, node.outputs[0].name)}
        missing = sorted(wanted - known)
        if missing:
            raise QtoolError(f"--layers: no layer named {missing[0]!r}", "use node or output names from 'qtool info'")
    return chosen, skipped


def _rows_per_batch(options: AdaRoundOptions, total_batches: int) -> int:
    return max(1, -(-options.rows // max(total_batches, 1)))


def _row_rng(options: AdaRoundOptions, layer: ir.Node, batch_index: int) -> np.random.Generator:
    """Seeded by layer name and batch: the float and the quantized pass sample the same rows."""
    return np.random.default_rng([options.params.seed, zlib.crc32(layer.name.encode()), batch_index])


def _float_targets(model: ir.Model, layers: list[ir.Node], batches: Iterable[dict[str, np.ndarray]],
                   options: AdaRoundOptions, total_batches: int) -> dict[str, np.ndarray]:
    """Every layer's float outputs W x_fp (no bias) at its sampled rows, from one float pass.

    Only the outputs are kept, not the input rows: a layer's float weight does not change before
    its own turn, and (rows, out) is far smaller than (rows, K) for convolutions (EfficientNet's
    5x5 depthwise layers: 25x). They are kept for every layer until its turn, which for a large
    model is as much as the weights (4096 rows x 4096 outputs x 4 bytes per 4096 x 4096 layer),
    so they stay in RAM within a budget of ``options.cache_bytes`` of their own (the activation
    cache has another: 2x in all) and go to memory-mapped files beyond
    (qtool.runtime.spill), as the activation cache does: the same values either way."""
    from qtool.runtime.spill import Spill

    store = Spill(options.cache_bytes)
    inputs = {layer.name: layer.inputs[0].name for layer in layers}
    graph_inputs = {v.name for v in model.graph.inputs}
    names = sorted({n for n in inputs.values() if n not in graph_inputs})
    session = make_session(with_taps(model, names))
    per_batch = _rows_per_batch(options, total_batches)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in inputs}
    for batch_index, (feeds, outputs) in enumerate(run_batches(session, batches, names or None)):
        for layer in layers:  # one layer's weight matrix at a time (a large model's are memory-mapped)
            tensor = feeds.get(inputs[layer.name], outputs.get(inputs[layer.name]))
            matrix, groups = _matrix(layer, layer.inputs[1].const_value.numpy())
            rows = _sampled_rows(layer, tensor, groups, per_batch, _row_rng(options, layer, batch_index))
            collected[layer.name].append(store.keep(_targets(rows, matrix, groups).astype(np.float32)))
    # one (rows, out) array per layer (the pieces agree after the first axis), within the budget
    return {name: store.join(parts) for name, parts in collected.items() if parts}


def adaround(model: ir.Model, encodings: EncodingSet, batches: Batches, total_batches: int,
             options: AdaRoundOptions = AdaRoundOptions(), *, progress: Progress = no_progress,
             layer_progress: Callable[[str, int, int], None] | None = None, source: str = "encodings"
             ) -> AdaRoundResult:
    """Adaround every eligible layer; returns the new model and encodings (weights frozen)."""
    start = time.perf_counter()
    limit = max_batch(model)
    if limit is not None:  # a batch dim fixed (to 1): every pass feeds pieces the model accepts
        whole = batches
        batches = lambda: split_batches(whole(), limit)  # noqa: E731
        total_batches = sum(1 for _ in batches())
    model = keep_source(clone(model), model)
    encodings = encodings.copy()
    result = AdaRoundResult(model, encodings)
    layers, result.skipped = _candidates(model, encodings, options)
    if not layers:
        return result
    targets = _float_targets(model, layers, batches(), options, total_batches)
    # the layer's quantized input comes from the model adarounded so far: with inputs from the
    # round-to-nearest model instead, each layer learns to undo errors that the earlier layers'
    # own AdaRound then removes, and the two corrections add up (mobilenet_block W4: 11 dB
    # instead of 28 dB after 3000 iterations; round-to-nearest gives 16.5 dB). The segmented
    # runner makes that one simulated pass in all instead of one per layer.
    runner = SegmentedRunner(batches(), options.cache_bytes)
    quant = build_qdq_model(model, encodings, source=source)
    quant_layers = {node.name: node for node in quant.graph}
    progress(0, len(layers))
    try:
        for index, layer in enumerate(layers):
            x_q = _quantized_rows(runner, quant, quant_layers[layer.name], layer, options, total_batches)
            rounded = _round_layer(model, encodings, layer, x_q, targets.pop(layer.name), options, result,
                                   layer_progress)
            requantize_param(quant, quant_layers[layer.name], 1, rounded, encodings.params[layer.inputs[1].name])
            progress(index + 1, len(layers))
    finally:
        runner.close()
    result.seconds = time.perf_counter() - start
    return result


def _quantized_rows(runner: SegmentedRunner, quant: ir.Model, node: ir.Node, layer: ir.Node,
                    options: AdaRoundOptions, total_batches: int) -> np.ndarray:
    """The layer's sampled input rows in the simulated model (same positions as the float rows);
    ``node`` is the layer in ``quant``, ``layer`` in the float model."""
    groups = _matrix(layer, layer.inputs[1].const_value.numpy())[1]
    per_batch = _rows_per_batch(options, total_batches)
    parts = [_sampled_rows(layer, x, groups, per_batch, _row_rng(options, layer, b))
             for b, x in runner.advance(quant, layer.name, node.inputs[0].name)]
    return np.concatenate(parts)


def _round_layer(model: ir.Model, encodings: EncodingSet, layer: ir.Node, x_q: np.ndarray, target: np.ndarray,
                 options: AdaRoundOptions, result: AdaRoundResult,
                 layer_progress: Callable[[str, int, int], None] | None) -> np.ndarray:
    """Optimise one layer's rounding; write its weights into the model, freeze the encoding and
    return the new weights."""
    weight_value = layer.inputs[1]
    weight = weight_value.const_value.numpy()
    shape = weight.shape
    matrix, groups = _matrix(layer, weight)
    # one C-ordered copy (a transposed view would make every per-weight array of the loop
    # F-ordered, and LayerRows copy each back), and the read weight let go
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    del weight
    enc = encodings.params[weight_value.name]
    if groups == 1:
        x_q = x_q[:, 0, :]
    step = (lambda it, n, name=layer.name: layer_progress(name, it, n)) if layer_progress else None
    began = time.perf_counter()
    rounded, stats = adaround_matrix(matrix, _matrix_encoding(layer, enc), x_q, target,
                                     options.params, groups=groups, progress=step)
    del matrix
    new_weight = np.ascontiguousarray(_from_matrix(layer, rounded, shape), dtype=np.float32)
    set_initializer(model, weight_value, new_weight)
    encodings.params[weight_value.name] = enc.with_frozen(True)
    result.layers.append(LayerReport(layer.name, time.perf_counter() - began, stats["loss_nearest"],
                                     stats["loss_adaround"], stats["flipped"], stats["kept_nearest"]))
    return new_weight

