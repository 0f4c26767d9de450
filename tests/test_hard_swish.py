"""Hard-swish written out as ops is found in each exporter's spelling, computes x*relu6(x+3)/6
(checked against numpy), and is placed as one op fused with the Conv before it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.ir.graph import model_bytes
from qtool.ir.hard_swish import hard_swish_fused, hard_swishes
from qtool.plan.build import build_plan
from qtool.plan.config import load_config

RNG = np.random.default_rng(3)


def _c(name: str, value: float):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


FORMS = {  # name -> (nodes from c to h, constants)
    "paddle": ([helper.make_node("Add", ["c", "three"], ["t"]), helper.make_node("Clip", ["t", "zero", "six"], ["g"]),
                helper.make_node("Mul", ["c", "g"], ["p"]), helper.make_node("Div", ["p", "six"], ["h"])],
               [_c("three", 3), _c("zero", 0), _c("six", 6)]),
    "sixth_first": ([helper.make_node("Add", ["three", "c"], ["t"]), helper.make_node("Clip", ["t", "zero", "six"], ["g"]),
                     helper.make_node("Div", ["g", "six"], ["q"]), helper.make_node("Mul", ["q", "c"], ["h"])],
                    [_c("three", 3), _c("zero", 0), _c("six", 6)]),
    "mul_sixth": ([helper.make_node("Add", ["c", "three"], ["t"]), helper.make_node("Clip", ["t", "zero", "six"], ["g"]),
                   helper.make_node("Mul", ["c", "g"], ["p"]), helper.make_node("Mul", ["p", "sixth"], ["h"])],
                  [_c("three", 3), _c("zero", 0), _c("six", 6), _c("sixth", 1 / 6)]),
    "hard_sigmoid": ([helper.make_node("HardSigmoid", ["c"], ["g"], alpha=1 / 6, beta=0.5),
                      helper.make_node("Mul", ["c", "g"], ["h"])], []),
    "op": ([helper.make_node("HardSwish", ["c"], ["h"])], []),
}
NOT_HARD_SWISH = {
    "offset_2": ([helper.make_node("Add", ["c", "two"], ["t"]), helper.make_node("Clip", ["t", "zero", "six"], ["g"]),
                  helper.make_node("Mul", ["c", "g"], ["p"]), helper.make_node("Div", ["p", "six"], ["h"])],
                 [_c("two", 2), _c("zero", 0), _c("six", 6)]),
    "clip_0_5": ([helper.make_node("Add", ["c", "three"], ["t"]), helper.make_node("Clip", ["t", "zero", "five"], ["g"]),
                  helper.make_node("Mul", ["c", "g"], ["p"]), helper.make_node("Div", ["p", "six"], ["h"])],
                 [_c("three", 3), _c("zero", 0), _c("five", 5), _c("six", 6)]),
    "gate_times_other": ([helper.make_node("Add", ["c", "three"], ["t"]), helper.make_node("Clip", ["t", "zero", "six"], ["g"]),
                          helper.make_node("Mul", ["x2", "g"], ["p"]), helper.make_node("Div", ["p", "six"], ["h"])],
                         [_c("three", 3), _c("zero", 0), _c("six", 6)]),
}


def model(form, extra_reader: bool = False) -> ir.Model:
    """x -> Conv -> c -> hard-swish form -> h -> Conv -> y (and c as an output too, if asked)."""
    nodes, consts = form
    body = [helper.make_node("Conv", ["x", "w1"], ["c"]),
            helper.make_node("Mul", ["x", "two_x"], ["x2"]), *nodes, helper.make_node("Conv", ["h", "w2"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(RNG.normal(0, 2, (3, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.normal(0, 1, (2, 3, 1, 1)).astype(np.float32), "w2"), _c("two_x", 2.0), *consts]
    graph = helper.make_graph(body, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


@pytest.mark.parametrize("name", list(FORMS))
def test_found_and_it_is_hard_swish(name):
    m = model(FORMS[name])
    (match,) = hard_swishes(m)
    assert match.source.name == "c" and match.result.name == "h"
    proto = ir.to_proto(m)
    proto.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c", "h")])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    c, h = session.run(["c", "h"], {"x": RNG.normal(0, 3, (1, 3, 4, 4)).astype(np.float32)})
    np.testing.assert_allclose(h, c * np.clip(c + 3, 0, 6) / 6, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(NOT_HARD_SWISH))
def test_lookalikes_not_found(name):
    assert hard_swishes(model(NOT_HARD_SWISH[name])) == []


def test_placement_one_op_fused_with_the_conv():
    m = model(FORMS["paddle"])
    assert hard_swish_fused(m) == {"c", "t", "g", "p"}
    planned = set(build_plan(m, load_config("w8a8-per-channel")).activations)
    assert "h" in planned and not planned & {"c", "t", "g", "p"}


def test_conv_output_read_elsewhere_keeps_its_quantizer():
    m = model(FORMS["paddle"], extra_reader=True)
    assert hard_swish_fused(m) == {"t", "g", "p"}
    assert "c" in build_plan(m, load_config("w8a8-per-channel")).activations
    assert model_bytes(m)  # still a valid model
