"""`Pair`: a quantized model in memory (the float model and its encodings), and `load`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qtool.commands.report import Report
from qtool.errors import QtoolError

IN_MEMORY = "<in memory>"


@dataclass
class Pair:
    """The float model (an `onnx_ir.Model`) and its encodings (an `EncodingSet`, None until
    calibrated), with where they came from and the Report of the step that made them.

    `path` is the model file while the model is that file's unchanged content (commands then
    copy it rather than save it again); `source` names the encodings in messages."""

    model: Any
    encodings: Any = None
    path: Path | None = None
    source: str = IN_MEMORY
    report: Report | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """The model's name in messages: its file, or '<in memory>'."""
        return str(self.path) if self.path is not None else IN_MEMORY

    def save(self, prefix: str | os.PathLike) -> Path:
        """Write PREFIX.onnx and, when calibrated, PREFIX.encodings.json (together, atomically);
        returns the model's path. `prefix` may also end in .onnx."""
        from qtool.commands.inputs import output_prefix
        from qtool.encodings.write import save_encodings
        from qtool.files.atomic import StagedOutputs
        from qtool.ir.graph import save_model

        prefix = output_prefix(prefix)
        with StagedOutputs() as out:
            save_model(self.model, out.path(f"{prefix}.onnx"))
            if self.encodings is not None:
                save_encodings(self.encodings, out.path(f"{prefix}.encodings.json"))
        return Path(f"{prefix}.onnx")

    def qdq(self) -> Any:
        """The QDQ model this pair stands for (QuantizeLinear/DequantizeLinear inserted)."""
        from qtool.ir.qdq import build_qdq_model

        return build_qdq_model(self.model, self._encodings("qdq"))

    def _encodings(self, what: str) -> Any:
        if self.encodings is None:
            raise QtoolError(f"{self.label}: {what} needs encodings, and this model has none",
                             "qtool.calibrate(...) it first, or qtool.load(model, encodings=...)")
        return self.encodings

    def with_report(self, report: Report) -> Pair:
        return replace(self, report=report)

    def __repr__(self) -> str:
        encodings = "no encodings" if self.encodings is None else \
            f"{len(self.encodings.activations)} activation + {len(self.encodings.params)} param encodings"
        return f"Pair({self.label}, {encodings})"


def load(model: str | os.PathLike | Any, encodings: str | os.PathLike | None = None) -> Pair:
    """A model and its encodings: `encodings` given, else the model's sibling MODEL.encodings.json
    when it exists (what `qtool calibrate` writes), else none. `model` may also be an onnx
    ModelProto or onnx_ir Model already in memory."""
    from qtool.commands.inputs import default_encodings_path, load_pair
    from qtool.ir.graph import load_model, model_from_proto

    if isinstance(model, Pair):
        return model
    if not isinstance(model, (str, os.PathLike)):
        return Pair(model_from_proto(_proto(model), IN_MEMORY))
    if encodings is None and not default_encodings_path(model).exists():
        return Pair(load_model(model), path=Path(model))
    graph, enc_set, source = load_pair(model, encodings)
    return Pair(graph, enc_set, Path(model), source)


def _proto(model: Any) -> Any:
    import onnx
    import onnx_ir as ir

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return ir.to_proto(model)
    raise QtoolError(f"expected a model file, an onnx.ModelProto, an onnx_ir.Model or a qtool Pair, "
                     f"got {type(model).__name__}")
