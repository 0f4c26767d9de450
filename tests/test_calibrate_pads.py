"""Constant Pad outputs are calibrated from their input (steps.calibrate_pads), not tapped: the
same encodings as tapping them, for every scheme, with the Pad left out of the statistics graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import qtool.steps.calibrate as calibrate_module
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import load_config
from qtool.steps.calibrate import CalibrateOptions, calibrate
from qtool.steps.calibrate_pads import pad_derivations


def _model(mode: str = "constant", value: float = 0.0, batch_pad: bool = False) -> ir.Model:
    """x -> Conv -> Relu -> Pad -> Conv (a depthwise block's padding made explicit)."""
    rng = np.random.default_rng(0)
    pads = [1 if batch_pad else 0, 0, 1, 2, 0, 0, 2, 1]
    inits = [helper.make_tensor("w1", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108)),
             helper.make_tensor("w2", TensorProto.FLOAT, [4, 4, 3, 3], rng.standard_normal(144)),
             helper.make_tensor("pads", TensorProto.INT64, [8], pads),
             helper.make_tensor("value", TensorProto.FLOAT, [], [value])]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Pad", ["r1", "pads", "value"], ["p1"], mode=mode),
             helper.make_node("Conv", ["p1", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return ir.from_proto(proto)


def _encodings(model, scheme, monkeypatch=None, derive=True):
    if not derive:
        monkeypatch.setattr(calibrate_module, "pad_derivations", lambda m, n: {})
    plan = build_plan(model, load_config("w8a8-per-channel"), PlanOptions())
    x = np.random.default_rng(1).standard_normal((24, 3, 8, 8)).astype(np.float32)
    batches = lambda: [{"x": x[i:i + 8]} for i in range(0, 24, 8)]  # noqa: E731
    return calibrate(model, plan, batches, CalibrateOptions(scheme=scheme)).encodings.activations


@pytest.mark.parametrize("scheme", ["minmax", "sqnr", "percentile", "mse"])
@pytest.mark.parametrize("value", [0.0, -3.0])
def test_derived_pad_encodings_match_tapping(scheme, value, monkeypatch):
    model = _model(value=value)
    assert pad_derivations(model, ["p1"])["p1"].per_sample == 4 * (11 * 11 - 8 * 8)
    derived = _encodings(model, scheme)
    tapped = _encodings(model, scheme, monkeypatch, derive=False)
    assert "p1" in derived and derived.keys() == tapped.keys()
    for name in tapped:
        np.testing.assert_allclose(derived[name].min, tapped[name].min, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(derived[name].max, tapped[name].max, rtol=1e-6, atol=1e-7, err_msg=name)
    if value < 0:  # the pad value widens the range below the Relu's zero
        assert float(derived["p1"].min.min()) < -2.5


def test_only_exact_pads_are_derived():
    assert pad_derivations(_model(mode="reflect"), ["p1"]) == {}
    assert pad_derivations(_model(batch_pad=True), ["p1"]) == {}
    assert pad_derivations(_model(), ["r1"]) == {}  # not a Pad output


def test_sampled_rows_do_not_alias_with_channels(monkeypatch):
    """A stride that divides the row length samples the same channels of every row: an outlier
    channel would be counted 16 times over or not at all (stats_graph.coprime_stride)."""
    import qtool.runtime.stats_graph as stats_graph

    monkeypatch.setattr(stats_graph, "SMALL", 1024)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])], "rows",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512, 64])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 512, 64])])
    model = ir.from_proto(onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    x = np.abs(np.random.default_rng(2).standard_normal((8, 512, 64))).astype(np.float32)
    x[:, :, 32] += 10.0  # one outlier channel, at a multiple of 16
    stats = stats_graph.SampledStats(model, ["y"])
    assert stats.taps["y"].stride != 16 and 64 % stats.taps["y"].stride
    part = stats({"x": x})["y"]
    counted = (part.exact > 5).sum() + part.weight * (part.sample > 5).sum()
    assert abs(counted - 8 * 512) < 0.1 * 8 * 512, counted
