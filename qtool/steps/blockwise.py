"""Per-block weight encodings for the MatMul / Gemm weights of a calibrated pair.

Calibration plans and computes every encoding as usual (bit-width and symmetry from the config and
--param-bw); this step then gives each MatMul / Gemm weight that has an integer encoding one
scale per ``block_size`` inputs instead (`qtool.quant.blockwise`), blocks along the reduction
axis: axis 0 of a MatMul weight [K, N] and of a Gemm weight without transB, axis 1 with transB.
Other weights (convolutions, embeddings, norms) keep their encodings; a convolution's weight, a
weight read by more than one layer, or as anything but input B of a plain MatMul/Gemm, is left
alone and reported (CONV_KEPT says why convolutions are).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.layers import attr_int
from qtool.quant.blockwise import BlockEncoding, encode_blocks


# Why a convolution's weight keeps its encoding (docs/blockwise.md): blocks along C_in are what
# DequantizeLinear's block_size can express (a scale per output channel, block and kernel tap), and
# simulate runs them, but onnxruntime 1.32 fuses DequantizeLinear(block_size) -> Conv ->
# QuantizeLinear into QLinearConv, which rejects the block scales when the exported model runs
# ("QLinearConv : filter scale shape invalid"): an export would not load-and-run where it matters.
CONV_KEPT = "a convolution's weight (onnxruntime fuses a per-block Conv into QLinearConv, which rejects block scales)"


@dataclass
class BlockResult:
    encodings: EncodingSet
    blocked: list[str] = field(default_factory=list)  # weights now per block
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (weight, why not)


def reduction_axis(node: ir.Node) -> int | None:
    """The input (reduction) axis of input 1 of a MatMul / Gemm, None for other layouts."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
        return None
    if node.op_type == "MatMul":
        return 0
    if node.op_type == "Gemm" and not attr_int(node, "transA", 0):
        return 1 if attr_int(node, "transB", 0) else 0
    return None


def block_layers(model: ir.Model) -> dict[str, tuple[ir.Node, int]]:
    """Weight name -> (its one MatMul/Gemm consumer, block axis), for weights that can be blocked."""
    found: dict[str, tuple[ir.Node, int]] = {}
    for node in model.graph:
        axis = reduction_axis(node) if node.op_type in ("MatMul", "Gemm") else None
        if axis is None:
            continue
        weight = node.inputs[1]
        if len(weight.uses()) == 1 and not weight.is_graph_output():
            found[weight.name] = (node, axis)
    return found


def block_encodings(model: ir.Model, encodings: EncodingSet, block_size: int, *, lpbq: bool = False,
                    search: bool = False) -> BlockResult:
    """A copy of `encodings` whose MatMul / Gemm weight encodings are per block (min-max over
    each block, or the range with the least squared error with `search`; the calibrated
    encoding's bit-width and symmetry). Frozen encodings are kept."""
    out = encodings.copy()
    result = BlockResult(out)
    layers = block_layers(model)
    for name, enc in encodings.params.items():
        if isinstance(enc, BlockEncoding) or enc.is_float or enc.frozen:
            continue
        if name not in layers:
            consumers = {node.op_type for node in _consumers(model, name)}
            if consumers & {"MatMul", "Gemm"}:
                result.skipped.append((name, "shared, transposed input A, or not 2-D"))
            elif consumers & {"Conv", "ConvTranspose"}:
                result.skipped.append((name, CONV_KEPT))
            continue
        node, axis = layers[name]
        weights = node.inputs[1].const_value.numpy()
        symmetric = enc.symmetric or lpbq
        out.params[name] = encode_blocks(weights, axis, block_size, enc.bw, symmetric, lpbq=lpbq, search=search)
        result.blocked.append(name)
    return result


def _consumers(model: ir.Model, name: str) -> list[ir.Node]:
    return [node for node in model.graph if any(v is not None and v.name == name for v in node.inputs)]
