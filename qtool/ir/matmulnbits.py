"""Export per-block MatMul / Gemm weights as onnxruntime's com.microsoft MatMulNBits.

MatMulNBits(A, B, scales[, zero_points]) computes A @ dequant(B) with B stored [N, n_blocks,
block_size * bits / 8] (codes of each output column's blocks, low bits first), scales
[N * n_blocks] and zero points packed the same way (default 2^(bits-1): a signed grid stored +8
needs none). onnxruntime runs it with its 4/8-bit kernels on the CPU, unpacking blocks on the
fly, so the weights stay at 4 bits in memory. It needs a block size that is a power of two >= 16.

The model is the plain QDQ model (`qtool.ir.qdq`) for every other quantizer (W4A16: the 16-bit
activation Q/DQ pairs stay), with each eligible layer replaced: MatMul -> MatMulNBits; Gemm
(transA 0, alpha 1) -> MatMulNBits with a transposed weight when transB is 0, and its C added by
an Add (times beta). ``accuracy_level`` is left at 0 (float32 accumulation of the dequantized
weights): the outputs equal the DequantizeLinear form within float rounding.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.ir.graph import add_initializer, clone, unique_name
from qtool.ir.layers import attr_float, attr_int
from qtool.ir.qdq import MS_DOMAIN, build_qdq_model
from qtool.quant.blockwise import BlockEncoding, matmulnbits_arrays

NBITS = (4, 8)  # bit-widths onnxruntime's CPU MatMulNBits runs


def nbits_problem(node: ir.Node, enc: object) -> str | None:
    """Why the layer cannot become MatMulNBits (None when it can)."""
    if not isinstance(enc, BlockEncoding):
        return "its weight is not per block"
    if enc.bw not in NBITS:
        return f"{enc.bw}-bit weights (MatMulNBits: {' or '.join(map(str, NBITS))})"
    if enc.block_size < 16 or enc.block_size & (enc.block_size - 1):
        return f"block size {enc.block_size} (MatMulNBits: a power of two >= 16)"
    if node.op_type == "Gemm" and (attr_int(node, "transA", 0) or attr_float(node, "alpha", 1.0) != 1.0):
        return "Gemm with transA or alpha"
    return None


def matmulnbits_model(model: ir.Model, encodings: EncodingSet, source: str = "encodings"
                      ) -> tuple[ir.Model, dict[str, str]]:
    """The QDQ model with every eligible per-block layer as MatMulNBits, and {layer: why not}
    for the per-block layers left in DequantizeLinear form."""
    model = clone(model)  # layers are found again in the QDQ model by name: unnamed ones get one
    layers, skipped = {}, {}
    for index, node in enumerate(model.graph):
        if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        enc = encodings.params.get(node.inputs[1].name)
        if isinstance(enc, BlockEncoding):
            node.name = node.name or f"qtool_layer_{index}_{node.op_type}"
            problem = nbits_problem(node, enc)
            if problem:
                skipped[node.name] = problem
            else:
                layers[node.name] = enc
    if not layers:
        raise QtoolError(f"{source}: no MatMul/Gemm weight has a per-block encoding MatMulNBits can run"
                         + (f" ({next(iter(skipped.values()))})" if skipped else ""),
                         "calibrate with --weight-block-size 32 (4 or 8 bits) and --encoding-version 2.0.0")
    weights = {node.inputs[1].name for node in model.graph if node.name in layers}
    rest = EncodingSet(encodings.activations, {n: e for n, e in encodings.params.items() if n not in weights},
                       encodings.quantizer_args, encodings.excluded)
    qdq = build_qdq_model(model, rest, integer_bias=True, source=source)
    for node in list(qdq.graph):
        if node.name in layers and node.op_type in ("MatMul", "Gemm"):
            _replace(qdq, node, layers[node.name])
    qdq.opset_imports.setdefault(MS_DOMAIN, 1)
    return qdq, skipped


def _replace(qdq: ir.Model, node: ir.Node, enc: BlockEncoding) -> None:
    weight_value = node.inputs[1]
    weights = weight_value.const_value.numpy()
    if enc.axis == 1:  # Gemm transB: [N, K] blocked along K
        weights = weights.T
        enc = BlockEncoding(enc.bw, enc.scale.T, enc.offset.T, enc.symmetric, 0, enc.block_size)
    k, n = weights.shape
    b, scales, zero_points = matmulnbits_arrays(weights, enc)
    base = weight_value.name
    inputs = [node.inputs[0], add_initializer(qdq, f"{base}_nbits", b), add_initializer(qdq, f"{base}_nbits_scales", scales)]
    if zero_points is not None:
        inputs.append(add_initializer(qdq, f"{base}_nbits_zero_points", zero_points))
    out = node.outputs[0]
    extra: list[ir.Node] = []
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = node.inputs[2]
        beta = attr_float(node, "beta", 1.0)
        if beta != 1.0:
            bias = add_initializer(qdq, f"{base}_nbits_bias", (bias.const_value.numpy() * beta).astype(np.float32)) \
                if bias.const_value is not None else bias
        extra = [ir.node("Add", [node.inputs[0], bias], outputs=[ir.Value(name=unique_name(qdq, f"{out.name}_add"))],
                         name=unique_name(qdq, f"{node.name or out.name}_bias"))]
    fused = ir.node("MatMulNBits", inputs, {"K": k, "N": n, "bits": enc.bw, "block_size": enc.block_size},
                    domain=MS_DOMAIN, outputs=[ir.Value(name=unique_name(qdq, f"{out.name}_nbits_out"))],
                    name=unique_name(qdq, f"{node.name or out.name}_MatMulNBits"))
    new_nodes = [fused, *extra]
    last = new_nodes[-1].outputs[0]
    qdq.graph.insert_before(node, new_nodes)
    if extra:
        extra[0].replace_input_with(0, fused.outputs[0])
    last.dtype, last.shape = out.dtype, out.shape
    out.replace_all_uses_with(last, replace_graph_outputs=True)
    name = out.name
    qdq.graph.remove(node, safe=True)
    last.name = name  # the encodings (and users) know the output by its name
    if not weight_value.uses() and weight_value.name in qdq.graph.initializers:
        qdq.graph.initializers.pop(weight_value.name)
