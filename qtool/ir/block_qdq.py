"""Per-block weights in the QDQ model: an integer initializer + opset-21 DequantizeLinear with
``block_size`` (`qtool.quant.blockwise` has the layout and the math).

Weights of up to 4 bits are stored as int4 (signed, symmetric grids) or uint4 (asymmetric), 5-8
bits as int8/uint8; onnx_ir packs int4 two to a byte, low nibble first, as the ONNX spec says.
Wider grids have no integer type DequantizeLinear reads with blocks in onnxruntime, so they are
stored fake-quantized in float, as `qtool.ir.qdq` does for wide per-channel weights.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.ir.graph import add_initializer, unique_name
from qtool.quant.blockwise import BlockEncoding, quantize_dequantize_blocks, stored_integers, zero_points

BLOCK_OPSET = 21  # DequantizeLinear's block_size and the int4/uint4 types


def storage_type(enc: BlockEncoding) -> np.dtype:
    """The numpy type the stored integers and zero points have in the model."""
    if enc.bw <= 4:
        return np.dtype(ml_dtypes.int4 if enc.signed else ml_dtypes.uint4)
    return np.dtype(np.int8 if enc.signed else np.uint8)


def stored_array(weights: np.ndarray, enc: BlockEncoding) -> np.ndarray:
    """The initializer DequantizeLinear reads (int4/uint4/int8/uint8), or the fake-quantized float
    weight for grids wider than 8 bits."""
    if enc.bw > 8:
        return quantize_dequantize_blocks(weights, enc)
    return stored_integers(weights, enc).astype(storage_type(enc))


def block_param_quantizer(qdq: ir.Model, value: ir.Value, enc: BlockEncoding) -> tuple[list[ir.Node], ir.Value]:
    """Nodes and the value holding the dequantized weight (not wired to its consumers yet)."""
    weights = value.const_value.numpy()
    problem = enc.fits(tuple(weights.shape))
    if problem:
        raise QtoolError(f"per-block encoding of '{value.name}': {problem}",
                         "were the encodings computed for another model?")
    if enc.bw > 8:
        return [], add_initializer(qdq, f"{value.name}_fakequant", stored_array(weights, enc))
    stored = add_initializer(qdq, f"{value.name}_quantized", stored_array(weights, enc))
    scale = add_initializer(qdq, f"{value.name}_scale", enc.scale)
    zero = add_initializer(qdq, f"{value.name}_zero_point", zero_points(enc).astype(storage_type(enc)))
    out = ir.Value(name=unique_name(qdq, f"{value.name}_dequantized"))
    node = ir.node("DequantizeLinear", [stored, scale, zero], {"axis": enc.axis, "block_size": enc.block_size},
                   outputs=[out], name=unique_name(qdq, f"{value.name}_DequantizeLinear"))
    out.dtype, out.shape = ir.DataType.FLOAT, ir.Shape(weights.shape)
    return [node], out


def has_blocks(params: dict) -> bool:
    return any(isinstance(enc, BlockEncoding) for enc in params.values())
