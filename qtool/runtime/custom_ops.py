"""Ops onnxruntime cannot run: a node of a custom domain (`com.example:MyOp`) with no kernel.

Such a model cannot be simulated or exported. Commands that run the model call
`check_custom_ops`, which names the node, its op and domain; a model onnxruntime runs (contrib
ops, a registered library) passes through.
"""

from __future__ import annotations

import onnx_ir as ir
import onnxruntime as ort

from qtool.errors import QtoolError
from qtool.ir.checks import custom_nodes
from qtool.ir.tensor_files import session_source


def custom_op_error(model: ir.Model, source: str) -> QtoolError | None:
    """The error to report when onnxruntime cannot load a model because of a custom-domain op."""
    nodes = custom_nodes(model)
    if not nodes:
        return None
    node = nodes[0]
    others = f" (and {len(nodes) - 1} more custom node(s))" if len(nodes) > 1 else ""
    return QtoolError(f"{source}: node '{node.name or node.op_type}' is op '{node.op_type}' of the custom domain "
                      f"'{node.domain}', which onnxruntime cannot run{others}",
                      "qtool runs the model in onnxruntime: replace the op by standard ONNX ops, or quantize "
                      "the model before the custom op is added")


def check_custom_ops(model: ir.Model, source: str) -> None:
    """Refuse a model with custom-domain ops that onnxruntime cannot load (one try, only when the
    model has such ops)."""
    if not custom_nodes(model):
        return
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        serialised, folder = session_source(model)
        if folder is not None:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
        ort.InferenceSession(serialised, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise custom_op_error(model, source) from exc
