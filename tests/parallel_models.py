"""A model for the executor tests (built at test time): two convolutions with a constant Pad
between them, 16 x 64 x 64 values per sample after each, so calibration samples those tensors
(runtime/stats_graph.py: tensors of >= 2^16 values per sample) and derives the Pad's histogram
(steps/calibrate_pads.py); `dynamic` leaves H and W open for data whose shape changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 64


def conv_pad_model(path: Path, *, dynamic: bool = False) -> Path:
    rng = np.random.default_rng(3)
    h, w = ("H", "W") if dynamic else (SIZE, SIZE)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3),
        ("b1", rng.standard_normal(16).astype(np.float32) * 0.1),
        ("w2", rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1),
        ("b2", rng.standard_normal(16).astype(np.float32) * 0.1),
        ("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        ("w3", rng.standard_normal((4, 16)).astype(np.float32)),
        ("b3", np.zeros(4, np.float32)),
    ]]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Pad", ["r1", "pads"], ["p1"], mode="constant", name="pad"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["output"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "conv_pad", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                ["N", 3, h, w])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def images(count: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Gaussian images with rare rows of outliers (the tails decide the sqnr ranges)."""
    x = np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)
    x[::7, :, 3:5] *= 25
    return x
