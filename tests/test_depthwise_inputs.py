"""Depthwise-input equalization (qtool.steps.depthwise_inputs): the float function is unchanged,
the channels a depthwise conv reads end up within 2^max_widen_bits of the widest, and per-channel
W8A8 gets better for it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import qtool
from qtool.cli.main import cli
from qtool.ir.graph import model_bytes
from qtool.runtime.channel_stats import ChannelStats
from qtool.steps.depthwise_inputs import channel_scales, equalize_for_per_channel, find_candidates

RNG = np.random.default_rng(5)
C = 8
SPREAD = np.logspace(0, -2.5, C)  # channel c of the first conv spans 10^(-2.5 c / 7) of channel 0


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _activation(kind: str) -> tuple[list, list]:
    """c1 -> a: the producer forms the step knows."""
    if kind in ("hswish_div", "hswish_mul"):
        last = (helper.make_node("Div", ["p", "six"], ["a"]) if kind == "hswish_div"
                else helper.make_node("Mul", ["p", "sixth"], ["a"]))
        return ([helper.make_node("Add", ["c1", "three"], ["t"]),
                 helper.make_node("Clip", ["t", "zero", "six"], ["g"]),
                 helper.make_node("Mul", ["c1", "g"], ["p"]), last],
                [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0), _const("sixth", 1 / 6)])
    if kind == "relu6":
        return [helper.make_node("Clip", ["c1", "zero", "six"], ["a"])], [_const("zero", 0.0), _const("six", 6.0)]
    if kind == "none":
        return [helper.make_node("Identity", ["c1"], ["a"])], []
    return [helper.make_node(kind, ["c1"], ["a"])], []


def block(kind: str, extra_reader: bool = False, pad: bool = False) -> ir.Model:
    """Conv(3->8, channels 300x apart) -> activation -> [zero Pad] -> depthwise 3x3 -> Relu -> Conv(8->4).
    The depthwise filters undo the spread, as a BatchNorm after them would: only its input is skewed."""
    w1 = (RNG.normal(0, 1, (C, 3, 3, 3)) * SPREAD[:, None, None, None] * 3).astype(np.float32)
    nodes, consts = _activation(kind)
    c1 = "a" if kind == "none" else "c1"
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], [c1], pads=[1, 1, 1, 1])] + (
        [] if kind == "none" else nodes)
    if pad:
        nodes += [helper.make_node("Pad", ["a", "pads"], ["a_padded"])]
    dw = [helper.make_node("Conv", ["a_padded", "wd", "bd"], ["d"], group=C)] if pad else [
        helper.make_node("Conv", ["a", "wd", "bd"], ["d"], pads=[1, 1, 1, 1], group=C)]
    nodes += dw + [
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Conv", ["r", "w3"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(w1, "w1"), _const("b1", RNG.normal(0, 0.1, C) * SPREAD),
             _const("wd", RNG.normal(0, 1, (C, 1, 3, 3)) / SPREAD[:, None, None, None]),
             _const("bd", RNG.normal(0, 0.1, C)),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "pads"),
             _const("w3", RNG.normal(0, 1, (4, C, 1, 1))), *consts]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])],
                              outputs, inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def data(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 3, 16, 16)).astype(np.float32)


def run(model: ir.Model, x: np.ndarray, name: str = "y") -> np.ndarray:
    session = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    return session.run([name], {"x": x})[0]


def batches(x: np.ndarray):
    return lambda: iter([{"x": x[i:i + 4]} for i in range(0, len(x), 4)])


def extents(model: ir.Model, x: np.ndarray, name: str) -> np.ndarray:
    """Channel extents max(hi, 0) - min(lo, 0) of tensor `name` over x."""
    proto = ir.to_proto(model)
    if name not in [o.name for o in proto.graph.output]:
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    a = session.run([name], {"x": x})[0]
    return np.maximum(a.max(axis=(0, 2, 3)), 0) - np.minimum(a.min(axis=(0, 2, 3)), 0)


def test_channel_scales_by_hand():
    stats = ChannelStats(high=np.array([4.0, 1.0, 0.01, 0.0]), low=np.array([-1.0, 0.0, 0.0, -0.0]),
                         power=np.ones(4))
    # extents 5, 1, 0.01, 0: widened to 5, at most 16x
    np.testing.assert_allclose(channel_scales(stats, floor=1 / 16), [1.0, 0.2, 1 / 16, 1 / 16])
    np.testing.assert_allclose(channel_scales(stats, floor=1e-6), [1.0, 0.2, 0.002, 1e-6])


@pytest.mark.parametrize("kind,pad", [("hswish_div", False), ("hswish_mul", False), ("Relu", False),
                                      ("LeakyRelu", False), ("relu6", False), ("none", False), ("relu6", True)])
def test_float_function_kept_and_channels_widened(kind, pad):
    model = block(kind, pad=pad)
    x = data()
    before_y, before = run(model, x), extents(model, x, "a")
    assert before.min() / before.max() < 1 / 16  # the test's premise: channels far apart
    result = equalize_for_per_channel(model, batches(x), floor=1 / 16)
    assert len(result.depthwise) == 1
    after = extents(result.model, x, "a")
    # each channel widened to the widest, by at most 16x; none wider than the tensor was
    np.testing.assert_allclose(after, np.minimum(before.max(), before * 16), rtol=1e-3)
    np.testing.assert_allclose(run(result.model, x), before_y, rtol=1e-4, atol=1e-4 * np.abs(before_y).max())


def test_tensor_with_another_reader_untouched():
    model = block("hswish_div", extra_reader=True)
    assert find_candidates(model) == []


def test_per_channel_w8a8_improves():
    x, xe = data(32, 1), data(16, 2)
    proto = ir.to_proto(block("Relu"))  # Conv+Relu is one supergroup: "a" is the quantized tensor
    plain = qtool.fold(ir.from_proto(proto))
    equalized = qtool.equalize(ir.from_proto(proto), {"x": x}, per_channel=True)
    assert equalized.report.summary["depthwise_inputs_equalized"] == ["a"]

    def sqnr(pair) -> float:
        calibrated = qtool.calibrate(pair, {"x": x}, config="w8a8-per-channel")
        return qtool.simulate(calibrated, {"x": xe}).summary["outputs"]["y"]["sqnr_db"]

    before, after = sqnr(plain), sqnr(equalized)
    assert after > before + 6.0, (before, after)


def test_cli_needs_data(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes(block("Relu")))
    result = CliRunner().invoke(cli, ["equalize", str(path), "--per-channel", "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 2 and "--per-channel" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.onnx").exists()
