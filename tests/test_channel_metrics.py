"""Per-channel SQNR next to the pooled one (issue 12, item 3): a part of an output that quantization
killed must show in simulate, in the recipe gate and in analyze's default metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_main
from qtool.analysis.metric import metric_for
from qtool.errors import QtoolError
from qtool.metrics.channels import output_channel_axes, parse_channel_axes
from qtool.metrics.comparison import Comparison, channel_powers, describe_metrics, worst_channels
from qtool.recipe.gate import check_expectations

CLASSES = 6  # output0 is [N, 4 + CLASSES, 64]: channels 0-3 boxes in pixels, 4-9 class probabilities


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity (what strict JSON parsers do)."""
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


# --- the arithmetic, by hand ---------------------------------------------------------------

def test_per_channel_sqnr_is_hand_computed_and_adds_across_batches_of_other_shapes():
    # channel 0: signal 9 + 16 + 64 + 11 = 100, noise 1 -> 20 dB; channel 1: signal 4, noise 4 -> 0 dB;
    # channel 2: signal 1, noise 0.6 -> 2.218 dB (within 3 dB of channel 1's 0 dB)
    ref_a = np.array([[[3.0, 4.0], [2.0, 0.0], [1.0, 0.0]]])                # [1, 3, 2]
    quant_a = np.array([[[3.0, 4.0], [0.0, 0.0], [1.0, 0.5]]])
    ref_b = np.array([[[8.0], [0.0], [0.0]], [[np.sqrt(11.0)], [0.0], [0.0]]])  # [2, 3, 1]: other length
    quant_b = np.array([[[9.0], [0.0], [0.0]], [[np.sqrt(11.0)], [0.0], [np.sqrt(0.35)]]])
    comparison = Comparison()
    comparison.update("y", ref_a.astype(np.float32), quant_a.astype(np.float32))
    comparison.update("y", ref_b.astype(np.float32), quant_b.astype(np.float32))
    row = comparison.report()["y"]
    assert row["sqnr_db"] == pytest.approx(10 * np.log10(105 / 5.6), abs=1e-3)  # pooled: 18.73 dB
    assert row["worst_channel_sqnr_db"] == pytest.approx(0.0, abs=1e-3)
    assert row["worst_channels"] == {"axis": 1, "channels": 3, "worst": 1, "first": 1, "last": 2, "within_3db": 2}
    signal, noise = channel_powers(ref_a, quant_a, 1)
    np.testing.assert_allclose(signal, [25.0, 4.0, 1.0])
    np.testing.assert_allclose(noise, [0.0, 4.0, 0.25])
    assert "worst channel 0.00 dB: channel 1 of 3 on axis 1; channels 1-2 within 3 dB" in describe_metrics(row)


def test_channels_without_float_signal_are_left_out_and_counted_and_exact_ones_are_capped():
    signal = np.array([100.0, 0.0, 0.0, 50.0])
    noise = np.array([0.0, 0.0, 2.0, 0.5])           # ch 0 exact, ch 1 silent, ch 2 silent but noisy
    row = worst_channels(signal, noise, 1)
    assert row["worst_channel_sqnr_db"] == pytest.approx(20.0)  # channel 3: 50 / 0.5
    assert row["worst_channels"]["worst"] == 3 and row["silent_noisy_channels"] == 1
    exact = worst_channels(np.array([1.0, 2.0]), np.zeros(2), 1)
    assert exact["worst_channel_sqnr_db"] == 300.0  # finite, so JSON stays strict
    nothing = worst_channels(np.zeros(2), np.array([0.0, 1.0]), 1)
    assert nothing["worst_channel_sqnr_db"] is None and nothing["channel_note"]
    _strict_json(json.dumps([row, exact, nothing]))


def test_a_channel_count_that_changes_between_batches_falls_back_to_pooled_and_says_so():
    comparison = Comparison(channel_axes={"seq": -1})
    rng = np.random.default_rng(0)
    for length in (5, 7):  # the chosen axis is one whose length differs between batches
        ref = rng.standard_normal((2, 4, length)).astype(np.float32)
        comparison.update("seq", ref, ref + 0.01)
    row = comparison.report()["seq"]
    assert row["worst_channel_sqnr_db"] is None and "5 channels on axis 2" in row["channel_note"]
    assert np.isfinite(row["sqnr_db"]) and "worst channel not measured" in describe_metrics(row)
    # the same batches with the channel axis 1 (4 channels in both) are measured per channel
    comparison = Comparison()
    for length in (5, 7):
        ref = rng.standard_normal((2, 4, length)).astype(np.float32)
        comparison.update("seq", ref, ref + 0.01)
    assert comparison.report()["seq"]["worst_channels"]["channels"] == 4


# --- which axis ---------------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits=()) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _vi(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def test_channel_axis_rule_follows_the_op_that_fixed_the_layout():
    w = numpy_helper.from_array(np.ones((8, 16), np.float32), "w")
    model = _model([
        helper.make_node("Concat", ["a", "b"], ["joined"], axis=1),
        helper.make_node("Mul", ["joined", "a"], ["det"]),                    # elementwise: carried through
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Transpose", ["h"], ["h_t"], perm=[0, 2, 1]),        # [N, 16, T]: features now axis 1
        helper.make_node("Softmax", ["x"], ["probs"], axis=-1),                # probabilities: pooled only
        helper.make_node("Softmax", ["scores2"], ["cls_probs"], axis=1),
        helper.make_node("Identity", ["scores2"], ["cls_logits"]),
        helper.make_node("Identity", ["x"], ["seq"]),                         # graph input: the shape decides
        helper.make_node("Identity", ["img"], ["nchw"]),
        helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[1], keepdims=0),
    ], [_vi("a", ["N", 4, 64]), _vi("b", ["N", 6, 64]), _vi("x", ["N", "T", 8]), _vi("img", ["N", 3, 5, 5]),
     _vi("scores2", ["N", 5])],
        [_vi("det", ["N", 10, 64]), _vi("h", ["N", "T", 16]), _vi("h_t", ["N", 16, "T"]), _vi("probs", ["N", 4, 8]),
         _vi("seq", ["N", "T", 8]), _vi("nchw", ["N", 3, 5, 5]), _vi("pooled", ["N", 8]),
         _vi("cls_probs", ["N", 5]), _vi("cls_logits", ["N", 5])], [w])
    axes = output_channel_axes(model)
    assert axes == {"det": 1, "h": 2, "h_t": 1, "probs": None, "seq": 2, "nchw": 1, "pooled": 1,
                    "cls_probs": None, "cls_logits": 1}
    # a residual Add whose first input is the graph input: the branch's MatMul decides, not the
    # static shape; a PicoDet-style head Conv -> Reshape -> Transpose: the classes end up last
    conv_w = numpy_helper.from_array(np.ones((10, 3, 1, 1), np.float32), "conv_w")
    flat = numpy_helper.from_array(np.array([0, 10, -1], np.int64), "flat")
    square = numpy_helper.from_array(np.ones((8, 8), np.float32), "square")
    heads = _model([
        helper.make_node("MatMul", ["tokens", "square"], ["mixed"]),
        helper.make_node("Add", ["tokens", "mixed"], ["residual"]),
        helper.make_node("Conv", ["img", "conv_w"], ["cls_map"]),
        helper.make_node("Reshape", ["cls_map", "flat"], ["cls_flat"]),
        helper.make_node("Transpose", ["cls_flat"], ["anchors_last"], perm=[0, 2, 1]),
    ], [_vi("tokens", ["N", 16, 8]), _vi("img", ["N", 3, 5, 5])],
        [_vi("residual", ["N", 16, 8]), _vi("anchors_last", ["N", 25, 10])], [conv_w, flat, square])
    assert output_channel_axes(heads) == {"residual": 2, "anchors_last": 2}
    assert output_channel_axes(model, {"det": 2, "seq": None})["det"] == 2
    assert parse_channel_axes(model, ("det=-1", "seq=none")) == {"det": -1, "seq": None}
    for bad, words in (("nope=1", "no output 'nope'"), ("det=0", "batch axis"), ("det=3", "out of range"),
                       ("det=x", "not an integer"), ("det", "NAME=AXIS")):
        with pytest.raises(QtoolError, match=words):
            parse_channel_axes(model, (bad,))


# --- a detector head through the CLI ---------------------------------------------------------

def detector_head(classes: int = CLASSES) -> onnx.ModelProto:
    """Conv backbone -> box branch (Sigmoid x 320: pixels) and class branch (Sigmoid: 0..1),
    each flattened to [N, *, 64], joined by Concat on axis 1 and passed through Mul by 1: the
    YOLOv8 output layout, with the joined tensor quantized once more at the output."""
    rng = np.random.default_rng(0)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)
    inits = [init("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3), init("b1", np.zeros(8)),
             init("wb", rng.standard_normal((4, 8, 1, 1)) * 0.3), init("bb", np.zeros(4)),
             init("wc", rng.standard_normal((classes, 8, 1, 1)) * 0.3), init("bc", np.full(classes, -2.0)),
             init("pixels", np.float32(320.0)), init("one", np.float32(1.0)),
             numpy_helper.from_array(np.array([0, 4, -1], np.int64), "box_shape"),
             numpy_helper.from_array(np.array([0, classes, -1], np.int64), "cls_shape")]
    node = helper.make_node
    nodes = [node("Conv", ["input", "w1", "b1"], ["f0"], pads=[1, 1, 1, 1], strides=[2, 2], name="backbone"),
             node("Relu", ["f0"], ["f"], name="relu"),
             node("Conv", ["f", "wb", "bb"], ["box_logits"], name="box_conv"),
             node("Sigmoid", ["box_logits"], ["box_unit"], name="box_sigmoid"),
             node("Mul", ["box_unit", "pixels"], ["box_px"], name="box_scale"),
             node("Reshape", ["box_px", "box_shape"], ["boxes"], name="box_flat"),
             node("Conv", ["f", "wc", "bc"], ["cls_logits"], name="cls_conv"),
             node("Sigmoid", ["cls_logits"], ["cls_prob"], name="cls_sigmoid"),
             node("Reshape", ["cls_prob", "cls_shape"], ["scores"], name="cls_flat"),
             node("Concat", ["boxes", "scores"], ["joined"], axis=1, name="head_concat"),
             node("Mul", ["joined", "one"], ["output0"], name="head_out")]
    graph = helper.make_graph(nodes, "detector_head", [_vi("input", ["N", 3, 16, 16])],
                              [_vi("output0", ["N", 4 + classes, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """The head calibrated per-tensor W8A8 through the CLI, with output0 on one 8-bit grid over
    0..320 whatever the quantizer placement decided for the Concat (the failure, pinned)."""
    folder = tmp_path_factory.mktemp("detector")
    onnx.save(detector_head(), folder / "det.onnx")
    np.savez(folder / "d.npz", input=np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32))
    assert main_ok(["calibrate", folder / "det.onnx", "--data", folder / "d.npz", "-o", folder / "q"])
    path = folder / "q.encodings.json"
    encodings = json.loads(path.read_text())
    one_grid = {"bw": 8, "dtype": "INT", "enc_type": "PER_TENSOR", "is_sym": False, "name": "output0",
                "offset": [0], "scale": [320.0 / 255]}
    encodings["activation_encodings"] = [e for e in encodings["activation_encodings"] if e["name"] != "output0"]
    encodings["activation_encodings"].append(one_grid)
    path.write_text(json.dumps(encodings))
    return folder


def main_ok(args) -> bool:
    """qtool's entry point from a module fixture (no capsys there), logging restored after."""
    import logging

    from qtool.cli import main
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code in (0, None)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return True


def test_simulate_reports_the_dead_class_channels_the_pooled_sqnr_hides(detector, capsys):
    code, stdout, err = run_main(["simulate", detector / "q.onnx", "--data", detector / "d.npz", "--json"], capsys)
    assert code == 0, err
    row = _strict_json(stdout)["outputs"]["output0"]
    assert row["sqnr_db"] > 30 and row["worst_channel_sqnr_db"] < 10
    where = row["worst_channels"]
    assert (where["axis"], where["channels"], where["first"], where["last"]) == (1, 4 + CLASSES, 4, 3 + CLASSES)
    code, stdout, _ = run_main(["simulate", detector / "q.onnx", "--data", detector / "d.npz"], capsys)
    assert code == 0
    assert f"channels 4-{3 + CLASSES} within 3 dB" in stdout and "the pooled SQNR hides channels" in stdout
    # an explicit axis: the 64 anchors, each mixing boxes and scores, are all well measured
    code, stdout, _ = run_main(["simulate", detector / "q.onnx", "--data", detector / "d.npz", "--json",
                                "--channel-axis", "output0=2"], capsys)
    anchors = _strict_json(stdout)["outputs"]["output0"]
    assert anchors["worst_channels"]["channels"] == 64 and anchors["worst_channel_sqnr_db"] > 20


def test_channel_axis_option_errors_are_one_line(detector, capsys):
    code, _, err = run_main(["simulate", detector / "q.onnx", "--data", detector / "d.npz",
                             "--channel-axis", "boxes=1"], capsys)
    assert code == 2 and "no output 'boxes'" in err and "Traceback" not in err


def test_bypass_json_stays_strict_for_the_channel_figures(detector, capsys):
    code, stdout, _ = run_main(["simulate", detector / "det.onnx", "--data", detector / "d.npz", "--bypass",
                                "--json"], capsys)
    row = json.loads(stdout)["outputs"]["output0"]  # the pooled figure is inf here (its own convention)
    assert code == 0 and row["worst_channel_sqnr_db"] == 300.0
    _strict_json(json.dumps({k: v for k, v in row.items() if k != "sqnr_db"}))


def test_channel_gate_fails_where_the_pooled_gate_passes(detector, capsys):
    recipe = detector / "gate.yaml"
    recipe.write_text(f"""model: q.onnx
output: {detector / 'gate_out'}
data: {{evaluation: d.npz}}
steps:
  - simulate: {{encodings: q.encodings.json}}
expect:
  min_sqnr_db: 20
""")
    code, stdout, err = run_main(["run", recipe], capsys)
    assert code == 0, err
    assert "expect min_sqnr_db" in stdout and "the pooled SQNR hides channels 4-9" in stdout  # passes, but says so
    code, stdout, err = run_main(["run", recipe, "--set", "expect.min_channel_sqnr_db=20", "--json"], capsys)
    assert code == 3 and "expect failed: min_channel_sqnr_db" in err
    checks = {c["name"]: c for c in _strict_json(stdout)["expect"]}
    assert checks["min_sqnr_db"]["passed"] and not checks["min_channel_sqnr_db"]["passed"]
    assert checks["min_channel_sqnr_db"]["actual"] < 10


def test_gate_reads_the_worst_channel_and_falls_back_to_pooled_without_one():
    outputs = {"det": {"sqnr_db": 40.0, "worst_channel_sqnr_db": 1.5},
               "seq": {"sqnr_db": 12.0, "worst_channel_sqnr_db": None, "channel_note": "pooled only"}}
    check, = check_expectations({"min_channel_sqnr_db": 1.0}, outputs)
    assert check.passed and check.actual == 1.5
    check, = check_expectations({"min_channel_sqnr_db": 1.0}, {"seq": outputs["seq"]})
    assert check.actual == 12.0


# --- analyze / mixed-precision ----------------------------------------------------------------

def test_default_metric_without_labels_is_the_worst_channel():
    ref = {"y": np.array([[10.0, 1.0], [10.0, 1.0]]), "ids": np.array([1, 2])}
    out = {"y": np.array([[10.0, 0.0], [10.0, 0.0]]), "ids": np.array([1, 2])}
    assert metric_for(None, None).name == "channel_sqnr"
    assert metric_for(None, np.array([0, 1])).name == "accuracy"
    assert metric_for(None, None).score(out, ref, None) == pytest.approx(0.0)      # class 1 lost entirely
    assert metric_for("sqnr", None).score(out, ref, None) == pytest.approx(10 * np.log10(101))  # pooled: 202 / 2
    # batches of unequal shapes, kept as lists: the per-channel sums still add up
    pieces_ref = {"y": [ref["y"][:1], ref["y"][1:]]}
    pieces_out = {"y": [out["y"][:1], out["y"][1:]]}
    assert metric_for(None, None).score(pieces_out, pieces_ref, None) == pytest.approx(0.0)


def test_analyze_defaults_to_the_worst_channel_and_names_the_class_branch(detector, capsys):
    folder = detector / "analysis"
    code, stdout, err = run_main(["analyze", detector / "q.onnx", "--data", detector / "d.npz", "--json",
                                  "-o", folder], capsys)
    assert code == 0, err
    report = _strict_json((folder / "report.json").read_text())
    assert report["metric"]["name"] == "channel_sqnr" and report["summary"]["quantized"] < 10
    assert report["suggestions"], "a dead part must produce suggestions"
    assert report["suggestions"][-1]["expected"] > report["summary"]["quantized"] + 20
    # the pooled metric sees nothing wrong on the same pair
    code, _, _ = run_main(["analyze", detector / "q.onnx", "--data", detector / "d.npz", "--metric", "sqnr",
                           "-o", detector / "analysis_pooled"], capsys)
    pooled = json.loads((detector / "analysis_pooled" / "report.json").read_text())
    assert code == 0 and pooled["summary"]["quantized"] > 30
