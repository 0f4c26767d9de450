"""qtool: quantize ONNX models the AIMET way, from the shell or from Python.

A quantized model is a pair: the float ONNX model and an AIMET-format encodings file. Every
step reads a pair and writes a new one; the QDQ model is derived from the pair when needed.

The stable names are the ones below (docs/api.md); everything else is private and may move.

    import qtool
    pair = qtool.calibrate("model.onnx", data={"input": calibration_array}, config="w8a8-per-channel")
    print(qtool.simulate(pair, data=evaluation_arrays).summary["outputs"])
    pair.save("out/model")

They are imported on first use, so `import qtool` stays as light as the command line's start.
"""

from __future__ import annotations

import importlib
from typing import Any

from qtool._version import __version__

_PUBLIC = {
    "load": "qtool.api.pair", "Pair": "qtool.api.pair",
    "calibrate": "qtool.api.functions", "fold": "qtool.api.functions", "equalize": "qtool.api.functions",
    "bias_correct": "qtool.api.functions", "adaround": "qtool.api.functions", "simulate": "qtool.api.functions",
    "export": "qtool.api.functions", "analyze": "qtool.api.functions",
    "Report": "qtool.commands.report", "QtoolError": "qtool.errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'qtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
