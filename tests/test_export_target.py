"""`qtool export --target ort-cpu`: each rewrite, on a small model quantized by qtool, against the
plain QDQ export run by onnxruntime (equal, or within the bound the rewrite states), and the
kernel report shows the kernels the rewrite is for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import qtool
from conftest import run_main
from qtool.ir.graph import load_model
from qtool.ir.ort_cpu import uint8_grids
from qtool.encodings.encoding_set import EncodingSet
from qtool.quant import QuantSpec, compute_encoding, quantize_dequantize
from qtool.runtime.kernels import kernel_report
from test_bench import WEIGHTS, _save, _weights, conv_hard_swish_conv

DATA = {"x": np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)}


def _export(model: Path, out: Path, **options) -> Path:
    pair = qtool.calibrate(str(model), DATA, scheme="minmax")
    report = qtool.export(pair, str(out), prefix="m", **options)
    assert report.summary["onnxruntime"] in report.lines
    return out / "m_qdq.onnx"


def _run(path: Path) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, DATA)[0]


def _by_name(path: Path) -> dict:
    return {node.name: node for node in kernel_report(load_model(path)).nodes}


def _sqnr(ref: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - test).astype(np.float64) ** 2).sum()))


@pytest.fixture(scope="module")
def hard_swish(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hs")
    model = conv_hard_swish_conv(folder / "hs.onnx")
    return {"plain": _export(model, folder / "plain"),
            "float": _export(model, folder / "float", target="ort-cpu", fused_activations="float"),
            "integer": _export(model, folder / "int", target="ort-cpu", fused_activations="integer"),
            "model": model}


def test_hard_swish_conv_float_keeps_the_numbers_and_drops_the_weight_dequantize(hard_swish):
    plain, ours = hard_swish["plain"], hard_swish["float"]
    assert np.array_equal(_run(plain), _run(ours))  # HardSwish op, float weights: the same numbers
    nodes = _by_name(ours)
    assert nodes["conv1"].kind == "float" and nodes["conv2"].kernel == "QLinearConv"
    assert {node.op_type for node in load_model(ours).graph} >= {"HardSwish"}
    assert not any(name in nodes for name in ("add3", "clip", "mul"))  # the written-out form is gone
    assert kernel_report(load_model(ours)).constant_dequantize == 0 < kernel_report(
        load_model(plain)).constant_dequantize
    assert nodes["conv1"].reason.startswith("output fused with the hard-swish")  # not "a float constant"


def test_hard_swish_conv_integer_is_a_qlinearconv_within_its_grid_step(hard_swish):
    plain, ours = _run(hard_swish["plain"]), _run(hard_swish["integer"])
    nodes = _by_name(hard_swish["integer"])
    assert nodes["conv1"].kernel == nodes["conv2"].kernel == "QLinearConv"
    assert 20 < _sqnr(plain, ours) < float("inf")  # one rounding more: close, not equal


def test_pad_before_conv_is_folded_into_the_conv(tmp_path):
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Pad", ["r1", "pads"], ["p"], name="pad"),
             helper.make_node("Conv", ["p", "w2", "b2"], ["y"], name="conv2")]
    model = _save(tmp_path / "pad.onnx", nodes, _weights(*WEIGHTS) + [pads], "y")
    plain, ours = _export(model, tmp_path / "plain"), _export(model, tmp_path / "ours", target="ort-cpu")
    assert _by_name(plain)["pad"].kind == "float"  # no integer Pad in onnxruntime's CPU provider
    nodes = _by_name(ours)
    assert nodes["conv1"].kernel == nodes["conv2"].kernel == "QLinearConv" and "pad" not in nodes
    step = float(load_model(ours).graph.initializers["y_scale"].const_value.numpy())
    assert np.abs(_run(plain) - _run(ours)).max() <= step * 1.001  # integer kernels round once: <= one step


def test_maxpool_stays_float_with_the_encodings_grids_and_says_why(tmp_path):
    from qtool.ir.integer_choice import FLOAT_MAXPOOL

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("MaxPool", ["c1"], ["m"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Conv", ["m", "w2", "b2"], ["y"], pads=[1] * 4, name="conv2")]
    graph = _save(tmp_path / "pool.onnx", nodes, _weights(*WEIGHTS), "y")
    plain, ours = _export(graph, tmp_path / "plain"), _export(graph, tmp_path / "ours", target="ort-cpu")
    assert _by_name(plain)["pool"].kind == "float" and "grids differ" in _by_name(plain)["pool"].reason
    assert _by_name(ours)["pool"].kind == "float" and _by_name(ours)["pool"].reason == FLOAT_MAXPOOL
    assert _by_name(ours)["conv1"].kernel == _by_name(ours)["conv2"].kernel == "QLinearConv"
    assert np.array_equal(_run(plain), _run(ours))  # the encodings' grids: the plain export's numbers


def test_int8_grids_become_the_same_uint8_grids():
    enc = compute_encoding(-2.0, 3.0, QuantSpec(bw=8, symmetric=True))
    encs = EncodingSet({"t": enc})
    assert uint8_grids(encs) == 1
    new = encs.activations["t"]
    values = np.linspace(-4, 4, 1001).astype(np.float32)
    assert not new.symmetric and np.array_equal(quantize_dequantize(values, enc), quantize_dequantize(values, new))


def test_target_is_checked_and_plain_export_is_unchanged(hard_swish, tmp_path, capsys):
    code, out, err = run_main(["export", hard_swish["model"], "-o", tmp_path / "x", "--target", "gpu"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--target" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    code, out, err = run_main(["export", hard_swish["model"], "-o", tmp_path / "x", "--fused-activations", "integer"],
                              capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--fused-activations" in err and "--target" in err
    assert not (tmp_path / "x").exists()
    code, out, err = run_main(["export", hard_swish["model"], "--encodings", hard_swish["plain"].parent / "m.encodings",
                               "-o", tmp_path / "cli", "--target", "ort-cpu", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["target"] == "ort-cpu" and summary["rewrites"]["hard_swish"] == 1
    assert "1 of 2 Conv on integer kernels" in summary["onnxruntime"]
    digest = hashlib.sha256(hard_swish["plain"].read_bytes()).hexdigest()
    again = _export(hard_swish["model"], tmp_path / "again")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == digest  # the default target is the plain QDQ model


@pytest.mark.parametrize("fused", ["bounded", "integer"])
def test_fused_activations_bounded_quantizes_silu_gates_and_relu6_convs(tmp_path, fused):
    bound = numpy_helper.from_array(np.linspace(2, 6, 8, dtype=np.float32).reshape(1, 8, 1, 1), "bound")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Sigmoid", ["c1"], ["g"], name="sigmoid"),
             helper.make_node("Mul", ["c1", "g"], ["s"], name="silu"),
             helper.make_node("Conv", ["s", "w2", "b2"], ["c2"], pads=[1] * 4, name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
             helper.make_node("Min", ["r2", "bound"], ["y"], name="min")]  # a relu6 after equalization
    model = _save(tmp_path / "silu.onnx", nodes, _weights(*WEIGHTS) + [bound], "y")
    plain, ours = _export(model, tmp_path / "plain"), _export(model, tmp_path / "ours", target="ort-cpu",
                                                            fused_activations=fused)
    before, after = _by_name(plain), _by_name(ours)
    assert before["sigmoid"].kind == before["silu"].kind == "float"
    assert after["sigmoid"].kernel == "QLinearSigmoid" and after["silu"].kernel == "QLinearMul"
    assert after["conv1"].kernel == after["conv2"].kernel == "QLinearConv"
    assert "relu" not in after  # an identity on the grid [0, max]
    reference = ort.InferenceSession(str(tmp_path / "ours" / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, DATA)[0]
    assert _sqnr(reference, _run(ours)) > _sqnr(reference, _run(plain)) - 3  # one rounding more: within 3 dB


def test_plain_export_with_float_nodes_points_to_the_ort_cpu_target(hard_swish, tmp_path):
    plain = qtool.export(qtool.calibrate(str(hard_swish["model"]), DATA, scheme="minmax"), str(tmp_path / "p"), prefix="m")
    assert "stay float" in plain.summary["onnxruntime"]
    assert any("--target ort-cpu" in line for line in plain.lines)
    fast = qtool.export(qtool.calibrate(str(hard_swish["model"]), DATA, scheme="minmax"), str(tmp_path / "f"), prefix="m",
                        target="ort-cpu")
    assert not any("--target ort-cpu writes" in line for line in fast.lines)


def three_hard_swish_layers(path: Path) -> Path:
    """x -> Conv 3->64 -> Relu -> [A: Conv 64->8 1x1, m = 64] -> hard-swish -> [B: depthwise 3x3, m = 9]
    -> hard-swish -> [C: Conv 8->8 3x3, m = 72] -> hard-swish / (6 s_c) with s_c from 1/30 to 1 (the
    per-channel factor depthwise-input equalization leaves) -> Conv 1x1 -> y."""
    rng = np.random.default_rng(0)
    inits = _weights(("w0", (64, 3, 3, 3)), ("b0", (64,)), ("wa", (8, 64, 1, 1)), ("ba", (8,)),
                     ("wb", (8, 1, 3, 3)), ("bb", (8,)), ("wc", (8, 8, 3, 3)), ("bc", (8,)), ("wy", (8, 8, 1, 1)),
                     ("by", (8,)))
    scales = np.geomspace(1 / 30, 1, 8).astype(np.float32)
    rng.shuffle(scales)
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in (("three", 3), ("zero", 0), ("six", 6))]
    inits.append(numpy_helper.from_array((6 * scales).reshape(1, 8, 1, 1), "six_s"))
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1] * 4, name="conv0"),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "wa", "ba"], ["ca"], name="convA"),
             helper.make_node("Conv", ["ha", "wb", "bb"], ["cb"], pads=[1] * 4, group=8, name="convB"),
             helper.make_node("Conv", ["hb", "wc", "bc"], ["cc"], pads=[1] * 4, name="convC"),
             helper.make_node("Conv", ["hc", "wy", "by"], ["y"], name="convY")]
    for x, out, divisor in (("ca", "ha", "six"), ("cb", "hb", "six"), ("cc", "hc", "six_s")):
        nodes[-1:-1] = [helper.make_node("Add", [x, "three"], [f"{x}_a"], name=f"{x}_add"),
                        helper.make_node("Clip", [f"{x}_a", "zero", "six"], [f"{x}_cl"], name=f"{x}_clip"),
                        helper.make_node("Mul", [x, f"{x}_cl"], [f"{x}_m"], name=f"{x}_mul"),
                        helper.make_node("Div", [f"{x}_m", divisor], [out], name=f"{x}_div")]
    order = ["conv0", "relu0", "convA", "ca_add", "ca_clip", "ca_mul", "ca_div", "convB", "cb_add", "cb_clip",
             "cb_mul", "cb_div", "convC", "cc_add", "cc_clip", "cc_mul", "cc_div", "convY"]
    nodes.sort(key=lambda node: order.index(node.name))
    return _save(path, nodes, inits, "y")


def test_auto_leaves_float_exactly_the_hard_swish_layers_its_rule_names(tmp_path):
    from qtool.ir.integer_choice import LESS_ACCURATE, MIN_MACS_PER_OUTPUT, SLOWER, kept_float, macs_per_output

    model = three_hard_swish_layers(tmp_path / "three.onnx")
    graph = load_model(model)
    convs = {node.name: node for node in graph.graph if node.op_type == "Conv"}
    assert [macs_per_output(convs[n]) for n in ("convA", "convB", "convC")] == [64 * 1 * 1, 1 * 3 * 3, 8 * 3 * 3]
    assert macs_per_output(convs["convB"]) < MIN_MACS_PER_OUTPUT <= macs_per_output(convs["convA"])
    pair = qtool.calibrate(str(model), DATA, scheme="minmax")
    auto = qtool.export(pair, str(tmp_path / "auto"), prefix="m", target="ort-cpu")
    assert auto.summary["rewrites"]["derived"] == 1 and auto.summary["rewrites"]["kept_float"] == 2
    nodes = _by_name(tmp_path / "auto" / "m_qdq.onnx")
    assert nodes["convA"].kernel == "QLinearConv"
    assert nodes["convB"].kind == "float" and nodes["convB"].reason.startswith(SLOWER + " (9 MACs")
    assert nodes["convC"].kind == "float" and nodes["convC"].reason.startswith(LESS_ACCURATE)
    assert set(kept_float(load_model(tmp_path / "auto" / "m_qdq.onnx"))) == {"convB", "convC"}
    assert "left float by the export" in auto.summary["onnxruntime"]
    integer = qtool.export(pair, str(tmp_path / "int"), prefix="m", target="ort-cpu", fused_activations="integer")
    assert integer.summary["rewrites"]["derived"] == 3 and "kept_float" not in integer.summary["rewrites"]
    assert not kept_float(load_model(tmp_path / "int" / "m_qdq.onnx"))
    assert all(_by_name(tmp_path / "int" / "m_qdq.onnx")[n].kernel == "QLinearConv" for n in convs)
    plain = _run(qtool.export(pair, str(tmp_path / "plain"), prefix="m").summary["files"][2])
    assert _sqnr(plain, _run(tmp_path / "auto" / "m_qdq.onnx")) > 20  # one layer rounds once more


def test_step_ratio_is_x_step_seen_on_the_result_grid():
    import onnx_ir as ir

    from qtool.ir.integer_choice import MAX_STEP_RATIO, choose, step_ratio

    x, y = compute_encoding(-3.0, 5.0, QuantSpec(bw=8)), compute_encoding(0.0, 5.0, QuantSpec(bw=8))
    s_x, s_y = float(x.scale[0]), float(y.scale[0])
    assert abs(s_x - 8 / 255) < 1e-6 and abs(s_y - 5 / 255) < 1e-6
    assert step_ratio(x, y, np.array([1.0])) == pytest.approx(s_x / s_y)  # no gain: 1.6 result steps
    assert step_ratio(x, y, np.array([0.5, 4.0])) == pytest.approx(4 * s_x / s_y)  # the largest channel gain
    weight = ir.Value(name="w", const_value=ir.tensor(np.zeros((8, 64, 1, 1), np.float32)))
    node = ir.node("Conv", [ir.Value(name="a"), weight], name="c")  # 64 MACs per output value
    assert choose(node, x, y, np.array([1.0])).integer
    assert not choose(node, x, y, np.array([1.0, 2.0])).integer  # 3.2 result steps > MAX_STEP_RATIO
    assert 2 * s_x / s_y > MAX_STEP_RATIO > s_x / s_y


def test_hard_swish_input_grid_spans_minus_three_to_the_inverse_of_the_result_max(hard_swish):
    """Both ends of the derived grid by hand: h(x) = x (x + 3) / 6 on [-3, 3], x above: the largest
    x with h(x) = y_max, and -3 (h = 0 below); nothing of x outside changes the quantized result."""
    from qtool.commands.inputs import load_pair
    from qtool.ir.ort_cpu import ort_cpu_pair

    folder = hard_swish["integer"].parent
    graph, encs, source = load_pair(folder / "m.onnx", folder / "m.encodings")
    _, derived, counts = ort_cpu_pair(graph, encs, source, fused="integer")
    assert counts["derived"] == 1 and "c1" not in encs.activations
    y_max = float(encs.activations["h"].max[0])
    top = y_max if y_max >= 3 else (-3 + np.sqrt(9 + 24 * y_max)) / 2
    grid = derived.activations["c1"]
    step = float(grid.scale[0])
    assert abs(float(grid.min[0]) + 3) <= step and abs(float(grid.max[0]) - top) <= step  # ends within one step
    assert float(grid.min[0]) <= -3 + 1e-6 or float(grid.max[0]) >= top - 1e-6  # 0 on the grid moves one end only


def test_auto_export_is_deterministic(tmp_path):
    model = three_hard_swish_layers(tmp_path / "three.onnx")
    pair = qtool.calibrate(str(model), DATA, scheme="minmax")
    first, second = (qtool.export(pair, str(tmp_path / name), prefix="m", target="ort-cpu") for name in ("a", "b"))
    assert (tmp_path / "a" / "m_qdq.onnx").read_bytes() == (tmp_path / "b" / "m_qdq.onnx").read_bytes()
    assert first.summary["rewrites"] == second.summary["rewrites"]
