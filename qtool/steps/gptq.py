"""GPTQ over a model, one MatMul / Gemm layer at a time (`qtool.quant.gptq` has the math).

For every MatMul / Gemm whose weight has an integer encoding (per block, per channel or per
tensor; frozen ones are left alone), in graph order: the Hessian X^T X of the layer's input rows
is accumulated batch by batch from the model *quantized so far* (earlier layers already GPTQ-
rounded, activations quantized where the encodings say so), as the paper does; the weights are
rounded by GPTQ on the encoding's own grid (the encodings do not change), written into the model
and the encoding is frozen, so that `calibrate --encodings` keeps it as it keeps AdaRound's.

Streaming follows `qtool.steps.adaround`: `qtool.runtime.segmented` runs only the nodes between
the previous layer and this one from activations cached at the boundary (RAM up to a budget,
memory-mapped files beyond), so all layers together cost one pass, and only one K x K Hessian
is held at a time (layers reading the same tensor, such as Q/K/V, share it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.graph import clone, set_initializer
from qtool.ir.qdq import build_qdq_model, requantize_param
from qtool.progress import Progress, no_progress
from qtool.quant import Encoding, quantize_dequantize
from qtool.quant.blockwise import BlockEncoding, expand, quantize_dequantize_blocks
from qtool.quant.gptq import GptqParams, gptq_round
from qtool.runtime.segmented import SegmentedRunner
from qtool.runtime.sessions import keep_source, max_batch, split_batches
from qtool.steps.blockwise import reduction_axis

Batches = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class GptqLayer:
    layer: str
    error_nearest: float  # ||X (W - Q)|| / ||X W|| on the layer's input rows, round-to-nearest
    error_gptq: float  # the same for GPTQ
    seconds: float


@dataclass
class GptqResult:
    model: ir.Model
    encodings: EncodingSet
    layers: list[GptqLayer] = field(default_factory=list)
    seconds: float = 0.0


def _layers(model: ir.Model, encodings: EncodingSet) -> list[tuple[ir.Node, int]]:
    """(layer, reduction axis of its weight) in graph order; unnamed layers get a name."""
    chosen, seen = [], set()
    for index, node in enumerate(model.graph):
        axis = reduction_axis(node) if node.op_type in ("MatMul", "Gemm") else None
        enc = encodings.params.get(node.inputs[1].name) if axis is not None else None
        if enc is None or enc.is_float or enc.frozen or enc.bw > 16 or node.inputs[1].name in seen:
            continue  # a weight shared by two layers is rounded for the first
        seen.add(node.inputs[1].name)
        if not node.name:
            node.name = f"qtool_layer_{index}_{node.op_type}"
        chosen.append((node, axis))
    return chosen


def _grid(enc: Encoding | BlockEncoding, shape: tuple[int, ...], axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset of every weight, as [N, K] (rows: outputs, columns: the reduction axis)."""
    if isinstance(enc, BlockEncoding):
        scale = expand(enc.scale, enc.axis, enc.block_size, shape[enc.axis])
        offset = expand(enc.offset.astype(np.float64), enc.axis, enc.block_size, shape[enc.axis])
    else:
        reshape = [1, 1]
        if enc.per_channel:
            reshape[enc.axis] = -1
        scale = np.broadcast_to(enc.scale.reshape(reshape), shape)
        offset = np.broadcast_to(enc.offset.astype(np.float64).reshape(reshape), shape)
    return (scale.T, offset.T) if axis == 0 else (scale, offset)


def _nearest(weights: np.ndarray, enc: Encoding | BlockEncoding) -> np.ndarray:
    return quantize_dequantize_blocks(weights, enc) if isinstance(enc, BlockEncoding) else \
        quantize_dequantize(weights, enc)


def _relative_error(delta: np.ndarray, weights: np.ndarray, hessian: np.ndarray) -> float:
    """sqrt(tr(D H D^T) / tr(W H W^T)) for [N, K] matrices: ||X D^T|| / ||X W^T||."""
    num = float(np.sum((delta @ hessian) * delta))  # (an einsum of the three was 100x slower: no BLAS)
    den = float(np.sum((weights @ hessian) * weights))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


def gptq(model: ir.Model, encodings: EncodingSet, batches: Batches, params: GptqParams = GptqParams(), *,
         cache_bytes: int = 2 << 30, progress: Progress = no_progress, source: str = "encodings") -> GptqResult:
    """GPTQ-round every eligible layer; returns the new model and encodings (those weights frozen)."""
    start = time.perf_counter()
    limit = max_batch(model)
    if limit is not None:  # a batch dim fixed (to 1): feed pieces the model accepts
        whole = batches
        batches = lambda: split_batches(whole(), limit)  # noqa: E731
    model = keep_source(clone(model), model)
    encodings = encodings.copy()
    result = GptqResult(model, encodings)
    layers = _layers(model, encodings)
    if not layers:
        return result
    runner = SegmentedRunner(batches(), cache_bytes)
    quant = build_qdq_model(model, encodings, source=source)
    quant_layers = {node.name: node for node in quant.graph}
    hessians: dict[str, np.ndarray] = {}
    progress(0, len(layers))
    try:
        for index, (layer, axis) in enumerate(layers):
            began = time.perf_counter()
            node = quant_layers[layer.name]
            want = node.inputs[0].name
            rows = runner.advance(quant, layer.name, want)
            if want not in hessians:  # Q/K/V read one tensor: its Hessian once (nothing upstream changes)
                hessians.clear()
                hessians[want] = _hessian(rows)
            else:
                for _ in rows:  # the runner still has to reach this layer
                    pass
            weight_value = layer.inputs[1]
            weights = weight_value.const_value.numpy()
            enc = encodings.params[weight_value.name]
            scale, offset = _grid(enc, weights.shape, axis)
            matrix = weights.T if axis == 0 else weights
            rounded = gptq_round(matrix, scale, offset, enc.qmax, hessians[want], params)
            new_weights = (rounded.T if axis == 0 else rounded).astype(np.float32)
            set_initializer(model, weight_value, new_weights)
            encodings.params[weight_value.name] = enc.with_frozen(True)
            requantize_param(quant, node, 1, new_weights, enc)
            nearest = _nearest(weights, enc)
            h = hessians[want]
            result.layers.append(GptqLayer(
                layer.name, _relative_error((nearest - weights).T if axis == 0 else nearest - weights, matrix, h),
                _relative_error(rounded - matrix, matrix, h), time.perf_counter() - began))
            progress(index + 1, len(layers))
    finally:
        runner.close()
    result.seconds = time.perf_counter() - start
    return result


def _hessian(rows: Iterable[tuple[int, np.ndarray]]) -> np.ndarray:
    """X^T X (float64) over every row of the layer's input, batch by batch."""
    total = None
    for _, x in rows:
        flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        total = flat.T @ flat if total is None else total + flat.T @ flat
    return total
