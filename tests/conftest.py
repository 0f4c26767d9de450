"""Shared test helpers: running qtool's real entry point in-process with the logging restored."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from qtool.cli import main


@pytest.fixture(autouse=True, scope="session")
def _reference_cache(tmp_path_factory):
    """The float-output cache (qtool.runtime.reference_cache) of the test run lives in a temp folder, not ~/.cache."""
    os.environ.setdefault("QTOOL_CACHE_DIR", str(tmp_path_factory.mktemp("qtool-cache")))


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI reconfigures the root logger onto the current (captured) stderr; undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_main(args, capsys) -> tuple[int, str, str]:
    """qtool's real entry point in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A folder with d.npz: 16 Gaussian samples for the 3x32x32 synthetic models."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", input=rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    return folder


@functools.lru_cache(maxsize=1)
def integer_kernels_saturate() -> bool:
    """Whether this CPU's onnxruntime u8 x s8 kernels saturate (x86 without VNNI).

    Without VNNI, onnxruntime multiplies uint8 activations by int8 weights with VPMADDUBSW, whose
    pairwise sums saturate at int16 (its documentation recommends reduce_range there). An exported
    QDQ model is then computed differently by onnxruntime on this machine than on the target:
    probed with one fused Gemm whose exact result (K = 64 products of 255 x -128) differs from
    the saturated one by 64 output steps.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.float32(1.0), "one"), numpy_helper.from_array(np.uint8(0), "zx"),
             numpy_helper.from_array(np.full((1, 64), -128, np.int8), "wq"), numpy_helper.from_array(np.int8(0), "zw"),
             numpy_helper.from_array(np.float32(16384.0), "sy"), numpy_helper.from_array(np.uint8(200), "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "one", "zw"], ["wd"]),
             helper.make_node("Gemm", ["xd", "wd"], ["g"], transB=1),
             helper.make_node("QuantizeLinear", ["g", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    exact = round(64 * 255 * -128 / 16384) * 16384  # -2088960 -> -127.5 steps -> -128 (round half to even)
    return abs(float(session.run(None, {"x": np.full((1, 64), 255, np.float32)})[0][0, 0]) - exact) > 16384
