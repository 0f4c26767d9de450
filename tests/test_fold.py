"""BatchNorm folding keeps outputs (float reference) and refuses what it cannot fold exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.ir.graph import model_bytes
from qtool.steps.fold import BN_STATS_KEY, fold_batch_norms

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
RNG = np.random.default_rng(7)


def run(model: ir.Model, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def bn_params(prefix: str, c: int) -> list:
    return [
        numpy_helper.from_array(RNG.uniform(0.5, 2.0, c).astype(np.float32), f"{prefix}_g"),
        numpy_helper.from_array(RNG.normal(0, 1, c).astype(np.float32), f"{prefix}_b"),
        numpy_helper.from_array(RNG.normal(0, 1, c).astype(np.float32), f"{prefix}_m"),
        numpy_helper.from_array(RNG.uniform(0.2, 3.0, c).astype(np.float32), f"{prefix}_v"),
    ]


def bn_node(prefix: str, x: str, y: str):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [y], epsilon=1e-3)


def make(nodes, inits, x_shape, y_name="y", opset=17) -> ir.Model:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    proto = onnx.shape_inference.infer_shapes(proto)
    return ir.from_proto(proto)


def check_equal(model: ir.Model, x_shape, expect_folded: int, expect_skipped: int = 0):
    x = RNG.normal(0, 1, x_shape).astype(np.float32)
    result = fold_batch_norms(model)
    before, after = run(model, {"x": x}), run(result.model, {"x": x})
    assert len(result.folded) == expect_folded, result.skipped
    assert len(result.skipped) == expect_skipped
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    return result


@pytest.mark.parametrize("group", [1, 2])
def test_conv_then_bn(group):
    w = numpy_helper.from_array(RNG.normal(0, 1, (4, 4 // group, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=group), bn_node("bn", "c", "y")]
    result = check_equal(make(nodes, [w, *bn_params("bn", 4)], [2, 4, 5, 5]), [2, 4, 5, 5], 1)
    assert [n.op_type for n in result.model.graph] == ["Conv"]
    assert result.model.graph.outputs[0].name == "y"  # the folded layer takes over the BN output name
    stats = json.loads(result.model.metadata_props[BN_STATS_KEY])
    assert set(stats) == {"y"} and len(stats["y"]["gamma"]) == 4


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_then_bn(group):
    w = numpy_helper.from_array(RNG.normal(0, 1, (4, 6 // group, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(0, 1, 6).astype(np.float32), "b")
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], strides=[2, 2], group=group),
             bn_node("bn", "c", "y")]
    check_equal(make(nodes, [w, b, *bn_params("bn", 6)], [2, 4, 5, 5]), [2, 4, 5, 5], 1)


def test_bias_add_between_layer_and_bn_folds_first_then_the_bn():
    """Paddle exports ConvTranspose -> Add(bias) -> BN (PP-OCRv4 det): the Add folds into the
    layer, which frees the BN; one call folds both (it had left the BN in place)."""
    w = numpy_helper.from_array(RNG.normal(0, 1, (4, 6, 2, 2)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(0, 1, (1, 6, 1, 1)).astype(np.float32), "b")
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], strides=[2, 2]),
             helper.make_node("Add", ["c", "b"], ["cb"]), bn_node("bn", "cb", "r"),
             helper.make_node("Relu", ["r"], ["y"])]
    result = check_equal(make(nodes, [w, b, *bn_params("bn", 6)], [2, 4, 5, 5]), [2, 4, 5, 5], 2)
    assert [n.op_type for n in result.model.graph] == ["ConvTranspose", "Relu"]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [False, True])
def test_gemm_then_bn(trans_b, with_c):
    w = RNG.normal(0, 1, (8, 5) if trans_b else (5, 8)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), *bn_params("bn", 8)]
    inputs = ["x", "w"]
    if with_c:
        inits.append(numpy_helper.from_array(RNG.normal(0, 1, 8).astype(np.float32), "c0"))
        inputs.append("c0")
    nodes = [helper.make_node("Gemm", inputs, ["c"], transB=trans_b, alpha=0.7, beta=1.3), bn_node("bn", "c", "y")]
    check_equal(make(nodes, inits, [3, 5]), [3, 5], 1)


def test_matmul_then_bn_adds_bias():
    w = numpy_helper.from_array(RNG.normal(0, 1, (5, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["c"]), bn_node("bn", "c", "y")]
    result = check_equal(make(nodes, [w, *bn_params("bn", 8)], [3, 5]), [3, 5], 1)
    assert [n.op_type for n in result.model.graph] == ["MatMul", "Add"]


def test_bn_then_unpadded_conv_folds_forward():
    w = numpy_helper.from_array(RNG.normal(0, 1, (6, 4, 1, 1)).astype(np.float32), "w")
    nodes = [bn_node("bn", "x", "n"), helper.make_node("Conv", ["n", "w"], ["y"])]
    result = check_equal(make(nodes, [w, *bn_params("bn", 4)], [2, 4, 5, 5]), [2, 4, 5, 5], 1)
    assert [n.op_type for n in result.model.graph] == ["Conv"]


def test_bn_then_padded_conv_is_left_with_reason():
    w = numpy_helper.from_array(RNG.normal(0, 1, (6, 4, 3, 3)).astype(np.float32), "w")
    nodes = [bn_node("bn", "x", "n"), helper.make_node("Conv", ["n", "w"], ["y"], pads=[1, 1, 1, 1])]
    result = check_equal(make(nodes, [w, *bn_params("bn", 4)], [2, 4, 5, 5]), [2, 4, 5, 5], 0, 1)
    assert "pads" in result.skipped[0][1]


def test_shared_weight_and_two_consumers_are_not_folded():
    w = numpy_helper.from_array(RNG.normal(0, 1, (4, 4, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"]), helper.make_node("Conv", ["c1", "w"], ["c2"]),
             bn_node("bn", "c2", "n"), helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Add", ["r", "n"], ["y"])]
    result = check_equal(make(nodes, [w, *bn_params("bn", 4)], [1, 4, 3, 3]), [1, 4, 3, 3], 0, 1)
    assert "shared" in result.skipped[0][1]


def test_per_channel_mul_and_add_after_conv_fold():
    w = numpy_helper.from_array(RNG.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), "w")
    s = numpy_helper.from_array(RNG.uniform(0.5, 2, (4, 1, 1)).astype(np.float32), "s")
    t = numpy_helper.from_array(RNG.normal(0, 1, (1, 4, 1, 1)).astype(np.float32), "t")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Add", ["m", "t"], ["y"])]
    result = check_equal(make(nodes, [w, s, t], [2, 3, 6, 6]), [2, 3, 6, 6], 2)
    assert [n.op_type for n in result.model.graph] == ["Conv"]


def test_spatial_mul_is_not_folded():
    w = numpy_helper.from_array(RNG.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), "w")
    s = numpy_helper.from_array(RNG.uniform(0.5, 2, (1, 1, 4, 4)).astype(np.float32), "s")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    result = check_equal(make(nodes, [w, s], [2, 3, 6, 6]), [2, 3, 6, 6], 0)
    assert [n.op_type for n in result.model.graph] == ["Conv", "Mul"]


@pytest.mark.parametrize("name", ["conv_bn_relu", "mobilenet_block", "ppocr_cls", "attention_block", "two_inputs",
                                  "relu6_attr_opset6"])
def test_sample_models_fold_within_1e5(name):
    from qtool.ir.graph import load_model

    model = load_model(SAMPLES / f"{name}.onnx")
    feeds = {}
    for info in model.graph.inputs:
        dims = [3, 48, 192] if name == "ppocr_cls" else [d if isinstance(d, int) else 1 for d in info.shape[1:]]
        feeds[info.name] = RNG.normal(0, 1, [4, *dims]).astype(np.float32)
    result = fold_batch_norms(model)
    assert not [n for n in result.model.graph if n.op_type == "BatchNormalization"]

    def outputs(m):
        return ort.InferenceSession(model_bytes(m), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    before, after = outputs(model), outputs(result.model)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
