"""`qtool bench` and the kernel report (qtool.runtime.kernels): what onnxruntime runs of an
exported QDQ model, and its latency against the float model.

Models are built here and quantized by qtool itself (calibrate + export): a Conv -> Relu -> Conv
chain whose Convs onnxruntime must fuse into QLinearConv; the same chain with the Relu output
left unquantized (an override), whose Convs must be named float with the reason; a Conv whose
output only a written-out hard-swish reads (qtool leaves it unquantized, as AIMET's supergroup).
Timings are checked for being numbers, never for a speed-up: the machine is shared.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qtool
from conftest import run_main
from qtool.ir.graph import load_model
from qtool.runtime.kernels import kernel_report


def _save(path: Path, nodes: list, inits: list, output: str, channels: int = 8) -> Path:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", channels, 16, 16])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _weights(*shapes: tuple[str, tuple[int, ...]]) -> list:
    rng = np.random.default_rng(0)
    return [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
            for name, shape in shapes]


WEIGHTS = (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 8, 3, 3)), ("b2", (8,)))


def conv_relu_conv(path: Path) -> Path:
    """x -> Conv -> Relu (unnamed) -> Conv -> y."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], pads=[1] * 4, name="conv2")]
    return _save(path, nodes, _weights(*WEIGHTS), "y")


def conv_hard_swish_conv(path: Path) -> Path:
    """x -> Conv -> x * Clip(x + 3, 0, 6) / 6 (PaddlePaddle's spelling) -> Conv -> y."""
    consts = [numpy_helper.from_array(np.float32(v), n) for n, v in (("three", 3), ("zero", 0), ("six", 6))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Add", ["c1", "three"], ["a"], name="add3"),
             helper.make_node("Clip", ["a", "zero", "six"], ["cl"], name="clip"),
             helper.make_node("Mul", ["c1", "cl"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "six"], ["h"], name="div6"),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"], pads=[1] * 4, name="conv2")]
    return _save(path, nodes, _weights(*WEIGHTS) + consts, "y")


def shared_conv_output(path: Path) -> Path:
    """x -> Conv -> c1, read by a second Conv and by an Add with that Conv's output."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["y"], pads=[1] * 4, name="conv2"),
             helper.make_node("Add", ["c1", "y"], ["z"], name="add")]
    return _save(path, nodes, _weights(*WEIGHTS), "z")


def quantize(model: Path, out: Path, overrides: list | None = None) -> Path:
    """qtool calibrate (min-max) + export; the folder holds m.onnx, m.encodings, m_qdq.onnx."""
    data = {"x": np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)}
    options = {}
    if overrides is not None:
        (out.parent / f"{out.name}_overrides.json").write_text(json.dumps({"overrides": overrides}))
        options["overrides"] = str(out.parent / f"{out.name}_overrides.json")
    pair = qtool.calibrate(str(model), data, scheme="minmax", **options)
    report = qtool.export(pair, str(out), prefix="m")
    assert report.summary["onnxruntime"] in report.lines  # export prints the one-line kernel summary
    return out / "m_qdq.onnx"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    quantize(conv_relu_conv(folder / "crc.onnx"), folder / "plain")
    quantize(folder / "crc.onnx", folder / "excluded", [{"tensors": "r1", "exclude": True}])
    return folder


def _by_name(report) -> dict:
    return {node.name: node for node in report.nodes}


def test_convs_quantized_by_qtool_run_as_integer_kernels(work):
    model = load_model(work / "plain" / "m_qdq.onnx")
    names = [node.name for node in model.graph]
    report = kernel_report(model)
    nodes = _by_name(report)
    assert nodes["conv1"].kind == nodes["conv2"].kind == "integer"
    assert nodes["conv1"].kernel == nodes["conv2"].kernel == "QLinearConv"
    relu = next(node for node in report.nodes if node.op_type == "Relu")  # unnamed: named for the report only
    assert relu.kind == "folded" and relu.name.startswith("(unnamed Relu")
    assert report.of_kind("float") == [] and report.constant_dequantize == 0  # every weight DQ fused
    assert "2 of 2 Conv on integer kernels" in report.summary_line() and "float" not in report.summary_line()
    assert [node.name for node in model.graph] == names  # the model is not changed


def test_an_unquantized_conv_output_is_named_float_with_the_reason(work):
    nodes = _by_name(kernel_report(load_model(work / "excluded" / "m_qdq.onnx")))
    assert nodes["conv1"].kind == "float" and nodes["conv1"].reason.startswith("no QuantizeLinear on its output")
    assert nodes["conv2"].kind == "float" and nodes["conv2"].reason.startswith("input 'r1' is not quantized")


def test_a_conv_fused_with_a_hard_swish_stays_float(tmp_path):
    qdq = quantize(conv_hard_swish_conv(tmp_path / "hs.onnx"), tmp_path / "out")
    report = kernel_report(load_model(qdq))
    nodes = _by_name(report)
    assert nodes["conv1"].kind == "float" and "hard-swish after it" in nodes["conv1"].reason
    assert nodes["conv2"].kind == "integer"
    assert all(nodes[name].kind == "float" and "part of a hard-swish" in nodes[name].reason
               for name in ("add3", "clip", "mul", "div6"))
    assert "1 of 2 Conv on integer kernels; 1 stay float (output fused with the hard-swish after it)" in \
        report.summary_line()
    assert report.constant_dequantize >= 2  # the float Conv's weight and bias are dequantized on every run


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the int8 rule is x86's")
def test_an_int8_activation_read_twice_keeps_its_convs_float_on_x86(tmp_path):
    symmetric = [{"tensors": ["x", "c1", "y", "z"], "is_symmetric": True}]
    nodes = _by_name(kernel_report(load_model(quantize(shared_conv_output(tmp_path / "s.onnx"), tmp_path / "s",
                                                       symmetric))))
    for name in ("conv1", "conv2", "add"):
        assert nodes[name].kind == "float" and nodes[name].reason.startswith("int8 activation 'c1' has 2 consumers")
    nodes = _by_name(kernel_report(load_model(quantize(tmp_path / "s.onnx", tmp_path / "u"))))  # uint8: fused
    assert [nodes[name].kind for name in ("conv1", "conv2", "add")] == ["integer"] * 3


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bench_reports_kernels_and_times_both_models(work, capsys):
    qdq, before = work / "plain" / "m_qdq.onnx", _tree(work)
    code, out, err = run_main(["bench", qdq, "--repeat", "2", "--batch", "3", "--json"], capsys)  # finds m.onnx
    assert code == 0, err
    summary = json.loads(out)
    assert summary["kernels"]["counts"]["Conv"] == {"integer": 2}
    latency = summary["latency"]
    assert latency["reference"] == str(work / "plain" / "m.onnx") and latency["repeat"] == 2
    cores = sorted({1, os.cpu_count()})
    assert [(row["threads"], row["batch"]) for row in latency["rows"]] == [(t, b) for t in cores for b in (1, 3)]
    for row in latency["rows"]:
        assert 0 < row["float_ms"] <= row["float_median_ms"] and 0 < row["qdq_ms"] <= row["qdq_median_ms"]
        assert row["speedup"] == pytest.approx(row["float_ms"] / row["qdq_ms"], rel=1e-2)
    code, out, err = run_main(["bench", work / "excluded" / "m_qdq.onnx", "--reference", work / "crc.onnx",
                               "--repeat", "2", "--batch", "1"], capsys)
    assert code == 0, err
    assert "0 of 2 Conv on integer kernels; 2 stay float" in out
    assert "1 Conv: no QuantizeLinear on its output (read by Relu): conv1" in out
    assert "speed-up" in out and len([line for line in out.splitlines() if line.rstrip().endswith("x")]) == len(cores)
    assert _tree(work) == before  # bench writes nothing


@pytest.mark.parametrize("case", ["missing", "float_model", "no_reference", "other_inputs", "zero_repeat"])
def test_bad_bench_input_is_one_line_exit_2(work, tmp_path, capsys, case):
    plain = work / "plain"
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["z"], ["w"])], "o", [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4])]), opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8), other)
    renamed = tmp_path / "renamed.onnx"
    renamed.write_bytes((plain / "m_qdq.onnx").read_bytes())
    args, named = {
        "missing": (["bench", tmp_path / "nope_qdq.onnx"], "nope_qdq.onnx"),
        "float_model": (["bench", plain / "m.onnx"], "not a QDQ model"),
        "no_reference": (["bench", renamed], "no float model to time against"),
        "other_inputs": (["bench", plain / "m_qdq.onnx", "--reference", other], "other.onnx"),
        "zero_repeat": (["bench", plain / "m_qdq.onnx", "--repeat", "0"], "--repeat"),
    }[case]
    before = _tree(work), _tree(tmp_path)
    code, out, err = run_main(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("qtool: error: ") and named in lines[0], err
    assert (_tree(work), _tree(tmp_path)) == before


def test_a_float_weight_onnxruntime_quantizes_itself_is_noted(work):
    """16-bit weights are stored fake-quantized in float; onnxruntime (>= 1.2x: WeightBiasQuantization)
    fuses such a Conv with a per-tensor int8 weight of its own, which the report must say."""
    data = {"x": np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)}
    pair = qtool.calibrate(str(work / "crc.onnx"), data, scheme="minmax", param_bw=16)
    qtool.export(pair, str(work / "w16"), prefix="m")
    report = kernel_report(load_model(work / "w16" / "m_qdq.onnx"))
    for node in (_by_name(report)[name] for name in ("conv1", "conv2")):
        assert node.kind == "float" or "quantized its float weight to per-tensor int8" in node.reason, node
    if report.of_kind("integer"):
        assert "with a float weight onnxruntime quantized per tensor itself" in report.summary_line()
