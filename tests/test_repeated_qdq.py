"""The simulation leaves out Q->DQ pairs that re-quantize values already on their grid
(qtool.ir.repeated_qdq): only those, and the outputs stay bit-identical."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.ir.graph import model_from_proto
from qtool.ir.repeated_qdq import drop_repeated_quantizers
from qtool.ir.tensor_files import inline_bytes


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def test_requantizing_a_dequantized_value_gives_it_back_bit_for_bit():
    """The premise, on onnxruntime's own kernels: DQ(Q(DQ(q))) == DQ(q) for every uint8 and int8
    q, over scales from 1e-7 to 1e4 and every zero point."""
    rng = np.random.default_rng(0)
    for dtype, proto_type in ((np.uint8, TensorProto.UINT8), (np.int8, TensorProto.INT8)):
        nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
                 helper.make_node("QuantizeLinear", ["y", "s", "z"], ["q2"]),
                 helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y2"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("q", proto_type, [None]),
                                               helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
                                               helper.make_tensor_value_info("z", proto_type, [])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None]),
                                   helper.make_tensor_value_info("y2", TensorProto.FLOAT, [None])])
        session = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
        info = np.iinfo(dtype)
        q = np.arange(info.min, info.max + 1).astype(dtype)
        for scale in 10.0 ** rng.uniform(-7, 4, 400):
            zero = dtype(rng.integers(info.min, info.max + 1))
            y, y2 = session.run(None, {"q": q, "s": np.array(scale, np.float32), "z": np.array(zero, dtype)})
            assert y.tobytes() == y2.tobytes(), (scale, zero)


def _qdq(name: str, scale: str, zero: str) -> list[onnx.NodeProto]:
    return [helper.make_node("QuantizeLinear", [name, scale, zero], [f"{name}_q"], name=f"{name}_Q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", scale, zero], [f"{name}_dq"], name=f"{name}_DQ")]


def _model() -> onnx.ModelProto:
    """x -> QDQ(a) -> Pad(0) -> QDQ(a) -> Conv -> QDQ(b) -> Reshape -> QDQ(b) -> Concat with
    QDQ(b)(y) -> QDQ(b) -> out1; also: Pad(0.5) -> QDQ(a) (kept: 0.5 may be off the grid),
    Transpose -> QDQ(c) (kept: another grid), Reshape read twice (kept: the float value is used)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(np.float32(0.02), "sa"), numpy_helper.from_array(np.uint8(100), "za"),
             numpy_helper.from_array(np.float32(0.05), "sb"), numpy_helper.from_array(np.uint8(120), "zb"),
             numpy_helper.from_array(np.float32(0.03), "sc"), numpy_helper.from_array(np.uint8(128), "zc"),
             numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.float32(0.5), "half"),
             numpy_helper.from_array(np.array([2, -1], np.int64), "shape")]
    nodes = [*_qdq("x", "sa", "za"),
             helper.make_node("Pad", ["x_dq", "pads"], ["p"], name="pad"), *_qdq("p", "sa", "za"),
             helper.make_node("Conv", ["p_dq", "w"], ["c"], name="conv"), *_qdq("c", "sb", "zb"),
             helper.make_node("Reshape", ["c_dq", "shape"], ["r"], name="reshape"), *_qdq("r", "sb", "zb"),
             *_qdq("y", "sb", "zb"),
             helper.make_node("Concat", ["r_dq", "y_dq"], ["cat"], axis=1, name="concat"), *_qdq("cat", "sb", "zb"),
             helper.make_node("Pad", ["x_dq", "pads", "half"], ["p2"], name="pad_half"), *_qdq("p2", "sa", "za"),
             helper.make_node("Transpose", ["c_dq"], ["t"], perm=[0, 1, 3, 2], name="transpose"),
             *_qdq("t", "sc", "zc"),
             helper.make_node("Reshape", ["c_dq", "shape"], ["r2"], name="reshape_twice"), *_qdq("r2", "sb", "zb"),
             helper.make_node("Neg", ["r2"], ["r2_neg"], name="neg")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6]),
                     helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("cat_dq", "p2_dq", "t_dq", "r2_dq",
                                                                               "r2_neg")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_only_pairs_on_their_own_grid_go_and_the_outputs_stay_bit_identical():
    model = model_from_proto(_model(), "test")
    before = inline_bytes(model)
    assert drop_repeated_quantizers(model) == 3  # after the zero Pad, the Reshape and the Concat
    left = {node.name for node in model.graph if node.op_type == "QuantizeLinear"}
    assert left == {"x_Q", "c_Q", "y_Q", "p2_Q", "t_Q", "r2_Q"}
    assert [v.name for v in model.graph.outputs] == ["cat_dq", "p2_dq", "t_dq", "r2_dq", "r2_neg"]
    rng = np.random.default_rng(2)
    feeds = {"x": (rng.standard_normal((2, 3, 6, 6)) * 2).astype(np.float32),
             "y": (rng.standard_normal((2, 16)) * 4).astype(np.float32)}
    full, pruned = _session(before).run(None, feeds), _session(inline_bytes(model)).run(None, feeds)
    for a, b in zip(full, pruned):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("change", ["scale", "zero_point"])
def test_a_pair_on_another_grid_stays(change):
    proto = _model()
    for init in proto.graph.initializer:  # the Pad's output quantizer gets its own grid
        if init.name == ("sa" if change == "scale" else "za"):
            proto.graph.initializer.append(numpy_helper.from_array(
                np.float32(0.021) if change == "scale" else np.uint8(101), init.name + "2"))
    for node in proto.graph.node:
        if node.name in ("p_Q", "p_DQ"):
            node.input[1 if change == "scale" else 2] += "2"
    model = model_from_proto(proto, "test")
    drop_repeated_quantizers(model)
    assert "p_Q" in {node.name for node in model.graph}


def test_simulate_runs_the_pruned_graph_with_the_same_report_and_hands_back_every_pair(monkeypatch):
    """Conv -> Relu -> Pad -> Conv, the Pad sharing the Relu's encoding (as qtool's plans give it)."""
    import qtool.steps.simulate as step
    from qtool.encodings.encoding_set import EncodingSet
    from qtool.quant.encoding import QuantSpec, compute_encoding

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Pad", ["r", "pads"], ["p"]),
             helper.make_node("Conv", ["p", "w2"], ["y"], group=4, strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = model_from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), "test")
    shared = compute_encoding(0.0, 3.0, QuantSpec())
    encodings = EncodingSet(activations={"x": compute_encoding(-3.0, 3.0, QuantSpec()), "r": shared, "p": shared,
                                         "y": compute_encoding(-6.0, 6.0, QuantSpec())})
    batches = [{"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    ran = []
    real = step.make_session
    monkeypatch.setattr(step, "make_session", lambda m, **kw: ran.append(m) or real(m, **kw))
    pruned = step.simulate(model, encodings, batches)
    quantizers = [sum(node.op_type == "QuantizeLinear" for node in m.graph) for m in ran]
    assert sum(node.op_type == "QuantizeLinear" for node in pruned.qdq_model.graph) == 4
    assert 3 in quantizers  # the quantized session ran without the pair after the Pad
    monkeypatch.setattr(step, "simulation_graph", lambda qdq: qdq)
    assert step.simulate(model, encodings, batches).report == pruned.report


def test_a_per_channel_grid_is_not_carried_through_an_op_that_moves_axes():
    """DQ(per channel, axis 1) -> Transpose -> Q/DQ(axis 1, the same scales): the axis now names
    another dimension of the values, so they are not on that grid and the pair must stay."""
    scale = np.array([0.01, 0.1, 1.0], np.float32)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(np.zeros(3, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], axis=1, name="x_Q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], axis=1, name="x_DQ"),
             helper.make_node("Transpose", ["xd"], ["t"], perm=[0, 2, 1], name="transpose"),
             helper.make_node("QuantizeLinear", ["t", "s", "z"], ["tq"], axis=1, name="t_Q"),
             helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["td"], axis=1, name="t_DQ")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])],
                              [helper.make_tensor_value_info("td", TensorProto.FLOAT, [1, 3, 3])], inits)
    model = model_from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), "test")
    before = inline_bytes(model)
    assert drop_repeated_quantizers(model) == 0
    x = np.array([[[0.123, 0.5, 0.9], [1.234, 2.5, 0.33], [2.7, 0.05, 1.6]]], np.float32)
    assert _session(before).run(None, {"x": x})[0].tobytes() == _session(inline_bytes(model)).run(None, {"x": x})[0].tobytes()
