"""Per-output-channel weight ranges: exact per layout, spread ratio, table, plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.errors import QtoolError
from qtool.ir.graph import load_model
from qtool.commands.plots import plot_ranges
from qtool.steps.fold import fold_batch_norms, scale_output_channels
from qtool.analysis.weight_ranges import LayerRanges, format_table, layer_ranges, ranges_table

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
RNG = np.random.default_rng(11)


def one_layer(op: str, weight: np.ndarray, x_shape: list[int], **attrs) -> ir.Model:
    """x -> op(x, W) -> y with W an initializer; no shape inference needed for layer_ranges."""
    node = helper.make_node(op, ["x", "W"], ["y"], name=f"{op}_0", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight.astype(np.float32), "W")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def reference(channels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([c.min() for c in channels]), np.array([c.max() for c in channels])


def check(model: ir.Model, weight: np.ndarray, expected_channels: list[np.ndarray]) -> LayerRanges:
    (r,) = layer_ranges(model)
    lo, hi = reference(expected_channels)
    np.testing.assert_array_equal(r.channel_min, lo)
    np.testing.assert_array_equal(r.channel_max, hi)
    assert r.weight == "W" and r.channels == len(expected_channels)
    # The axis agrees with fold's: scaling output channel o by 3 (fold's layout) triples its range only.
    node = next(iter(model.graph))
    for o in range(r.channels):
        k = np.ones(r.channels)
        k[o] = 3.0
        scaled = scale_output_channels(node, weight.astype(np.float64), k)
        node.inputs[1].const_value = ir.tensor(scaled.astype(np.float32), name="W")
        (s,) = layer_ranges(model)
        np.testing.assert_allclose(s.channel_range / r.channel_range, k, rtol=1e-6)
    node.inputs[1].const_value = ir.tensor(weight.astype(np.float32), name="W")
    return r


def test_conv_axis0():
    w = RNG.normal(size=(4, 3, 2, 2)).astype(np.float32)
    check(one_layer("Conv", w, [1, 3, 5, 5]), w, [w[o] for o in range(4)])


def test_conv_transpose_with_groups():
    groups, in_ch, out_per_group = 2, 4, 3  # weight (I, O/g, kH, kW); 6 output channels
    w = RNG.normal(size=(in_ch, out_per_group, 2, 2)).astype(np.float32)
    per_group_in = in_ch // groups
    expected = [w[g * per_group_in:(g + 1) * per_group_in, j] for g in range(groups) for j in range(out_per_group)]
    r = check(one_layer("ConvTranspose", w, [1, in_ch, 3, 3], group=groups), w, expected)
    assert r.channels == 6


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm(trans_b):
    w = RNG.normal(size=(5, 3)).astype(np.float32)  # transB=1: (N=5, K=3); transB=0: (K=5, N=3)
    expected = [w[n] for n in range(5)] if trans_b else [w[:, n] for n in range(3)]
    check(one_layer("Gemm", w, [2, 3 if trans_b else 5], transB=trans_b), w, expected)


def test_matmul_last_axis():
    w = RNG.normal(size=(2, 4, 3)).astype(np.float32)  # batched (B, K, N): channel n is w[..., n]
    check(one_layer("MatMul", w, [2, 5, 4]), w, [w[..., n] for n in range(3)])


def test_spread_ratio_exact():
    w = np.array([[0, 1], [-5, 5], [-50, 50]], np.float32).reshape(3, 2, 1, 1)  # ranges 1, 10, 100
    (r,) = layer_ranges(one_layer("Conv", w, [1, 2, 4, 4]))
    np.testing.assert_array_equal(r.channel_range, [1, 10, 100])
    assert r.spread_ratio == 100.0
    assert r.tensor_range == (-50.0, 50.0)


def test_spread_ratio_is_finite_for_dead_channels():
    dead = LayerRanges("l", "Conv", "W", np.array([0.0, -1.0]), np.array([0.0, 1.0]))
    assert np.isfinite(dead.spread_ratio) and dead.spread_ratio > 1e9
    flat = LayerRanges("l", "Conv", "W", np.zeros(3), np.zeros(3))
    assert flat.spread_ratio == 1.0
    json.dumps(ranges_table([dead, flat]), allow_nan=False)


def test_non_constant_weight_skipped():
    node = helper.make_node("MatMul", ["x", "w_in"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                                            helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert layer_ranges(ir.from_proto(helper.make_model(graph))) == []


@pytest.fixture(scope="module")
def mobilenet() -> ir.Model:
    return load_model(SAMPLES / "mobilenet_block.onnx")


def test_mobilenet_every_conv_and_gemm(mobilenet):
    ranges = layer_ranges(mobilenet)
    layers = [n for n in mobilenet.graph if n.op_type in ("Conv", "Gemm")]
    assert [r.name for r in ranges] == [n.name for n in layers]
    for r, node in zip(ranges, layers):
        shape = node.inputs[1].const_value.shape
        assert r.channels == (shape[0])  # Conv: O first; the Gemm here has transB=1
        assert np.all(r.channel_min <= r.channel_max) and r.spread_ratio >= 1.0
    text = format_table(ranges_table(ranges))
    for r in ranges:
        assert r.name in text
    assert len(text.splitlines()) == len(ranges) + 1


def test_layers_filter_and_unknown_name(mobilenet):
    names = [r.name for r in layer_ranges(mobilenet, layers=["Conv_3", "Gemm_1"])]
    assert names == ["Conv_3", "Gemm_1"]
    out_name = next(n for n in mobilenet.graph if n.name == "Conv_2").outputs[0].name
    assert [r.name for r in layer_ranges(mobilenet, layers=[out_name])] == ["Conv_2"]
    with pytest.raises(QtoolError) as err:
        layer_ranges(mobilenet, layers=["Conv_3", "nope"])
    assert "'nope'" in err.value.message and "Conv_1" in err.value.hint
    with pytest.raises(QtoolError):
        layer_ranges(mobilenet, layers=["Clip_1"])  # exists, but has no weight


def test_table_before_and_after(mobilenet):
    before = layer_ranges(mobilenet)
    after = layer_ranges(fold_batch_norms(mobilenet).model)  # renames outputs, keeps weights
    rows = ranges_table(before, after)
    assert [row["layer"] for row in rows] == [r.name for r in before]
    assert all(row["spread_ratio_after"] is not None for row in rows)
    assert rows[0]["channels"] == 16 and rows[0]["weight"] == before[0].weight
    text = format_table(rows)
    assert "spread after" in text.splitlines()[0]
    assert ranges_table(before, [])[0]["spread_ratio_after"] is None
    assert " -" in format_table(ranges_table(before[:1], []))


def test_format_table_empty():
    assert "no Conv" in format_table([])


def test_plot_writes_png(tmp_path, mobilenet):
    pytest.importorskip("matplotlib")
    before = layer_ranges(mobilenet)
    after = layer_ranges(fold_batch_norms(mobilenet).model)
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    plot_ranges(before, after, path=first, max_layers=3)
    plot_ranges(before, after, path=second, max_layers=3)
    data = first.read_bytes()
    assert data.startswith(b"\x89PNG") and data == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary left
    plot_ranges(before, path=first, layers=["Gemm_1"])
    assert first.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(QtoolError):
        plot_ranges(before, path=first, layers=["nope"])
    with pytest.raises(QtoolError):
        plot_ranges(before, path=tmp_path / "x.gif")


def test_plot_without_matplotlib(tmp_path, monkeypatch, mobilenet):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(QtoolError) as err:
        plot_ranges(layer_ranges(mobilenet), path=tmp_path / "r.png")
    assert err.value.message == "plots need matplotlib" and "qtool[plots]" in err.value.hint
    assert not list(tmp_path.iterdir())
