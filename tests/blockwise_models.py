"""Tiny MatMul models for the block-wise tests, built at test time with onnx.helper.

`mlp`: x [N, T, 64] -> MatMul 64x96 -> Add -> Relu -> MatMul 96x32 (-> y), plus a Gemm (transB)
64 -> 16 on the same input (-> z): every layout the block code handles, with inputs whose
columns differ in scale (so that the layer Hessian is far from a multiple of the identity, where
GPTQ has something to gain over rounding to nearest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp(path: Path, *, k: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((k, 96)) / np.sqrt(k)).astype(np.float32)
    b1 = (rng.standard_normal(96) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((96, 32)) / np.sqrt(96)).astype(np.float32)
    w3 = (rng.standard_normal((16, k)) / np.sqrt(k)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
             helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten"),
             helper.make_node("Gemm", ["x2", "w3"], ["z"], transB=1, name="head")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"))]
    inits.append(numpy_helper.from_array(np.array([-1, k], np.int64), "flat"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 32]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def data(path: Path, *, k: int = 64, samples: int = 32, seed: int = 1) -> Path:
    """Inputs whose columns are correlated and differ 10x in scale."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    x = (rng.standard_normal((samples, 8, k)) @ mix) * np.geomspace(0.3, 3, k)
    np.savez(path, x=x.astype(np.float32))
    return path
