"""Checks of a model the user gives: weights that are NaN or infinite, nodes of custom domains.

A NaN or infinite weight makes every range, scale and SQNR derived from it NaN (simulate printed
`SQNR nan dB ... max |err| 0`), so a model holding one is refused at load, naming the tensor.
NaN is refused in any float initializer; an infinity only where the initializer is a layer's
weight, bias or normalisation parameter: elsewhere +-inf is a legitimate constant (a Clip bound,
an additive attention mask).

A node of a custom domain (`com.example:MyOp`) may have no kernel in onnxruntime: `custom_nodes`
lists them, and `qtool.runtime.custom_ops` asks onnxruntime whether it can run them.
"""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir

from qtool.errors import QtoolError

# op type -> input positions that hold the layer's parameters
LAYER_PARAMS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
                "BatchNormalization": (1, 2, 3, 4), "LayerNormalization": (1, 2),
                "InstanceNormalization": (1, 2), "PRelu": (1,), "Gather": (0,), "Einsum": (0, 1, 2)}
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training"}
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def _layer_param_names(model: ir.Model) -> set[str]:
    names = set()
    for node in model.graph.all_nodes():
        for index in LAYER_PARAMS.get(node.op_type, ()):
            if index < len(node.inputs) and node.inputs[index] is not None:
                names.add(node.inputs[index].name)
    return names


def check_weights(model: ir.Model, source: str | os.PathLike) -> None:
    """Refuse NaN in any float initializer and +-inf in a layer's parameters, naming the tensor."""
    layer_params = None
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or tensor.dtype not in _FLOATS:
            continue
        array = np.asarray(tensor.numpy(), np.float32 if tensor.dtype == ir.DataType.BFLOAT16 else None)
        finite = np.isfinite(array)
        if finite.all():
            del array, finite
            _unmap(tensor)
            continue
        nan = int(np.count_nonzero(np.isnan(array)))
        if not nan:
            layer_params = _layer_param_names(model) if layer_params is None else layer_params
            if name not in layer_params:
                continue
        bad = int(finite.size - np.count_nonzero(finite))
        where = np.unravel_index(int(np.argmin(finite.reshape(-1))), array.shape) if array.ndim else ()
        kind = "NaN" if nan else "infinite"
        raise QtoolError(f"{source}: weight tensor '{name}' holds {bad:,} {kind} value(s) (first at index "
                         f"{tuple(int(i) for i in where)})",
                         "the model is broken: re-export it from a checkpoint whose weights are finite")


def _unmap(tensor: ir.TensorProtocol) -> None:
    """Unmap a memory-mapped weight once checked: a large model's pages do not stay resident."""
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:  # an array made from it is still alive
            pass


def custom_nodes(model: ir.Model) -> list[ir.Node]:
    """Nodes of domains onnxruntime does not ship (in the main graph and subgraphs)."""
    return [node for node in model.graph.all_nodes() if node.domain not in STANDARD_DOMAINS]
