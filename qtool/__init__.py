"""qtool: quantize ONNX models the AIMET way, from the shell.

A quantized model is a pair: the float ONNX model and an AIMET-format encodings file. Every
step reads a pair and writes a new one; the QDQ model is derived from the pair when needed.
"""

from qtool._version import __version__

__all__ = ["__version__"]
