"""Bias correction removes the mean quantization error it is meant to remove."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.ir.graph import model_bytes
from qtool.ir.qdq import build_qdq_model
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import load_config
from qtool.quant import quantize_dequantize
from qtool.steps.bias_correction import correct_bias
from qtool.steps.calibrate import calibrate
from qtool.steps.equalize import equalize
from qtool.steps.fold import BN_STATS_KEY

RNG = np.random.default_rng(5)


def make(nodes, inits, x_shape) -> ir.Model:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def outputs(model: ir.Model, x: np.ndarray, simulate: bool = False) -> np.ndarray:
    options = ort.SessionOptions()
    if simulate:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model_bytes(model), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def channel_bias(reference: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """Mean error per output channel (axis 1)."""
    axes = (0, *range(2, reference.ndim))
    return (quantized - reference).mean(axis=axes)


def pair(model: ir.Model, x: np.ndarray, param_bw: int, bias_quantized: bool = False):
    config = load_config("default")
    plan = build_plan(model, config, PlanOptions(param_bw=param_bw))
    if bias_quantized:
        from qtool.plan.config import QuantizerSettings

        config = type(config)(**{**config.__dict__, "param_types": {"bias": QuantizerSettings(enabled=True)}})
        plan = build_plan(model, config, PlanOptions(param_bw=param_bw))
    return calibrate(model, plan, [{"x": x}]).encodings


def depthwise_model(with_bias: bool):
    """A depthwise conv with few, skewed weights per channel: its quantization error is biased."""
    c = 8
    w = np.abs(RNG.normal(0, 1, (c, 1, 3, 3))).astype(np.float32) * np.linspace(0.05, 1, c)[:, None, None, None]
    w[:, 0, 0, 0] *= 8  # one outlier per channel: rounding the rest is coarse and one-sided
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if with_bias:
        inits.append(numpy_helper.from_array(RNG.normal(0, 0.1, c).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["y"], group=c, pads=[1, 1, 1, 1])]
    return make(nodes, inits, [None, c, 6, 6])


@pytest.mark.parametrize("with_bias", [True, False])
def test_empirical_correction_removes_mean_error(with_bias):
    model = depthwise_model(with_bias)
    x = np.abs(RNG.normal(1, 1, (32, 8, 6, 6))).astype(np.float32)  # positive inputs, like after ReLU
    held_out = np.abs(RNG.normal(1, 1, (32, 8, 6, 6))).astype(np.float32)
    encodings = pair(model, x, param_bw=4)
    before = channel_bias(outputs(model, held_out), outputs(build_qdq_model(model, encodings), held_out, True))
    result = correct_bias(model, encodings, lambda: [{"x": x[:16]}, {"x": x[16:]}])
    corrected = build_qdq_model(result.model, result.encodings)
    after = channel_bias(outputs(model, held_out), outputs(corrected, held_out, True))  # against the original
    assert np.abs(before).max() > 0.02
    assert np.abs(after).max() < np.abs(before).max() / 10
    conv = next(n for n in result.model.graph if n.op_type == "Conv")
    assert len(conv.inputs) == 3 and conv.inputs[2] is not None  # a layer without a bias gets one


def matmul_model(with_bias_add: bool):
    """(B, T, K) @ (K, N) with few skewed weights per output (a transformer projection), with or
    without the Add that holds its bias, then an Identity so the layer output is not the graph
    output (linear, so the mean error at the output is the layer's)."""
    k, n = 4, 6
    w = np.abs(RNG.normal(0, 1, (k, n))) * np.linspace(0.05, 1, n)[None, :]
    w[0] *= 8  # one outlier per output: rounding the rest is coarse and one-sided
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])]
    if with_bias_add:
        inits.append(numpy_helper.from_array(RNG.normal(0, 0.1, n).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["b", "h"], ["hb"]))  # constant first: either order is a bias
    nodes.append(helper.make_node("Identity", ["hb" if with_bias_add else "h"], ["y"]))
    return make(nodes, inits, [None, 5, k])


@pytest.mark.parametrize("with_bias_add", [True, False])
def test_matmul_bias_lives_in_its_add_or_a_new_one(with_bias_add):
    model = matmul_model(with_bias_add)
    rng = np.random.default_rng(11)  # its own draws: the residual is sampling noise, not order-dependent
    x, held_out = (np.abs(rng.normal(1, 1, (64, 5, 4))).astype(np.float32) for _ in range(2))
    encodings = pair(model, x, param_bw=4)
    encodings.activations.clear()  # weights only: the mean error is the weights' own

    def mean_error(candidate, enc, data=held_out):
        got = outputs(build_qdq_model(candidate, enc), data, True)
        return (got - outputs(model, data)).mean(axis=(0, 1))  # channels last

    before = mean_error(model, encodings)
    result = correct_bias(model, encodings, lambda: [{"x": x[:32]}, {"x": x[32:]}])
    assert list(result.empirical) == [next(n.name for n in result.model.graph if n.op_type == "MatMul")]
    np.testing.assert_allclose(mean_error(result.model, result.encodings, x), 0, atol=1e-3)  # exact on its data
    after = mean_error(result.model, result.encodings)
    assert np.abs(before).max() > 0.05
    assert np.abs(after).max() < np.abs(before).max() / 5, (before, after)
    ops = [n.op_type for n in result.model.graph]
    assert ops == ["MatMul", "Add", "Identity"]  # the existing Add holds the correction, or a new one does
    if not with_bias_add:
        add = result.model.graph.node(1)
        assert add.outputs[0].name == "h"  # takes over the MatMul's output name (its encodings, its consumers)


def test_analytic_correction_uses_bn_statistics():
    c = 6
    gamma, beta = np.full(c, 1.0, np.float32), np.linspace(0.5, 2.0, c).astype(np.float32)
    inits = [numpy_helper.from_array(RNG.normal(0, 1, (c, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(gamma, "g"), numpy_helper.from_array(beta, "b"),
             numpy_helper.from_array(np.zeros(c, np.float32), "m"), numpy_helper.from_array(np.ones(c, np.float32), "v"),
             numpy_helper.from_array((np.abs(RNG.normal(0, 1, (4, c, 1, 1))) + 0.2).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["y"])]
    model = equalize(make(nodes, inits, [None, 3, 5, 5]), absorb_bias=False).model  # folds BN, keeps gamma/beta
    # inputs whose first-layer outputs follow the BN statistics: whiten through the first conv
    x = RNG.normal(0, 1, (64, 3, 5, 5)).astype(np.float32)
    encodings = pair(model, x, param_bw=3)
    encodings.activations.clear()  # weights only: the analytic method sees the weight error only
    result = correct_bias(model, encodings, None, analytic=True)
    assert len(result.analytic) == 1 and not result.empirical
    # the correction equals (W^ - W) E[relu(N(beta, gamma))] summed over the kernel, per channel
    second = [n for n in model.graph if n.op_type == "Conv"][1]
    corrected = [n for n in result.model.graph if n.op_type == "Conv"][1]
    old_bias = second.inputs[2].const_value.numpy() if len(second.inputs) > 2 and second.inputs[2] else np.zeros(4)
    shift = old_bias - corrected.inputs[2].const_value.numpy()
    stats = json.loads(model.metadata_props[BN_STATS_KEY])[second.inputs[0].producer().inputs[0].name]
    g, b = np.abs(np.asarray(stats["gamma"])), np.asarray(stats["beta"])
    phi = np.exp(-0.5 * (b / g) ** 2) / math.sqrt(2 * math.pi)
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in b / g])
    mean_x = b * cdf + g * phi  # E[relu(z)], z ~ N(beta, gamma^2)
    w2 = second.inputs[1].const_value.numpy()
    w2_hat = quantize_dequantize(w2, encodings.params[second.inputs[1].name])
    expected = (w2_hat.astype(np.float64) - w2).reshape(4, c) @ mean_x
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(shift, expected, rtol=1e-4, atol=1e-6)


def test_quantized_biases_get_new_encodings():
    model = depthwise_model(with_bias=True)
    x = np.abs(RNG.normal(1, 1, (16, 8, 6, 6))).astype(np.float32)
    encodings = pair(model, x, param_bw=4, bias_quantized=True)
    assert "b" in encodings.params
    result = correct_bias(model, encodings, lambda: [{"x": x}])
    new_bias = next(n for n in result.model.graph if n.op_type == "Conv").inputs[2].const_value.numpy()
    enc = result.encodings.params["b"]
    assert float(enc.max[0]) >= float(np.abs(new_bias).max()) * 0.999  # the grid covers the new values
    assert not enc.same_as(encodings.params["b"])


def test_validation_keeps_a_correction_that_raises_output_sqnr():
    model = depthwise_model(with_bias=True)
    x = np.abs(RNG.normal(1, 1, (32, 8, 6, 6))).astype(np.float32)
    encodings = pair(model, x, param_bw=4)
    result = correct_bias(model, encodings, lambda: [{"x": x}], validate=True)
    assert result.kept and result.sqnr_after > result.sqnr_before + 1  # 4-bit depthwise: a large mean error
    f = outputs(model, x)
    # the figures are the output SQNR of each pair against the float model, as simulate reports it
    for pair_model, pair_enc, db in ((model, encodings, result.sqnr_before),
                                     (result.model, result.encodings, result.sqnr_after)):
        noise = outputs(build_qdq_model(pair_model, pair_enc), x, True) - f
        assert db == pytest.approx(10 * np.log10(np.sum(f.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2)),
                                   abs=2e-3)


def test_validation_returns_the_input_pair_when_the_correction_does_not_help(monkeypatch):
    """A mean shift can cost more than it saves downstream (a sigmoid, a softmax, clipping at the next
    quantizer); the decision is read from the two simulations, stubbed here to disagree with the local fix."""
    import qtool.steps.bias_correction as module

    model = depthwise_model(with_bias=True)
    x = np.abs(RNG.normal(1, 1, (32, 8, 6, 6))).astype(np.float32)
    encodings = pair(model, x, param_bw=4)
    sqnrs = iter([20.0, 19.5])  # before, after
    monkeypatch.setattr(module, "_output_sqnr", lambda *args: next(sqnrs))
    result = correct_bias(model, encodings, lambda: [{"x": x}], validate=True)
    assert not result.kept and (result.sqnr_before, result.sqnr_after) == (20.0, 19.5)
    assert result.empirical  # what was measured is still reported
    conv = next(n for n in result.model.graph if n.op_type == "Conv")
    np.testing.assert_array_equal(conv.inputs[2].const_value.numpy(), model.graph.initializers["b"].const_value.numpy())
    assert result.encodings.all().keys() == encodings.all().keys()
    assert all(result.encodings.all()[k].same_as(v) for k, v in encodings.all().items())
    assert result.model is not model and result.encodings is not encodings
