"""Pure quantization math on numpy arrays (no onnx import): encodings, quantizers, observers."""

from qtool.quant.encoding import (
    Encoding,
    QuantSpec,
    compute_encoding,
    dequantize,
    encode_tensor,
    float_encoding,
    quantize,
    quantize_dequantize,
)

__all__ = [
    "Encoding",
    "QuantSpec",
    "compute_encoding",
    "dequantize",
    "encode_tensor",
    "float_encoding",
    "quantize",
    "quantize_dequantize",
]

from qtool.quant.observers import SCHEMES, encode_param, make_observer  # noqa: E402

__all__ += ["SCHEMES", "encode_param", "make_observer"]
