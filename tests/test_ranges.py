"""Ranges derived through monotonic ops equal the ranges measured on the full tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.ir.graph import load_model
from qtool.ir.ranges import derivations, range_function
from qtool.plan.build import build_plan
from qtool.plan.config import load_config, parse_config
from qtool.quant.observers import MinMaxObserver
from qtool.runtime.sessions import input_infos
from qtool.steps.calibrate import _RangeTaps, _TensorTaps

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def observe_both(model: ir.Model, feeds: dict) -> tuple[dict, dict]:
    """Every float tensor observed both ways (pointwise functions unfused, so that their inner
    tensors are observed too)."""
    config = load_config("default")
    plan = build_plan(model, parse_config({**config.raw, "patterns": {"pointwise_functions": False}}, "test"))
    derived_obs = {n: MinMaxObserver() for n in plan.activations}
    full_obs = {n: MinMaxObserver() for n in plan.activations}
    _RangeTaps(model, derived_obs)(feeds)
    _TensorTaps(model, full_obs)(feeds)
    return derived_obs, full_obs


@pytest.mark.parametrize("name", ["conv_bn_relu", "mobilenet_block", "attention_block", "ppocr_cls"])
def test_derived_ranges_equal_measured_ranges(name):
    model = load_model(SAMPLES / f"{name}.onnx")
    rng = np.random.default_rng(0)
    feeds = {}
    for info in input_infos(model):
        dims = [3, 48, 192] if name == "ppocr_cls" else [d or 1 for d in info.shape[1:]]
        feeds[info.name] = rng.normal(0, 1, (4, *dims)).astype(np.float32)
    derived, full = observe_both(model, feeds)
    for tensor in full:
        assert (derived[tensor]._min, derived[tensor]._max) == pytest.approx((full[tensor]._min, full[tensor]._max),
                                                                             rel=1e-6, abs=1e-7), tensor


def test_chain_of_monotonic_ops_is_derived_and_exact():
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["c"]),
             helper.make_node("Mul", ["neg", "c"], ["m"]), helper.make_node("Reshape", ["m", "shape"], ["r"]),
             helper.make_node("Mul", ["r", "r"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("three", 2), ("lo", 0), ("hi", 6), ("neg", -0.5))]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "shape"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = ir.from_proto(onnx.shape_inference.infer_shapes(proto))
    found = derivations(model, ["x", "a", "c", "m", "r", "y"])
    assert {k: v[0] for k, v in found.items()} == {"a": "x", "c": "a", "m": "c", "r": "m"}  # y = r*r is not unary
    x = np.array([[-5, -1, 0, 2, 10], [1, 1, 1, 1, 1]], np.float32)
    derived, full = observe_both(model, {"x": x})
    for tensor in ("a", "c", "m", "r", "y"):
        assert (derived[tensor]._min, derived[tensor]._max) == (full[tensor]._min, full[tensor]._max)
    assert (derived["m"]._min, derived["m"]._max) == (-3.0, 0.0)  # a negative scale swaps the ends


def test_division_by_the_tensor_is_not_monotonic():
    node = ir.node("Div", [ir.Value(name="c", const_value=ir.tensor(np.float32(1))), ir.Value(name="x")])
    node.inputs[1].dtype = ir.DataType.FLOAT
    assert range_function(node) is None


def test_derivation_passes_through_unmeasured_tensors():
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["c"])]
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("three", 3), ("lo", 0), ("hi", 6))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], inits)
    model = ir.from_proto(onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)))
    found = derivations(model, ["x", "c"])  # "a" (x + 3) is not quantized, so not measured
    assert list(found) == ["c"] and found["c"][0] == "x"
    x = np.array([[-5, -1, 0, 2, 10], [1, 1, 1, 1, 1]], np.float32)
    derived, full = observe_both(model, {"x": x})
    assert (derived["c"]._min, derived["c"]._max) == (full["c"]._min, full["c"]._max) == (0.0, 6.0)
