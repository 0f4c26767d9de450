"""A node's attributes as plain Python values, read once when the graph is lowered.

Each op function in `ops_*.py` takes an `Attrs` first and its ONNX inputs after it; it asks for
an attribute with the default the ONNX spec gives (`at.int("group", 1)`), so the defaults live
next to the code that uses them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qtool.errors import QtoolError


class Attrs:
    """The attributes of one node, the model's opset, and the node's name for messages."""

    def __init__(self, values: dict[str, Any], opset: int, node: str, op_type: str, outputs: int = 1) -> None:
        self.values = values
        self.opset = opset
        self.node = node
        self.op_type = op_type
        self.outputs = outputs  # how many outputs the node has (Split without sizes divides by it)

    @classmethod
    def of(cls, node, opset: int) -> "Attrs":
        """From an onnx_ir node: ints, floats, strings, lists of them, tensors as numpy arrays."""
        values = {}
        for name, attr in node.attributes.items():
            value = attr.value
            if hasattr(value, "numpy"):
                value = value.numpy()
            elif isinstance(value, (list, tuple)):
                value = list(value)
            values[name] = value
        return cls(values, opset, node.name or node.op_type, node.op_type, len(node.outputs))

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def int(self, name: str, default: int | None = None) -> int | None:
        value = self.values.get(name, default)
        return None if value is None else int(value)

    def float(self, name: str, default: float | None = None) -> float | None:
        value = self.values.get(name, default)
        return None if value is None else float(value)

    def ints(self, name: str, default: list[int] | None = None) -> list[int] | None:
        value = self.values.get(name, default)
        return None if value is None else [int(v) for v in value]

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name, default)
        if isinstance(value, bytes):
            value = value.decode()
        return value

    def tensor(self, name: str) -> np.ndarray | None:
        value = self.values.get(name)
        return None if value is None else np.asarray(value)

    def unsupported(self, what: str) -> QtoolError:
        """The error for an attribute value the lowering does not implement (named, one line)."""
        return QtoolError(f"node '{self.node}' ({self.op_type}): {what} is not supported by qat's torch lowering",
                          "see docs/qat.md for the supported ops")
