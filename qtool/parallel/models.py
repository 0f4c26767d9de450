"""A model as a task argument: its bytes (one serialised protobuf, weights inline) and back."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.ir.graph import model_bytes

SOURCE = "qtool.source"  # the model's file name in its meta (runtime.sessions.model_source): errors name it


def to_bytes(model: ir.Model) -> bytes:
    """The model's bytes for a task; a model over protobuf's 2 GB is a one-line error."""
    try:
        return model_bytes(model)
    except ValueError as exc:  # protobuf: "... exceeds maximum protobuf size of 2GB"
        raise QtoolError(f"{model.meta.get(SOURCE, 'the model')}: too large to send to tasks as one protobuf "
                         f"({exc})", "use --executor local for models over 2 GB") from None


def from_bytes(data: bytes, source: str = "the model") -> ir.Model:
    """The model a task was sent, named `source` in its errors."""
    model = ir.from_proto(onnx.load_model_from_string(data))
    model.meta[SOURCE] = source
    return model
