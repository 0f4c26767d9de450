"""Mixed-range joins: a Concat of parts with very different ranges gets no shared 8-bit grid.

The reference model is a YOLO-style head: pixel boxes (sigmoid * 320) joined with sigmoid class
scores into one [N, 4 + C, anchors] output, as YOLOv8 exports it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtool.encodings.encoding_set import EncodingSet
from qtool.errors import QtoolError
from qtool.plan.build import build_plan
from qtool.plan.config import MixedRangeRule, load_config, parse_config
from qtool.steps.calibrate import CalibrateOptions, calibrate
from qtool.steps.mixed_ranges import find_mixed_joins, lost_bits
from qtool.steps.simulate import simulate

CLASSES = 6


def _yolo_head(internal: bool = False, box_scale: float = 320.0, seed: int = 0) -> ir.Model:
    """x [N,3,16,16] -> Conv+Relu -> {boxes: Sigmoid(Conv)*box_scale, scores: Sigmoid(Conv)}
    -> Reshape to [N, k, 64] -> Concat(axis 1) -> output (or, `internal`, -> 1x1 Conv -> output)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w0", rng.standard_normal((8, 3, 3, 3)) * 0.4), ("b0", rng.standard_normal(8) * 0.1),
        ("wb", rng.standard_normal((4, 8, 1, 1)) * 0.3), ("bb", np.zeros(4)),
        ("wc", rng.standard_normal((CLASSES, 8, 1, 1)) * 0.3), ("bc", rng.standard_normal(CLASSES) - 2.0),
        ("scale", np.array(box_scale)))]
    inits += [numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape_b"),
              numpy_helper.from_array(np.array([0, CLASSES, -1], np.int64), "shape_c")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["c0"], ["f"], name="stem_relu"),
        helper.make_node("Conv", ["f", "wb", "bb"], ["box_logits"], name="box_conv"),
        helper.make_node("Sigmoid", ["box_logits"], ["box_unit"], name="box_sigmoid"),
        helper.make_node("Mul", ["box_unit", "scale"], ["box_px"], name="box_scale"),
        helper.make_node("Reshape", ["box_px", "shape_b"], ["boxes"], name="box_flat"),
        helper.make_node("Conv", ["f", "wc", "bc"], ["cls_logits"], name="cls_conv"),
        helper.make_node("Sigmoid", ["cls_logits"], ["cls_prob"], name="cls_sigmoid"),
        helper.make_node("Reshape", ["cls_prob", "shape_c"], ["scores"], name="cls_flat"),
        helper.make_node("Concat", ["boxes", "scores"], ["joined"], axis=1, name="head_concat"),
    ]
    outputs = ["joined"]
    if internal:  # YOLOv8's DFL head splits the joined tensor again before decoding
        inits.append(numpy_helper.from_array(np.array([4, CLASSES], np.int64), "split"))
        nodes.append(helper.make_node("Split", ["joined", "split"], ["box_out", "score_out"], axis=1, name="after"))
        outputs = ["box_out", "score_out"]
    graph = helper.make_graph(nodes, "yolo_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))


def _data(count: int = 24, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)} for _ in range(count // 8)]


def _score_sqnr(model: ir.Model, encodings: EncodingSet) -> tuple[float, float]:
    """(box SQNR, score SQNR) in dB of the quantized model against float, on held-out data."""
    from qtool.ir.qdq import build_qdq_model
    from qtool.runtime.sessions import make_session
    feeds = _data(16, seed=7)
    ref = make_session(model, simulate=True)
    qdq = make_session(build_qdq_model(model, encodings), simulate=True)
    split = len(model.graph.outputs) == 2
    out = []
    for index, part in enumerate((slice(0, 4), slice(4, None))):
        output, part = (model.graph.outputs[index].name, slice(None)) if split else ("joined", part)
        signal = noise = 0.0
        for feed in feeds:
            a = ref.run([output], feed)[0][:, part]
            b = qdq.run([output], feed)[0][:, part]
            signal += float(np.sum(a.astype(np.float64) ** 2))
            noise += float(np.sum((a.astype(np.float64) - b) ** 2))
        out.append(10 * np.log10(signal / max(noise, 1e-30)))
    return out[0], out[1]


def _calibrate(model: ir.Model, rule: MixedRangeRule | None = None, scheme: str = "minmax"):
    config = load_config("w8a8-per-channel")
    if rule is not None:
        config = parse_config({**config.raw, "mixed_ranges": {
            "enabled": rule.enabled, "max_lost_bits": rule.max_lost_bits,
            "at_output": rule.at_output, "inside": rule.inside}}, "test")
    plan = build_plan(model, config)
    return calibrate(model, plan, lambda: iter(_data()), CalibrateOptions(scheme=scheme))


def test_lost_bits_is_log2_of_joined_over_narrowest_range():
    assert lost_bits([(0.0, 320.0), (0.0, 1.0)]) == pytest.approx(np.log2(320.0))
    assert lost_bits([(-2.0, 2.0), (0.0, 1.0)]) == pytest.approx(2.0)  # joined 4 wide, narrowest 1
    assert lost_bits([(1.0, 3.0), (2.0, 3.0)]) == pytest.approx(0.0)  # both widened to contain 0: 3 and 3


def test_detector_head_scores_keep_their_own_grid_at_the_model_output():
    model = _yolo_head()
    off = _calibrate(model, MixedRangeRule(enabled=False))
    on = _calibrate(model)
    assert "joined" in off.encodings.activations and "joined" not in on.encodings.activations
    [join] = on.mixed_joins
    assert join.node == "head_concat" and join.action == "float" and join.tensors == ("joined",)
    assert join.lost_bits > 7  # 0..~320 against 0..1: log2(320) = 8.3
    assert {"boxes", "scores"} <= set(on.encodings.activations)  # the parts stay quantized
    box_off, score_off = _score_sqnr(model, off.encodings)
    box_on, score_on = _score_sqnr(model, on.encodings)
    assert score_off < 10 and score_on > 30, (score_off, score_on)
    assert box_on > 30


def test_a_mixed_tensor_that_feeds_computation_gets_16_bits():
    model = _yolo_head(internal=True)
    result = _calibrate(model)
    [join] = result.mixed_joins
    assert join.action == "16" and result.encodings.activations["joined"].bw == 16
    assert result.encodings.activations["score_out"].bw == 8
    off = _calibrate(model, MixedRangeRule(enabled=False))
    assert off.encodings.activations["joined"].bw == 8
    # the scores' part of the joined tensor: 16 bits keep what 8 bits round away
    _, score_8 = _score_sqnr(model, off.encodings)
    _, score_16 = _score_sqnr(model, result.encodings)
    assert score_16 > score_8 + 20, (score_8, score_16)


def test_similar_ranges_are_not_mixed_and_the_threshold_is_configurable():
    model = _yolo_head(box_scale=2.0)  # boxes 0..2 against scores 0..1: about 1 bit lost
    assert _calibrate(model).mixed_joins == []
    strict = _calibrate(model, MixedRangeRule(max_lost_bits=0.5))
    assert [j.node for j in strict.mixed_joins] == ["head_concat"]


def test_carriers_after_a_mixed_concat_follow_its_decision():
    model = _yolo_head()
    ranges = {"boxes": (0.0, 320.0), "scores": (0.0, 1.0), "joined": (0.0, 320.0)}
    # a Transpose after the Concat carries the same values: it is part of the same decision
    graph = model.graph
    concat = next(n for n in graph if n.op_type == "Concat")
    old_out = concat.outputs[0]
    transpose = ir.node("Transpose", [old_out], attributes={"perm": [0, 2, 1]}, name="tr")
    graph.append(transpose)
    transpose.outputs[0].name = "joined_t"
    graph.outputs[0] = transpose.outputs[0]
    [join] = find_mixed_joins(model, ranges)
    assert join.tensors == ("joined", "joined_t") and join.action == "float"


def test_mixed_ranges_config_section_is_validated():
    base = load_config("default").raw
    with pytest.raises(QtoolError, match="mixed_ranges.at_output"):
        parse_config({**base, "mixed_ranges": {"at_output": "int4"}}, "cfg.json")
    with pytest.raises(QtoolError, match="mixed_ranges"):
        parse_config({**base, "mixed_ranges": {"max_lost": 3}}, "cfg.json")
    with pytest.raises(QtoolError, match="max_lost_bits"):
        parse_config({**base, "mixed_ranges": {"max_lost_bits": float("inf")}}, "cfg.json")
    assert parse_config({**base, "mixed_ranges": {"enabled": "False"}}, "c").mixed_ranges.enabled is False


def test_the_rule_works_with_histogram_schemes_too():
    result = _calibrate(_yolo_head(), scheme="sqnr")
    assert [j.action for j in result.mixed_joins] == ["float"]
