"""Export: the deployable artefacts of a pair, AIMET style.

NAME.onnx is the float model (tensor names match the encodings), NAME.encodings the encodings
JSON, NAME_qdq.onnx a QDQ model with integer weights and int32 biases that onnxruntime runs with
its integer kernels (QDQ fusion allowed there, unlike in simulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.qdq import build_qdq_model


@dataclass
class ExportResult:
    float_model: ir.Model
    encodings: EncodingSet
    qdq_model: ir.Model


def export(model: ir.Model, encodings: EncodingSet, *, source: str = "encodings") -> ExportResult:
    """Build the deployable QDQ model; the float model and encodings pass through unchanged."""
    qdq = build_qdq_model(model, encodings, integer_bias=True, source=source)
    qdq.producer_name = "qtool"
    return ExportResult(model, encodings, qdq)
