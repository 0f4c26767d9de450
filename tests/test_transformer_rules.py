"""Transformer placement rules (plan_patterns): the additive attention mask, residual sums into
LayerNorm, written-out GELU, embedding tables per hidden dimension; on a tiny BERT-style encoder
exported the way torch exports Hugging Face models (tests/tiny_bert.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
import pytest

from qtool.ir.patterns import layer_norm_outputs
from qtool.ir.qdq import build_qdq_model
from qtool.plan.build import build_plan
from qtool.plan.config import load_config, parse_config
from qtool.runtime.sessions import make_session
from qtool.steps.calibrate import CalibrateOptions, calibrate

from tiny_bert import cosine, mean_pooled, sentences, tiny_bert


def _model(mask_value: float) -> ir.Model:
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(tiny_bert(mask_value=mask_value)))


def _config(name: str = "w8a8-per-channel", **patterns):
    return parse_config({**load_config(name).raw, "patterns": patterns}, "test")


def _embedding_cosine(model: ir.Model, config) -> float:
    """Mean cosine of mean-pooled sentence embeddings, quantized vs float, on padded batches."""
    calib, held_out = sentences(48, seed=1), sentences(48, seed=2)
    plan = build_plan(model, config)
    batches = [{k: v[i:i + 16] for k, v in calib.items()} for i in range(0, 48, 16)]
    encodings = calibrate(model, plan, lambda: iter(batches), CalibrateOptions()).encodings
    ref = make_session(model, simulate=True).run(None, held_out)[0]
    quant = make_session(build_qdq_model(model, encodings), simulate=True).run(None, held_out)[0]
    mask = held_out["attention_mask"]
    return float(cosine(mean_pooled(ref, mask), mean_pooled(quant, mask)).mean())


@pytest.mark.parametrize("mask_value", [-1e4, -3.4028234663852886e38])
def test_masked_attention_survives_w8a8_only_with_the_mask_left_unquantized(mask_value):
    model = _model(mask_value)
    with_rule = _embedding_cosine(model, _config())
    without = _embedding_cosine(model, _config(attention_mask=False))
    # measured: 0.9955 with the rule; 0.73-0.75 without (the masked scores' grid spans the mask)
    assert with_rule > 0.99 and without < 0.9, (with_rule, without)


def test_mask_path_and_masked_scores_get_no_quantizer_and_the_mask_constant_no_weight_quantizer():
    model = _model(-3.4028234663852886e38)
    plan = build_plan(model, _config())
    names = {v.name: v for node in model.graph for v in node.outputs}
    softmax_inputs = {n.inputs[0].name for n in model.graph if n.op_type == "Softmax"}
    assert softmax_inputs <= set(plan.masked)
    cast = next(n.outputs[0].name for n in model.graph if n.op_type == "Cast")  # the 0/1 mask as float
    assert cast in plan.masked and not set(plan.masked) & set(plan.activations)
    assert "mask_value" not in plan.params  # -3.4e38 on an 8-bit grid dequantizes to -inf
    # the scores before the mask and the probabilities after the Softmax stay quantized
    for node in model.graph:
        if node.op_type == "Softmax":
            assert node.outputs[0].name in plan.activations
            add = node.inputs[0].producer()
            scores = next(v for v in add.inputs if v.name not in plan.masked)
            assert scores.name in plan.activations and names[scores.name].producer().op_type == "Div"


def test_residual_sums_into_layer_norm_and_their_linear_branch_get_16_bits():
    model = _model(-1e4)
    plan = build_plan(model, _config())
    sums = [n for n in model.graph if n.op_type == "Add" and {c.op_type for c in n.outputs[0].consumers()} >= {"ReduceMean", "Sub"}]
    assert len(sums) == 5  # the embedding sum and two per layer
    for node in sums:
        assert plan.activations[node.outputs[0].name].spec.bw == 16
    branches = [v for n in sums for v in n.inputs if v.producer() is not None
                and v.producer().op_type == "Add" and v.producer().inputs[0].producer().op_type == "MatMul"]
    assert len(branches) == 4 and all(plan.activations[v.name].spec.bw == 16 for v in branches)
    others = [t for t in plan.activations.values() if t.name not in plan.widened]
    assert others and all(t.spec.bw == 8 for t in others)
    narrow = build_plan(model, _config(layer_norm_input_bw=None))
    assert not set(narrow.widened) & {n.outputs[0].name for n in sums}
    assert not build_plan(model, _config(layer_norm_input_bw=None, layer_norm_output_bw=None)).widened


def test_layer_norm_outputs_get_16_bits_fused_or_written_out():
    model = _model(-1e4)
    plan = build_plan(model, _config(layer_norm_input_bw=None))
    outputs = layer_norm_outputs(model)
    assert len(outputs) == 5  # the embedding LayerNorm and two per layer, each written out
    for name in outputs:  # the Add(beta) that ends each written-out LayerNorm
        assert plan.activations[name].spec.bw == 16 and name in plan.widened
    assert not build_plan(model, _config(layer_norm_output_bw=None, layer_norm_input_bw=None)).widened
    fused = helper.make_graph([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1),
                               helper.make_node("MatMul", ["y", "w"], ["z"])], "ln",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8])],
                              [numpy_helper.from_array(np.ones(8, np.float32), "g"),
                               numpy_helper.from_array(np.zeros(8, np.float32), "b"),
                               numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")])
    fused_model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(
        helper.make_model(fused, opset_imports=[helper.make_opsetid("", 17)])))
    assert layer_norm_outputs(fused_model) == {"y"}
    assert build_plan(fused_model, _config()).activations["y"].spec.bw == 16


def test_gelu_inside_is_fused_and_embedding_tables_are_per_hidden_dimension():
    model = _model(-1e4)
    plan = build_plan(model, _config())
    for erf in (n for n in model.graph if n.op_type == "Erf"):
        assert erf.outputs[0].name in plan.fused
    assert plan.params["word_emb"].spec.axis == 1 and plan.params["pos_emb"].spec.axis == 1


def test_patterns_section_is_validated():
    from qtool.errors import QtoolError

    base = load_config("default").raw
    with pytest.raises(QtoolError, match="patterns.layer_norm_input_bw"):
        parse_config({**base, "patterns": {"layer_norm_input_bw": 32}}, "cfg.json")
    with pytest.raises(QtoolError, match="patterns"):
        parse_config({**base, "patterns": {"mask": False}}, "cfg.json")
