"""Cross-layer equalization keeps the float function and equalizes channel ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.ir.graph import clone, load_model, model_bytes
from qtool.steps.equalize import equalize, replace_relu6

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
RNG = np.random.default_rng(11)


def run(model: ir.Model, x: np.ndarray, name: str = "x") -> np.ndarray:
    session = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})[0]


def make(nodes, inits, x_shape, opset=17) -> ir.Model:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def weight(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def skewed(shape, axis=0) -> np.ndarray:
    """Weights whose channels along `axis` span four orders of magnitude (what CLE is for)."""
    w = RNG.normal(0, 1, shape)
    scale = np.logspace(-2, 2, shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return (w * scale).astype(np.float32)


def conv_relu_conv(activation: str = "Relu"):
    w1 = numpy_helper.from_array(skewed((6, 3, 3, 3)), "w1")
    b1 = numpy_helper.from_array(RNG.normal(0, 1, 6).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(RNG.normal(0, 1, (4, 6, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node(activation, ["c1"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1])]
    return make(nodes, [w1, b1, w2], [2, 3, 8, 8])


def test_pair_ranges_become_equal_and_outputs_stay():
    model = conv_relu_conv()
    x = RNG.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    result = equalize(model)
    assert result.pairs == [("c1", "y")] or len(result.pairs) == 1
    np.testing.assert_allclose(run(result.model, x), run(model, x), rtol=1e-4, atol=1e-4 * np.abs(run(model, x)).max())
    w1, w2 = weight(result.model, "w1"), weight(result.model, "w2")
    r1 = np.abs(w1).reshape(6, -1).max(axis=1)
    r2 = np.abs(w2).transpose(1, 0, 2, 3).reshape(6, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    before = np.abs(weight(model, "w1")).reshape(6, -1).max(axis=1)
    assert before.max() / before.min() > 1000 and r1.max() / r1.min() < before.max() / before.min() / 10


def test_depthwise_separable_triplet_converges():
    c = 8
    inits = [numpy_helper.from_array(skewed((c, 3, 1, 1)), "w1"),
             numpy_helper.from_array(skewed((c, 1, 3, 3)), "wd"),
             numpy_helper.from_array(RNG.normal(0, 1, (5, c, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["a1"]),
             helper.make_node("Conv", ["a1", "wd"], ["d"], group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["a2"]), helper.make_node("Conv", ["a2", "w2"], ["y"])]
    model = make(nodes, inits, [2, 3, 6, 6])
    x = RNG.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)
    result = equalize(model)
    assert len(result.pairs) == 2
    ref = run(model, x)
    np.testing.assert_allclose(run(result.model, x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    w1, wd, w2 = (weight(result.model, n) for n in ("w1", "wd", "w2"))
    r1 = np.abs(w1).reshape(c, -1).max(1)
    rd = np.abs(wd).reshape(c, -1).max(1)
    r2 = np.abs(w2).transpose(1, 0, 2, 3).reshape(c, -1).max(1)
    np.testing.assert_allclose(r1, rd, rtol=1e-3)  # both pairs equalized at the fixed point
    np.testing.assert_allclose(rd, r2, rtol=1e-3)


def test_relu6_attribute_and_input_forms_are_replaced_but_hard_swish_is_not():
    attr_model = load_model(SAMPLES / "relu6_attr_opset6.onnx")
    assert replace_relu6(clone(attr_model)) >= 1
    inits = [numpy_helper.from_array(RNG.normal(0, 1, (4, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(6), "six"),
             numpy_helper.from_array(np.float32(3), "three")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Clip", ["c", "zero", "six"], ["r6"]),
             helper.make_node("Add", ["r6", "three"], ["p"]), helper.make_node("Clip", ["p", "zero", "six"], ["hs"]),
             helper.make_node("Mul", ["hs", "r6"], ["y"])]
    model = make(nodes, inits, [1, 3, 4, 4])
    work = clone(model)
    assert replace_relu6(work) == 1
    assert [n.op_type for n in work.graph] == ["Conv", "Relu", "Add", "Clip", "Mul"]


def test_keep_relu6_leaves_those_pairs_unscaled():
    model = conv_relu_conv("Relu")
    six = clone(model)
    for node in six.graph:  # turn the Relu into Clip(0, 6)
        if node.op_type == "Relu":
            node.op_type = "Clip"
            node.attributes["min"] = ir.AttrFloat32("min", 0.0)
            node.attributes["max"] = ir.AttrFloat32("max", 6.0)
    six.opset_imports[""] = 6
    result = equalize(six, relu6="keep")
    assert result.pairs == [] and result.relu6_replaced == 0
    assert "Clip" in result.skipped[0][1]
    np.testing.assert_array_equal(weight(result.model, "w1"), weight(six, "w1"))


def test_high_bias_absorption_is_exact_when_activations_stay_above_c():
    c = 4
    gamma = np.full(c, 0.1, np.float32)
    beta = np.array([5.0, 0.0, 3.0, 0.1], np.float32)  # channels 0 and 2 have a high bias
    inits = [numpy_helper.from_array(RNG.normal(0, 0.01, (c, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(gamma, "g"), numpy_helper.from_array(beta, "b"),
             numpy_helper.from_array(np.zeros(c, np.float32), "m"), numpy_helper.from_array(np.ones(c, np.float32), "v"),
             numpy_helper.from_array(RNG.normal(0, 1, (2, c, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["y"])]
    model = make(nodes, inits, [2, 3, 5, 5])
    x = RNG.normal(0, 1, (2, 3, 5, 5)).astype(np.float32)
    result = equalize(model)
    assert result.absorbed == 1
    ref = run(model, x)
    np.testing.assert_allclose(run(result.model, x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    def first_bias(m):
        return next(n for n in m.graph if n.op_type == "Conv").inputs[2].const_value.numpy()

    absorbed, kept = first_bias(result.model), first_bias(equalize(model, absorb_bias=False).model)
    # c = beta - 3 gamma moves to the next layer: channel 0 keeps 0.3/5 of its bias, channel 2
    # 0.3/3; channels 1 and 3 (beta - 3 gamma <= 0) keep theirs (CLE's scale cancels in the ratio)
    np.testing.assert_allclose(absorbed[[0, 2, 3]] / kept[[0, 2, 3]], [0.3 / 5.0, 0.3 / 3.0, 1.0], rtol=1e-4)
    assert absorbed[1] == kept[1] == 0.0


@pytest.mark.parametrize("name", ["mobilenet_block", "ppocr_cls", "conv_bn_relu", "attention_block", "two_inputs",
                                  "relu6_attr_opset6"])
def test_sample_models_keep_their_function(name):
    model = load_model(SAMPLES / f"{name}.onnx")
    reference = clone(model)
    replace_relu6(reference)
    feeds = {}
    for info in model.graph.inputs:
        dims = [3, 48, 192] if name == "ppocr_cls" else [d if isinstance(d, int) else 1 for d in info.shape[1:]]
        feeds[info.name] = RNG.normal(0, 1, [4, *dims]).astype(np.float32)
    result = equalize(model, absorb_bias=False)
    assert not [n for n in result.model.graph if n.op_type == "BatchNormalization"]

    def outputs(m):
        return ort.InferenceSession(model_bytes(m), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    ref = outputs(reference)
    np.testing.assert_allclose(outputs(result.model), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_relu6_bound_mode_scales_through_relu6_and_stays_exact():
    inits = [numpy_helper.from_array(skewed((6, 3, 3, 3)) * 4, "w1"),
             numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(6), "six"),
             numpy_helper.from_array(RNG.normal(0, 1, (4, 6, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "zero", "six"], ["a"]),
             helper.make_node("Pad", ["a", "pads"], ["p"]),
             helper.make_node("Conv", ["p", "w2"], ["y"])]
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    model = make(nodes, inits, [2, 3, 8, 8])
    x = RNG.normal(0, 2, (2, 3, 8, 8)).astype(np.float32)
    before = run(model, x)
    result = equalize(model, relu6="bound")
    assert len(result.pairs) == 1 and result.relu6_replaced == 1  # through the ReLU6 and the zero Pad
    assert [n.op_type for n in result.model.graph] == ["Conv", "Relu", "Min", "Pad", "Conv"]
    np.testing.assert_allclose(run(result.model, x), before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    replaced = equalize(model, relu6="replace")
    assert np.abs(run(replaced.model, x) - before).max() > 1e-2  # what 'replace' costs: values above 6 pass
    w1, w2 = weight(result.model, "w1"), weight(result.model, "w2")
    np.testing.assert_allclose(np.abs(w1).reshape(6, -1).max(1), np.abs(w2).transpose(1, 0, 2, 3).reshape(6, -1).max(1),
                               rtol=1e-5)


def test_high_bias_absorption_through_a_bounded_relu6_needs_data_and_moves_the_bound():
    c = 4
    gamma = np.full(c, 0.1, np.float32)
    beta = np.array([5.0, 0.0, 3.0, 8.0], np.float32)  # channel 3 sits above 6: always clipped
    inits = [numpy_helper.from_array(RNG.normal(0, 0.01, (c, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(gamma, "g"), numpy_helper.from_array(beta, "b"),
             numpy_helper.from_array(np.zeros(c, np.float32), "m"), numpy_helper.from_array(np.ones(c, np.float32), "v"),
             numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi"),
             numpy_helper.from_array(RNG.normal(0, 1, (2, c, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Clip", ["n", "lo", "hi"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["y"])]
    model = make(nodes, inits, [2, 3, 5, 5])
    x = RNG.normal(0, 1, (2, 3, 5, 5)).astype(np.float32)
    calib = RNG.normal(0, 1, (8, 3, 5, 5)).astype(np.float32)
    assert equalize(model, relu6="bound").absorbed == 0  # no data: 'bound' stays exact
    result = equalize(model, relu6="bound", data=lambda: [{"x": calib}])
    assert result.absorbed == 1
    ref = run(model, x)
    np.testing.assert_allclose(run(result.model, x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    kept = equalize(model, relu6="bound", data=lambda: [{"x": calib}], absorb_bias=False).model

    def bound(m):
        return next(n for n in m.graph if n.op_type == "Min").inputs[1].const_value.numpy().reshape(-1)

    # c = the smallest activation seen (about beta; capped at the bound) leaves the bound as
    # well: channel 1 (beta 0) keeps its bound, channel 3 (always at 6) has none left
    ratio = bound(result.model) / bound(kept)
    assert 0.1 < ratio[0] < 0.35 and ratio[1] == 1.0 and 0.4 < ratio[2] < 0.7 and ratio[3] == 0.0, ratio


def test_high_bias_absorption_into_a_matmul_goes_to_a_bias_add():
    """Gemm (high bias) -> Relu -> MatMul: with data, c leaves the Gemm's bias and W2 c lands in an
    Add after the MatMul (MatMul has no bias input), exact on the calibration data."""
    inits = [numpy_helper.from_array(RNG.normal(0, 0.1, (3, 4)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([4.0, -1.0, 2.0, 0.0], np.float32), "b1"),
             numpy_helper.from_array(RNG.normal(0, 1, (4, 2)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g"]), helper.make_node("Relu", ["g"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["y"])]
    model = make(nodes, inits, [None, 3])
    calib = RNG.normal(0, 1, (32, 3)).astype(np.float32)
    result = equalize(model, data=lambda: [{"x": calib}])
    assert result.absorbed == 1
    assert [n.op_type for n in result.model.graph] == ["Gemm", "Relu", "MatMul", "Add"]
    assert result.model.graph.outputs[0].name == "y"
    ref = run(model, calib)
    np.testing.assert_allclose(run(result.model, calib), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    bias = next(n for n in result.model.graph if n.op_type == "Gemm").inputs[2].const_value.numpy()
    assert bias[0] < 1.0 and bias[2] < 0.5  # most of channels 0 and 2's high bias moved on
